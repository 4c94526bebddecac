/**
 * Per-chat state: the message list and the text of running generations, assembled from
 * protocol events. Pure (no I/O): `apply(event)` updates the state and returns effects for
 * the caller to carry out (verify a finished message, re-subscribe for a snapshot).
 *
 * Message objects are never mutated: a change replaces the object and the `messages` array,
 * so a UI can re-render only what changed by comparing identities.
 * @module chatcast/assembler
 */

import { codePointLength } from './framing.js';

/**
 * @typedef {object} Message
 * @property {string} id
 * @property {string} role `user` | `assistant` | `system`
 * @property {string} content the answer text
 * @property {string} [reasoning] the model's reasoning before (or beside) its answer, markdown
 * @property {string | null} [reasoning_started_at] ISO time the first reasoning arrived
 * @property {string | null} [reasoning_ended_at] ISO time the answer's text began (or the
 *   generation ended); null while the model is still thinking
 * @property {string} status `complete` | `streaming` | `stopped` | `error` | `interrupted`,
 *   plus the local states `pending` (sent, not yet stored) and `failed` (not sent)
 * @property {string | null} [gen]
 * @property {string | null} [client_msg_id]
 * @property {boolean} [local] true for an optimistic message not yet confirmed by the server
 */

/**
 * @typedef {{type: 'verify', chat: string, message: string, gen: string, content: string,
 *            length: number, sha256: string, serverContent: string | undefined,
 *            reasoning: string, reasoningLength: number | undefined,
 *            reasoningSha256: string | undefined, serverReasoning: string | undefined}
 *         | {type: 'resync', chat: string, why: string}} Effect
 */

const DONE_TO_MESSAGE = { completed: 'complete', stopped: 'stopped', error: 'error', interrupted: 'interrupted' };

/**
 * Whether an answer is still reasoning (it has reasoning and no answer text yet, and it runs).
 * @param {Message} m
 */
export function isThinking(m) {
  return !!m && m.status === 'streaming' && !!m.reasoning && !m.content && !m.reasoning_ended_at;
}

/**
 * Seconds the model thought (from its first reasoning to its answer's first text), or null.
 * @param {Message} m
 */
export function thoughtSeconds(m) {
  if (!m || !m.reasoning_started_at || !m.reasoning_ended_at) return null;
  const s = (Date.parse(m.reasoning_ended_at) - Date.parse(m.reasoning_started_at)) / 1000;
  return Number.isFinite(s) && s >= 0 ? s : null;
}

const isStr = (v) => typeof v === 'string' && v.length > 0;
const isSeq = (v) => Number.isInteger(v) && v >= 0;

/**
 * Why a server event cannot be applied, or null when its shape is sound. Only the fields the
 * assembler relies on are checked; unknown event types and extra fields are fine (newer servers).
 * @param {any} ev
 * @returns {string | null}
 */
export function malformed(ev) {
  if (!ev || typeof ev !== 'object' || Array.isArray(ev) || typeof ev.type !== 'string') return 'not an event object';
  switch (ev.type) {
    case 'delta':
      if (!isStr(ev.gen)) return 'delta without a generation';
      if (!isSeq(ev.seq)) return 'delta without an integer seq';
      if (typeof ev.text !== 'string') return 'delta text is not a string';
      return null;
    case 'start':
      if (!isStr(ev.gen) || !isStr(ev.message)) return 'start without generation and message ids';
      return null;
    case 'done':
      if (!isStr(ev.gen)) return 'done without a generation';
      if (ev.seq !== undefined && !isSeq(ev.seq)) return 'done seq is not an integer';
      if (ev.message !== undefined && ev.message !== null && typeof ev.message !== 'object') return 'done message is not an object';
      return null;
    case 'message':
      if (!ev.message || typeof ev.message !== 'object' || !isStr(ev.message.id)) return 'message event without a message id';
      if (ev.message.content !== undefined && typeof ev.message.content !== 'string') return 'message content is not a string';
      return null;
    case 'snapshot':
      if (!Array.isArray(ev.messages)) return 'snapshot without a message list';
      if (ev.messages.some((m) => !m || typeof m !== 'object' || !isStr(m.id) || typeof (m.content ?? '') !== 'string')) {
        return 'snapshot with a malformed message';
      }
      if (ev.active && (typeof ev.active !== 'object' || !isStr(ev.active.gen) || !isStr(ev.active.message))) {
        return 'snapshot with a malformed active generation';
      }
      return null;
    default:
      return null;
  }
}

export class ChatState {
  /** @param {string} chat */
  constructor(chat) {
    this.chat = chat;
    /** @type {Message[]} oldest → newest */
    this.messages = [];
    /** @type {Map<string, {message: string, seq: number, done: boolean}>} */
    this.gens = new Map();
    /** @type {{gen: string, seq: number} | null} last applied position */
    this.cursor = null;
    /** @type {{gen: string, message: string} | null} the running generation */
    this.active = null;
    /** @type {boolean | null} whether older history exists (null: not known yet) */
    this.hasMore = null;
    /** Whether a snapshot has been applied (the state is complete). */
    this.ready = false;
    /** Bumped on every change. */
    this.version = 0;
  }

  /** @param {string} id */
  indexOf(id) {
    return this.messages.findIndex((m) => m.id === id);
  }

  /** @param {string} id */
  get(id) {
    return this.messages.find((m) => m.id === id);
  }

  /** The last message, if it is an assistant answer. */
  lastAnswer() {
    const last = this.messages[this.messages.length - 1];
    return last && last.role === 'assistant' ? last : undefined;
  }

  /** @param {number} i @param {Message} m */
  replaceAt(i, m) {
    const next = this.messages.slice();
    next[i] = m;
    this.messages = next;
  }

  /** @param {Message} m */
  push(m) {
    this.messages = [...this.messages, m];
  }

  touch() {
    this.version++;
    return true;
  }

  /**
   * Apply one server event of this chat.
   * @param {{type: string, [k: string]: any}} ev
   * @returns {{changed: boolean, effects: Effect[]}}
   */
  apply(ev) {
    /** @type {Effect[]} */
    const effects = [];
    let changed = false;
    switch (ev.type) {
      case 'snapshot': changed = this.snapshot(ev); break;
      case 'message': changed = this.upsert(ev.message); break;
      case 'start': changed = this.start(ev); break;
      case 'delta': changed = this.delta(ev, effects); break;
      case 'done': changed = this.done(ev, effects); break;
      default: break;
    }
    if (changed) this.version++;
    return { changed, effects };
  }

  snapshot(ev) {
    const incoming = Array.isArray(ev.messages) ? ev.messages.map((m) => ({ ...m })) : [];
    // Keep older history pages loaded before, when the snapshot's page continues them.
    let older = [];
    if (incoming.length) {
      const at = this.indexOf(incoming[0].id);
      if (at > 0) older = this.messages.slice(0, at).filter((m) => !m.local);
    }
    const seen = new Set(incoming.map((m) => m.client_msg_id).filter(Boolean));
    const pending = this.messages.filter((m) => m.local && !seen.has(m.client_msg_id));
    this.messages = [...older, ...incoming, ...pending];
    if (!older.length && this.hasMore === false && incoming.length) this.hasMore = null;
    this.gens.clear();
    this.active = null;
    this.cursor = null;
    for (const m of incoming) {
      if (m.gen && m.status !== 'streaming') this.gens.set(m.gen, { message: m.id, seq: Infinity, done: true });
    }
    const a = ev.active;
    if (a && a.gen && a.message) {
      const content = typeof a.content === 'string' ? a.content : '';
      const thinking = {
        reasoning: typeof a.reasoning === 'string' ? a.reasoning : '',
        reasoning_started_at: a.reasoning_started_at || null,
        reasoning_ended_at: a.reasoning_ended_at || null,
      };
      const i = this.indexOf(a.message);
      if (i === -1) {
        this.push({ id: a.message, chat: this.chat, role: 'assistant', content, ...thinking, status: 'streaming', gen: a.gen });
      } else {
        this.replaceAt(i, { ...this.messages[i], content, ...thinking, status: 'streaming', gen: a.gen });
      }
      const seq = Number(a.seq) || 0;
      this.gens.set(a.gen, { message: a.message, seq, done: false });
      this.active = { gen: a.gen, message: a.message };
      this.cursor = { gen: a.gen, seq };
    }
    // chatcast servers also say where to resume after this snapshot, and whether older history exists.
    const c = ev.cursor;
    if (!this.active && c && typeof c.gen === 'string' && c.gen !== '-' && Number.isInteger(c.seq)) {
      this.cursor = { gen: c.gen, seq: c.seq };
    }
    if (typeof ev.has_more === 'boolean' && !older.length) this.hasMore = ev.has_more;
    this.ready = true;
    return true;
  }

  /**
   * Insert or update a message row. An optimistic local message with the same client_msg_id is
   * replaced in place; text being assembled for a running generation is never overwritten.
   * @param {Message} msg
   */
  upsert(msg) {
    if (!msg || !msg.id) return false;
    let i = this.indexOf(msg.id);
    if (i === -1 && msg.client_msg_id) {
      i = this.messages.findIndex((m) => m.local && m.client_msg_id === msg.client_msg_id);
    }
    if (i === -1) {
      this.push({ ...msg });
      return true;
    }
    const cur = this.messages[i];
    const running = this.active && this.active.message === msg.id;
    const next = { ...cur, ...msg, local: false };
    if (running) {
      next.content = cur.content;
      next.reasoning = cur.reasoning;
      next.status = 'streaming';
    }
    delete next.local;
    this.replaceAt(i, next);
    return true;
  }

  start(ev) {
    const i = this.indexOf(ev.message);
    const fields = { gen: ev.gen, status: 'streaming', provider: ev.provider, model: ev.model };
    if (i === -1) {
      this.push({ id: ev.message, chat: this.chat, role: 'assistant', content: '', reasoning: '', ...fields });
    } else {
      // A `continue` keeps the partial text; later deltas append to it.
      this.replaceAt(i, { ...this.messages[i], ...fields });
    }
    const g = this.gens.get(ev.gen);
    if (!g) this.gens.set(ev.gen, { message: ev.message, seq: 0, done: false });
    else if (g.done) this.gens.set(ev.gen, { ...g, seq: Number.isFinite(g.seq) ? g.seq : 0, done: false });
    this.active = { gen: ev.gen, message: ev.message };
    const now = this.gens.get(ev.gen);
    this.cursor = { gen: ev.gen, seq: now ? now.seq : 0 };
    return true;
  }

  delta(ev, effects) {
    const g = this.gens.get(ev.gen);
    if (!g) {
      // Text of a generation we never saw start: we missed something; a snapshot repairs it.
      effects.push({ type: 'resync', chat: this.chat, why: `delta for unknown generation ${ev.gen}` });
      return false;
    }
    if (g.done || ev.seq <= g.seq) return false; // already applied
    const i = this.indexOf(g.message);
    if (i === -1) {
      effects.push({ type: 'resync', chat: this.chat, why: `delta for unknown message ${g.message}` });
      return false;
    }
    const m = this.messages[i];
    if (ev.part === 'reasoning') {
      // Reasoning: a part of its own, never in `content` (its `text` is always empty).
      const started = m.reasoning_started_at || new Date().toISOString();
      const ended = m.content ? m.reasoning_ended_at : null; // a continue reopens it
      this.replaceAt(i, { ...m, reasoning: (m.reasoning || '') + (ev.reasoning || ''), reasoning_started_at: started, reasoning_ended_at: ended });
    } else {
      const ended = m.reasoning && !m.reasoning_ended_at ? new Date().toISOString() : m.reasoning_ended_at;
      this.replaceAt(i, { ...m, content: m.content + (ev.text || ''), ...(m.reasoning ? { reasoning_ended_at: ended } : {}) });
    }
    g.seq = ev.seq;
    this.cursor = { gen: ev.gen, seq: ev.seq };
    return true;
  }

  done(ev, effects) {
    const g = this.gens.get(ev.gen);
    const final = ev.message && typeof ev.message === 'object' ? ev.message : {};
    if (g && g.done && (ev.seq === undefined || ev.seq <= g.seq)) return false; // seen already
    const id = final.id || (g && g.message);
    if (this.active && this.active.gen === ev.gen) this.active = null;
    const seq = typeof ev.seq === 'number' ? ev.seq : (g ? g.seq : 0);
    this.gens.set(ev.gen, { message: id, seq, done: true });
    this.cursor = { gen: ev.gen, seq };
    const status = final.status || DONE_TO_MESSAGE[ev.status] || ev.status;
    const i = id ? this.indexOf(id) : -1;
    if (i === -1) {
      if (final.id) this.push({ ...final, status });
      return true;
    }
    const cur = this.messages[i];
    const extra = ev.error ? { error: ev.error } : {};
    if (!g) {
      // Nothing assembled here (we joined after the text): the server's row is the truth.
      this.replaceAt(i, { ...cur, ...final, ...extra, status, content: final.content ?? cur.content });
      return true;
    }
    const reasoning = cur.reasoning || '';
    this.replaceAt(i, { ...cur, ...final, ...extra, status, content: cur.content, reasoning });
    effects.push({
      type: 'verify', chat: this.chat, message: cur.id, gen: ev.gen, content: cur.content,
      length: ev.length, sha256: ev.sha256, serverContent: final.content,
      reasoning, reasoningLength: ev.reasoning_length, reasoningSha256: ev.reasoning_sha256,
      serverReasoning: typeof final.reasoning === 'string' ? final.reasoning : undefined,
    });
    return true;
  }

  /**
   * Replace a message's text (after a failed verification), unless it changed meanwhile.
   * @param {string} id @param {string} content @param {string} [ifContent]
   */
  replaceContent(id, content, ifContent) {
    const i = this.indexOf(id);
    if (i === -1) return false;
    if (ifContent !== undefined && this.messages[i].content !== ifContent) return false;
    this.replaceAt(i, { ...this.messages[i], content });
    return this.touch();
  }

  /**
   * Replace a message's reasoning (after a failed verification), unless it changed meanwhile.
   * @param {string} id @param {string} reasoning @param {string} [ifReasoning]
   */
  replaceReasoning(id, reasoning, ifReasoning) {
    const i = this.indexOf(id);
    if (i === -1) return false;
    if (ifReasoning !== undefined && (this.messages[i].reasoning || '') !== ifReasoning) return false;
    this.replaceAt(i, { ...this.messages[i], reasoning });
    return this.touch();
  }

  /**
   * Show a message the user is sending before the server confirms it.
   * @param {string} clientMsgId @param {string} content
   */
  addPending(clientMsgId, content) {
    const i = this.messages.findIndex((m) => m.local && m.client_msg_id === clientMsgId);
    const m = { id: `local:${clientMsgId}`, chat: this.chat, role: 'user', content, status: 'pending',
      client_msg_id: clientMsgId, local: true, gen: null };
    if (i === -1) this.push(m); else this.replaceAt(i, m);
    return this.touch();
  }

  /** @param {string} clientMsgId @param {string} status */
  markPending(clientMsgId, status) {
    const i = this.messages.findIndex((m) => m.local && m.client_msg_id === clientMsgId);
    if (i === -1) return false;
    this.replaceAt(i, { ...this.messages[i], status });
    return this.touch();
  }

  /** @param {string} clientMsgId */
  dropPending(clientMsgId) {
    const before = this.messages.length;
    this.messages = this.messages.filter((m) => !(m.local && m.client_msg_id === clientMsgId));
    return before !== this.messages.length && this.touch();
  }

  /**
   * Prepend an older page of history (oldest → newest within the page).
   * @param {Message[]} page @param {boolean} hasMore
   */
  prependHistory(page, hasMore) {
    const have = new Set(this.messages.map((m) => m.id));
    const older = page.filter((m) => !have.has(m.id)).map((m) => ({ ...m }));
    this.messages = [...older, ...this.messages];
    this.hasMore = !!hasMore;
    return this.touch();
  }

  /** The oldest message confirmed by the server (for `?before=`). */
  oldestId() {
    const m = this.messages.find((x) => !x.local);
    return m ? m.id : null;
  }
}

/**
 * Does `content` match what `done` announced?
 * @param {string} content @param {number} length @param {string} sha256
 * @param {(text: string) => Promise<string>} digest
 */
export async function verifyContent(content, length, sha256, digest) {
  if (typeof length === 'number' && codePointLength(content) !== length) return false;
  if (typeof sha256 === 'string' && sha256) return (await digest(content)) === sha256.toLowerCase();
  return true;
}
