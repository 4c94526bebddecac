/**
 * What the browser keeps between visits (localStorage), so a reload paints the chat list and the
 * open chat at once. It is only ever a first paint: the server's list and snapshot replace it as
 * soon as they arrive, and the page never treats the copy as live (an answer that was streaming
 * when the copy was saved is shown as a saved partial text, not as streaming).
 *
 * Bounded: the chat list, plus the last MESSAGES messages of the CHATS most recently opened chats.
 * "Keep a copy on this device" (off: nothing is stored and what was stored is removed); the copy
 * is removed too when the session is no longer valid.
 */

const PREFIX = 'chatcast.cache.v1.';
const PREF = 'chatcast.keep-copy';
const CHATS = 12;
const MESSAGES = 60;
const MAX_CONTENT = 200_000;

function storage() {
  try {
    return globalThis.localStorage || null;
  } catch {
    return null; // storage disabled
  }
}

function read(key) {
  const s = storage();
  if (!s) return null;
  try {
    const raw = s.getItem(PREFIX + key);
    return raw ? JSON.parse(raw) : null;
  } catch {
    return null;
  }
}

function write(key, value) {
  const s = storage();
  if (!s || !enabled()) return;
  const raw = JSON.stringify(value);
  try {
    s.setItem(PREFIX + key, raw);
  } catch {
    // Quota: drop the saved chats and try once more.
    for (const id of read('recent') || []) s.removeItem(`${PREFIX}chat.${id}`);
    try { s.setItem(PREFIX + key, raw); } catch { /* give up; the server has everything */ }
  }
}

/** Whether the copy is kept (the default), per browser. */
export function enabled() {
  const s = storage();
  try {
    return !!s && s.getItem(PREF) !== 'off';
  } catch {
    return false;
  }
}

export function setEnabled(on) {
  const s = storage();
  if (!s) return;
  try { s.setItem(PREF, on ? 'on' : 'off'); } catch { /* ignore */ }
  if (!on) clear();
}

/** Remove everything kept (the preference stays). */
export function clear() {
  const s = storage();
  if (!s) return;
  try {
    const keys = [];
    for (let i = 0; i < s.length; i++) {
      const k = s.key(i);
      if (k && k.startsWith(PREFIX)) keys.push(k);
    }
    for (const k of keys) s.removeItem(k);
  } catch { /* ignore */ }
}

/** @returns {any[] | null} the chat list as last seen from the server */
export function loadChats() {
  if (!enabled()) return null;
  const list = read('chats');
  return Array.isArray(list) ? list : null;
}

export function saveChats(chats) {
  write('chats', chats);
}

/**
 * The saved copy of a chat, made safe to show before the server speaks: nothing in it is live.
 * @returns {{messages: any[], savedAt: number} | null}
 */
export function loadChat(id) {
  if (!enabled() || !id) return null;
  const saved = read(`chat.${id}`);
  if (!saved || !Array.isArray(saved.messages)) return null;
  const messages = saved.messages.map((m) => (m.status === 'streaming'
    ? { ...m, status: 'saved', saved: true } // its end is not known yet
    : { ...m, saved: true }));
  return { messages, savedAt: saved.savedAt || 0 };
}

const FIELDS = ['id', 'chat', 'role', 'content', 'status', 'gen', 'model', 'provider', 'created_at', 'error',
  'reasoning', 'reasoning_started_at', 'reasoning_ended_at'];

/** Keep the last messages of a chat (as the server last confirmed them). */
export function saveChat(id, messages) {
  if (!enabled() || !id) return;
  const kept = messages.filter((m) => !m.local && !m.saved).slice(-MESSAGES).map((m) => {
    const out = {};
    for (const f of FIELDS) if (m[f] !== undefined) out[f] = m[f];
    if (typeof out.content === 'string' && out.content.length > MAX_CONTENT) {
      out.content = out.content.slice(0, MAX_CONTENT);
      if (out.status !== 'streaming') out.status = 'saved';
    }
    return out;
  });
  write(`chat.${id}`, { messages: kept, savedAt: Date.now() });
  const recent = [id, ...(read('recent') || []).filter((x) => x !== id)];
  const s = storage();
  for (const old of recent.slice(CHATS)) s && s.removeItem(`${PREFIX}chat.${old}`);
  write('recent', recent.slice(0, CHATS));
}

export function forgetChat(id) {
  const s = storage();
  if (!s) return;
  try { s.removeItem(`${PREFIX}chat.${id}`); } catch { /* ignore */ }
  write('recent', (read('recent') || []).filter((x) => x !== id));
}
