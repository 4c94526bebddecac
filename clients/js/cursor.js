/**
 * Cursors: a chat's position `{gen, seq}` = the last text chunk (or `done`) the client applied.
 * Pure functions, no I/O.
 * @module chatcast/cursor
 */

/** @typedef {{gen: string, seq: number}} Cursor */

/**
 * `{gen, seq}` → `"gen:seq"` (the SSE `id:` / `Last-Event-ID` / `?cursor=` form); null → "".
 * @param {Cursor | null | undefined} cursor
 * @returns {string}
 */
export function formatCursor(cursor) {
  return cursor && cursor.gen ? `${cursor.gen}:${cursor.seq}` : '';
}

/**
 * `"gen:seq"` → `{gen, seq}`; anything unreadable → null. Splits at the last colon, like the
 * server, so a generation id may itself contain colons.
 * @param {string | null | undefined} text
 * @returns {Cursor | null}
 */
export function parseCursor(text) {
  if (typeof text !== 'string') return null;
  const at = text.lastIndexOf(':');
  if (at <= 0) return null;
  const gen = text.slice(0, at);
  const raw = text.slice(at + 1);
  if (!/^\d+$/.test(raw)) return null;
  return { gen, seq: Number(raw) };
}

/**
 * Is position (gen, seq) already covered by `cursor`? Only positions of the cursor's own
 * generation can be compared; another generation is never "covered".
 * @param {Cursor | null | undefined} cursor
 * @param {string} gen
 * @param {number} seq
 */
export function covers(cursor, gen, seq) {
  return !!cursor && cursor.gen === gen && seq <= cursor.seq;
}
