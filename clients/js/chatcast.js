/**
 * chatcast browser client: one connection per page, many chats on it.
 *
 * WebSocket first; Server-Sent Events + HTTP commands where WebSockets fail; long-poll last.
 * Reconnects with full-jitter backoff, resumes every subscribed chat from its cursor, follows
 * the close-code table, assembles each answer's text and checks it against `done`.
 * No dependencies. See README.md for the API.
 * @module chatcast
 */

import { ChatState, malformed, verifyContent } from './assembler.js';
import { reconnectPlan, fullJitter } from './backoff.js';
import { FrameTooLarge } from './framing.js';
import { sha256Hex } from './sha256.js';
import { ChatcastError, endpoint, httpCommand, httpError, PollTransport, SseTransport, toError, WsTransport } from './transports.js';

export { ChatState, isThinking, malformed, thoughtSeconds } from './assembler.js';
export { ChatcastError } from './transports.js';
export * as protocol from './protocol.js';

/**
 * @typedef {'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed' | 'unauthorized'} ConnectionState
 * @typedef {'ws' | 'sse' | 'poll'} TransportName
 */

/**
 * @typedef {object} ClientOptions
 * @property {string} [baseUrl] where chatcast is served: its origin, with the path prefix it is
 *   mounted under, if any (`https://example.com/chat`); paths such as `/api/chats` are taken
 *   below it (default: the page's origin)
 * @property {TransportName[]} [transports] tiers to try, in order (default ws, sse, poll)
 * @property {string} [token] API token: sent as `Authorization: Bearer`, and exchanged for a
 *   single-use `?ticket=` for the WebSocket (default: the session cookie is used)
 * @property {number} [backoffBase] ms (default 500)
 * @property {number} [backoffCap] ms (default 15000)
 * @property {number} [failuresBeforeFallback] failed connects on a tier, with the server
 *   reachable, before the next tier is tried (default 2)
 * @property {number} [openTimeout] ms to wait for the first server frame (default 8000)
 * @property {number} [pingInterval] ms of silence before the client pings (default 25000)
 * @property {number} [pongTimeout] ms to wait for that answer (default 10000)
 * @property {number} [sseIdleTimeout] ms without a byte (heartbeats included) (default 45000)
 * @property {number} [pollWait] seconds each long-poll may wait (default 25)
 * @property {number} [stallCheck] ms without an event for a running answer before the client
 *   asks the server whether it is still running, and re-syncs the chat if not (default 12000;
 *   0 turns it off)
 * @property {string | false} [errorReports] where rendering errors and skipped malformed frames
 *   are reported (POST, JSON `{kind, message, detail, chat_id?}`; default `/api/client-errors`;
 *   false turns reporting off)
 * @property {number} [reportsPerMinute] at most this many reports a minute (default 10); the same
 *   kind and message is reported once a minute
 * @property {typeof fetch} [fetch]
 * @property {typeof WebSocket} [WebSocket]
 */

const TRANSPORTS = { ws: WsTransport, sse: SseTransport, poll: PollTransport };

function newId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  const bytes = new Uint8Array(16);
  if (c && c.getRandomValues) c.getRandomValues(bytes);
  else for (let i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

export class ChatcastClient {
  /** @param {ClientOptions} [options] */
  constructor(options = {}) {
    const loc = globalThis.location;
    this.opts = {
      baseUrl: options.baseUrl || (loc ? loc.origin : 'http://localhost'),
      transports: options.transports || ['ws', 'sse', 'poll'],
      token: options.token || null,
      backoffBase: options.backoffBase ?? 500,
      backoffCap: options.backoffCap ?? 15000,
      failuresBeforeFallback: options.failuresBeforeFallback ?? 2,
      openTimeout: options.openTimeout ?? 8000,
      pingInterval: options.pingInterval ?? 25000,
      pongTimeout: options.pongTimeout ?? 10000,
      sseIdleTimeout: options.sseIdleTimeout ?? 45000,
      pollWait: options.pollWait ?? 25,
      stallCheck: options.stallCheck ?? 12000,
      errorReports: options.errorReports ?? '/api/client-errors',
      reportsPerMinute: options.reportsPerMinute ?? 10,
      fetch: options.fetch || globalThis.fetch.bind(globalThis),
      WebSocket: options.WebSocket || globalThis.WebSocket,
    };
    /** @type {Map<string, ChatState>} */
    this.subs = new Map();
    /** @type {Map<string, Set<Function>>} */
    this.listeners = new Map();
    /** @type {Map<string, any>} requests awaiting `ack`/`error` */
    this.pending = new Map();
    /** @type {ConnectionState} */
    this.state = 'idle';
    /** @type {TransportName | null} transport of the current connection */
    this.transportName = null;
    this.transport = null;
    this.tier = 0;
    this.tierFailures = 0;
    this.attempt = 0;
    this.timer = null;
    this.ridSeq = 0;
    this.stopped = false;
    this.detail = null;
    /** @type {Map<string, number>} chat → time of its last event */
    this.lastEventAt = new Map();
    this.watchdog = null;
    this.checking = new Set();
    /** @type {number[]} times of the reports sent in the last minute */
    this.reportTimes = [];
    /** @type {Map<string, number>} kind+message → when it was last reported */
    this.reported = new Map();
    if (typeof globalThis.addEventListener === 'function') {
      globalThis.addEventListener('online', () => this.state === 'reconnecting' && this.connectNow());
    }
  }

  // ---- events ---------------------------------------------------------------------------

  /**
   * Listen to `state` ({state, transport, detail}), `change` ({chat, state: ChatState, event}),
   * `event` (every server event), `error` (ChatcastError not tied to a request; `chat` set when
   * it concerns one) and `integrity` ({chat, message, ok}). Returns a function that unlistens.
   * @param {string} type @param {(payload: any) => void} fn
   */
  on(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
    return () => this.listeners.get(type)?.delete(fn);
  }

  emit(type, payload) {
    for (const fn of this.listeners.get(type) || []) {
      try { fn(payload); } catch (err) { console.error(err); }
    }
  }

  setState(state, detail = null) {
    this.state = state;
    this.detail = detail;
    this.emit('state', { state, transport: this.transportName, detail });
  }

  // ---- connection -----------------------------------------------------------------------

  /** Open the connection (done automatically by the first `subscribe`). */
  connect() {
    this.stopped = false;
    if (!this.watchdog && this.opts.stallCheck > 0) {
      this.watchdog = setInterval(() => this.checkStalls(), Math.max(1000, this.opts.stallCheck / 3));
    }
    if (this.transport || this.timer) return;
    this.connectNow();
  }

  connectNow() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.stopped) return;
    if (this.transport) { this.transport.close(); this.transport = null; }
    const name = this.opts.transports[this.tier];
    this.setState(this.attempt || this.tierFailures ? 'reconnecting' : 'connecting',
      { trying: name, attempt: this.attempt });
    this.openTransport(name).catch((err) => {
      this.transport = null;
      this.onClosed(null, { code: 1006, reason: String(err && err.message), established: false });
    });
  }

  async openTransport(name) {
    const o = this.opts;
    let query = '';
    if (o.token && name === 'ws') {
      const { ticket } = await this.api('POST', '/api/tickets');
      query = `?ticket=${encodeURIComponent(ticket)}`;
    }
    if (this.stopped) return;
    const Transport = TRANSPORTS[name];
    const owner = {
      chats: () => [...this.subs.entries()],
      onEstablished: (t) => t === this.transport && this.onEstablished(t),
      onEvent: (ev) => owner.alive() && this.onEvent(ev),
      onReply: (rid, frame) => owner.alive() && this.onReply(rid, frame),
      onMalformed: (raw, why, chat) => owner.alive() && this.onMalformed(raw, why, chat),
      onClosed: (info) => this.onClosed(t, info),
      alive: () => t === this.transport,
    };
    const t = new Transport(owner, {
      base: o.baseUrl, query, WebSocket: o.WebSocket, fetch: (u, init) => o.fetch(u, this.withAuth(init)),
      openTimeout: o.openTimeout, pingInterval: o.pingInterval, pongTimeout: o.pongTimeout,
      idleTimeout: o.sseIdleTimeout, wait: o.pollWait, probe: () => this.probe(),
    });
    this.transport = t;
    this.transportName = name;
    t.open();
  }

  onEstablished(t) {
    this.attempt = 0;
    this.tierFailures = 0;
    // After a reconnect, check running answers soon if the server stays silent about them.
    const soon = Date.now() - this.opts.stallCheck + 3000;
    for (const chat of this.subs.keys()) this.lastEventAt.set(chat, soon);
    this.setState('open', { transport: t.name });
    for (const p of this.pending.values()) if (!p.sent) this.dispatch(p);
  }

  onClosed(t, info) {
    if (t && t !== this.transport) return;
    this.transport = null;
    for (const [rid, p] of this.pending) {
      if (!p.sent || p.via !== 'ws') continue;
      if (p.idempotent) { p.sent = false; continue; } // resent with the same id after reconnecting
      this.pending.delete(rid);
      p.reject(new ChatcastError('connection_lost', 'the connection dropped before the server answered',
        { retryable: true }));
    }
    if (this.stopped) return;
    if (info.established) this.tierFailures = 0; else this.tierFailures++;
    const plan = reconnectPlan({ ...info, attempt: this.attempt, base: this.opts.backoffBase, cap: this.opts.backoffCap });
    if (!plan.reconnect) {
      this.setState(info.code === 4001 ? 'unauthorized' : 'closed', { code: info.code, reason: info.reason, why: plan.why });
      return;
    }
    const last = this.tier >= this.opts.transports.length - 1;
    if (!info.established && !last && this.tierFailures >= this.opts.failuresBeforeFallback) {
      // Only fall back when the server is up: a server that is down fails every tier alike.
      this.setState('reconnecting', { why: plan.why, probing: true });
      this.probe().then((up) => {
        if (this.stopped || this.transport || this.timer) return;
        if (up) {
          this.tier++;
          this.tierFailures = 0;
          this.attempt = 0;
          this.connectNow();
        } else {
          this.schedule(plan.delay, plan.why);
        }
      });
      return;
    }
    this.attempt = plan.resetAttempts ? 0 : this.attempt + 1;
    this.schedule(plan.delay, plan.why);
  }

  schedule(delay, why) {
    clearTimeout(this.timer);
    this.setState('reconnecting', { why, retryAt: Date.now() + delay });
    this.timer = setTimeout(() => { this.timer = null; this.connectNow(); }, delay);
  }

  /** Is the server reachable at all? (decides between "retry" and "fall back a tier") */
  async probe() {
    const ctl = new AbortController();
    const t = setTimeout(() => ctl.abort(), 3000);
    try {
      const res = await this.opts.fetch(endpoint(this.opts.baseUrl, '/healthz'), { cache: 'no-store', signal: ctl.signal });
      return res.ok;
    } catch {
      return false;
    } finally {
      clearTimeout(t);
    }
  }

  /** Drop the connection and connect again now, starting from the first tier. */
  reconnect() {
    this.stopped = false;
    if (this.transport) { const t = this.transport; this.transport = null; t.close(); }
    this.tier = 0;
    this.tierFailures = 0;
    this.attempt = 0;
    this.connectNow();
  }

  /** Close for good; pending requests fail with `closed`. */
  close() {
    this.stopped = true;
    clearInterval(this.watchdog);
    this.watchdog = null;
    clearTimeout(this.timer);
    this.timer = null;
    if (this.transport) { const t = this.transport; this.transport = null; t.close(); }
    for (const p of this.pending.values()) p.reject(new ChatcastError('closed', 'client closed'));
    this.pending.clear();
    this.setState('closed', { why: 'closed by the page' });
  }

  // ---- chats ----------------------------------------------------------------------------

  /**
   * Receive a chat's events. Returns its ChatState (messages, active generation, cursor),
   * updated in place; listen to `change` to re-render.
   * @param {string} chat
   * @returns {ChatState}
   */
  subscribe(chat) {
    let st = this.subs.get(chat);
    if (st) return st;
    st = new ChatState(chat);
    this.subs.set(chat, st);
    if (this.canTalk()) this.transport.subscribe(chat, st);
    else if (!this.transport && !this.timer) this.connect();
    return st;
  }

  /** Whether per-chat calls can go to the transport now (otherwise it picks them up on open). */
  canTalk() {
    const t = this.transport;
    return !!t && (t.name !== 'ws' || t.ready);
  }

  /** @param {string} chat */
  unsubscribe(chat) {
    if (!this.subs.delete(chat)) return;
    if (this.canTalk()) this.transport.unsubscribe(chat);
  }

  /** @param {string} chat */
  chat(chat) {
    return this.subs.get(chat);
  }

  /** Ask the server for a fresh snapshot of a chat. @param {string} chat */
  resync(chat) {
    const st = this.subs.get(chat);
    if (!st) return;
    st.cursor = null;
    if (this.canTalk()) this.transport.resync(chat);
  }

  /**
   * A running answer that has been silent for `stallCheck` ms: ask the server whether it is
   * still running. If it ended and we never heard (an event lost with a crashed process),
   * re-sync the chat from a snapshot instead of showing it as streaming forever.
   */
  checkStalls() {
    if (!this.transport || !this.transport.established) return;
    const now = Date.now();
    for (const [chat, st] of this.subs) {
      const gen = st.active && st.active.gen;
      if (!gen || this.checking.has(chat)) continue;
      if (now - (this.lastEventAt.get(chat) || 0) < this.opts.stallCheck) continue;
      this.checking.add(chat);
      this.api('GET', `/api/generations/${encodeURIComponent(gen)}`)
        .then((g) => {
          const current = this.subs.get(chat);
          if (g && g.status && g.status !== 'active' && current && current.active && current.active.gen === gen) {
            this.resync(chat);
          }
        }, () => { /* try again next round */ })
        .finally(() => {
          this.checking.delete(chat);
          this.lastEventAt.set(chat, Date.now());
        });
    }
  }

  /**
   * A frame that is not a sound event: skipped (the stream goes on; a gap it leaves is repaired
   * by the next snapshot), announced as `malformed` and reported.
   * @param {any} raw @param {string} why @param {string} [chat]
   */
  onMalformed(raw, why, chat) {
    const text = typeof raw === 'string' ? raw : (() => { try { return JSON.stringify(raw); } catch { return String(raw); } })();
    const detail = { frame: String(text).slice(0, 300), transport: this.transportName };
    this.emit('malformed', { chat: chat || null, why, frame: detail.frame });
    this.report('malformed_frame', why, detail, chat);
  }

  /**
   * Report a client-side problem to the server's error log (fire and forget, rate-limited).
   * @param {string} kind e.g. `render_error`, `malformed_frame`
   * @param {string} message
   * @param {Record<string, any>} [detail]
   * @param {string | null} [chat]
   * @returns {boolean} whether a report was sent
   */
  report(kind, message, detail = {}, chat = null) {
    const url = this.opts.errorReports;
    if (!url) return false;
    const now = Date.now();
    const key = `${kind}\n${message}`;
    if (now - (this.reported.get(key) ?? -Infinity) < 60000) return false;
    this.reportTimes = this.reportTimes.filter((t) => now - t < 60000);
    if (this.reportTimes.length >= this.opts.reportsPerMinute) return false;
    this.reportTimes.push(now);
    this.reported.set(key, now);
    if (this.reported.size > 200) this.reported.delete(this.reported.keys().next().value);
    const body = { kind, message: String(message).slice(0, 500), detail };
    if (chat) body.chat_id = chat;
    let payload;
    try { payload = JSON.stringify(body); } catch { payload = JSON.stringify({ kind, message: body.message, detail: {} }); }
    const init = this.withAuth({ method: 'POST', headers: { 'Content-Type': 'application/json' }, body: payload, keepalive: true });
    Promise.resolve().then(() => this.opts.fetch(endpoint(this.opts.baseUrl, url), init)).catch(() => { /* best effort */ });
    return true;
  }

  onEvent(ev) {
    const bad = malformed(ev);
    if (bad) { this.onMalformed(ev, bad, ev && typeof ev.chat === 'string' ? ev.chat : undefined); return; }
    if (ev.chat) this.lastEventAt.set(ev.chat, Date.now());
    this.emit('event', ev);
    if (ev.type === 'error') {
      const err = toError(ev);
      err.chat = ev.chat;
      if (ev.chat && err.code === 'not_found') this.subs.delete(ev.chat);
      this.emit('error', err);
      return;
    }
    const st = ev.chat ? this.subs.get(ev.chat) : undefined;
    if (!st) return;
    let result;
    try {
      result = st.apply(ev);
    } catch (err) {
      this.onMalformed(ev, `could not apply ${ev.type}: ${err && err.message}`, ev.chat);
      return;
    }
    const { changed, effects } = result;
    if (changed) this.emit('change', { chat: ev.chat, state: st, event: ev });
    for (const eff of effects) {
      if (eff.type === 'verify') this.verify(st, eff);
      else if (eff.type === 'resync') this.resync(eff.chat);
    }
  }

  async verify(st, eff) {
    const textOk = await verifyContent(eff.content, eff.length, eff.sha256, sha256Hex);
    // A server that sends no reasoning digest has nothing to check.
    const reasoningOk = eff.reasoningSha256 === undefined
      || await verifyContent(eff.reasoning, eff.reasoningLength, eff.reasoningSha256, sha256Hex);
    const ok = textOk && reasoningOk;
    this.emit('integrity', { chat: eff.chat, message: eff.message, gen: eff.gen, ok, text: textOk, reasoning: reasoningOk });
    if (ok) return;
    const haveText = textOk || typeof eff.serverContent === 'string';
    const haveReasoning = reasoningOk || typeof eff.serverReasoning === 'string';
    if (!haveText || !haveReasoning) {
      this.resync(eff.chat);
      return;
    }
    let changed = false;
    if (!textOk) changed = st.replaceContent(eff.message, eff.serverContent, eff.content) || changed;
    if (!reasoningOk) changed = st.replaceReasoning(eff.message, eff.serverReasoning, eff.reasoning) || changed;
    if (changed) this.emit('change', { chat: eff.chat, state: st, event: null });
  }

  onReply(rid, frame) {
    const p = this.pending.get(rid);
    if (!p) {
      if (frame.type === 'error' && rid.startsWith('sub:')) {
        this.onEvent({ ...frame, chat: rid.slice(4) });
      }
      return;
    }
    this.pending.delete(rid);
    if (frame.type === 'error') p.reject(toError(frame));
    else p.resolve(frame);
  }

  // ---- requests -------------------------------------------------------------------------

  /**
   * Send a request and wait for its `ack` (rejects with ChatcastError on `error`). Over SSE and
   * long-poll it goes by HTTP. Requests made while offline wait for the connection.
   * @param {{type: string, [k: string]: any}} req
   * @param {{idempotent?: boolean}} [opts] idempotent requests are resent after a drop
   */
  request(req, { idempotent = false } = {}) {
    return new Promise((resolve, reject) => {
      const rid = `r${++this.ridSeq}`;
      const p = { rid, req: { ...req, rid }, idempotent, sent: false, via: null, tries: 0, resolve, reject };
      this.pending.set(rid, p);
      if (!this.transport && !this.timer && this.state !== 'closed' && this.state !== 'unauthorized') this.connect();
      this.dispatch(p);
    });
  }

  dispatch(p) {
    const t = this.transport;
    if (!t) return;
    if (t.name === 'ws') {
      if (!t.established) return;
      try {
        if (t.request(p.req)) { p.sent = true; p.via = 'ws'; }
      } catch (err) {
        this.pending.delete(p.rid);
        p.reject(err instanceof FrameTooLarge ? new ChatcastError('too_large', err.message) : err);
      }
      return;
    }
    p.sent = true;
    p.via = 'http';
    const { rid, ...req } = p.req;
    httpCommand((m, path, body) => this.api(m, path, body), req, (chat) => this.subs.get(chat)?.active?.gen ?? null)
      .then((result) => {
        if (!this.pending.has(rid)) return;
        this.pending.delete(rid);
        p.resolve({ type: 'ack', rid, ...(result || {}) });
      }, (err) => {
        if (!this.pending.has(rid)) return;
        if (err.code === 'network' && p.idempotent && p.tries < 6) {
          p.sent = false;
          const delay = fullJitter(p.tries++, { base: this.opts.backoffBase, cap: this.opts.backoffCap });
          setTimeout(() => this.pending.has(rid) && !p.sent && this.dispatch(p), delay);
          return;
        }
        this.pending.delete(rid);
        p.reject(err);
      });
  }

  /**
   * Post a user message and start an answer. The message shows at once (status `pending`);
   * a retry with the same `clientMsgId` never makes a second one.
   * @param {string} chat @param {string} content
   * @param {{clientMsgId?: string}} [opts]
   * @returns {Promise<{message: any, gen: string}>}
   */
  async send(chat, content, { clientMsgId } = {}) {
    const id = clientMsgId || newId();
    const st = this.subs.get(chat);
    const touched = () => st && this.emit('change', { chat, state: st, event: null });
    if (st) { st.addPending(id, content); touched(); }
    try {
      const ack = await this.request({ type: 'send', chat, content, client_msg_id: id }, { idempotent: true });
      if (st && ack.message && typeof ack.message === 'object') { st.upsert(ack.message); st.touch(); touched(); }
      return ack;
    } catch (err) {
      if (st && st.markPending(id, 'failed')) touched();
      err.clientMsgId = id;
      throw err;
    }
  }

  /**
   * Stop a chat's running answer (for every tab). Idempotent.
   * @param {string} chat @param {string} [gen] default: the chat's active generation
   */
  stop(chat, gen) {
    const g = gen || this.subs.get(chat)?.active?.gen;
    return this.request(g ? { type: 'stop', gen: g } : { type: 'stop', chat }, { idempotent: true });
  }

  /** New answer for the last (or the given) user message. @param {string} chat @param {string} [message] */
  regenerate(chat, message) {
    return this.request(message ? { type: 'regenerate', chat, message } : { type: 'regenerate', chat });
  }

  /** Continue an `interrupted` / `stopped` answer from its partial text. @param {string} gen */
  continue(gen) {
    return this.request({ type: 'continue', gen });
  }

  /** Alias of `continue` for code that avoids the keyword. @param {string} gen */
  continueGeneration(gen) {
    return this.continue(gen);
  }

  /**
   * Load the page of history before the oldest loaded message into the chat's state.
   * @param {string} chat @param {number} [limit]
   * @returns {Promise<boolean>} whether still older messages exist
   */
  async loadOlder(chat, limit = 50) {
    const st = this.subs.get(chat);
    if (!st) return false;
    const before = st.oldestId();
    const qs = new URLSearchParams({ limit: String(limit) });
    if (before) qs.set('before', before);
    const body = await this.api('GET', `/api/chats/${encodeURIComponent(chat)}/messages?${qs}`);
    const page = Array.isArray(body) ? body : (body.messages || []);
    const more = Array.isArray(body) ? page.length >= limit : !!body.has_more;
    if (before) st.prependHistory(page, more);
    else { st.hasMore = more; st.touch(); }
    this.emit('change', { chat, state: st, event: null });
    return more;
  }

  // ---- REST -----------------------------------------------------------------------------

  withAuth(init = {}) {
    const headers = { ...(init.headers || {}) };
    if (this.opts.token) headers.Authorization = `Bearer ${this.opts.token}`;
    return { credentials: 'same-origin', ...init, headers };
  }

  /**
   * JSON request to the REST API. Rejects with ChatcastError (code `network` when the server
   * could not be reached).
   * @param {string} method @param {string} path @param {any} [body]
   */
  async api(method, path, body) {
    const init = { method, headers: { Accept: 'application/json' }, cache: 'no-store' };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await this.opts.fetch(endpoint(this.opts.baseUrl, path), this.withAuth(init));
    } catch (err) {
      throw new ChatcastError('network', `cannot reach the server (${err && err.message})`, { retryable: true });
    }
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = null; }
    if (!res.ok) {
      if (data && data.error) throw toError(data.error, res.status);
      throw httpError(res.status);
    }
    return data;
  }
}

export default ChatcastClient;
