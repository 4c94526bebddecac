/**
 * The three transports behind one interface. Each carries the same protocol events for every
 * subscribed chat and reports back to its owner (the client) through callbacks:
 *
 *   owner.onEstablished(transport)   the server answered: the connection is good
 *   owner.onEvent(event)             one server event (`chat` set)
 *   owner.onReply(rid, frame)        `ack` / `error` for a request
 *   owner.onClosed({code, reason, established})   the transport is gone (called once)
 *   owner.chats()                    [[chat, ChatState], ...] to (re)subscribe, with cursors
 *
 * `WsTransport` multiplexes all chats on one socket; `SseTransport` opens one event stream per
 * chat and sends commands by HTTP; `PollTransport` long-polls per chat, commands by HTTP.
 * @module chatcast/transports
 */

import { Close, Code } from './protocol.js';
import { decodeFrame, encodeFrame, SseParser } from './framing.js';
import { formatCursor } from './cursor.js';

/** An error with a protocol code. */
export class ChatcastError extends Error {
  /**
   * @param {string} code @param {string} message
   * @param {{retryable?: boolean, status?: number, retryAfter?: number | null, body?: any}} [extra]
   */
  constructor(code, message, { retryable = false, status = 0, retryAfter = null, body = null } = {}) {
    super(message);
    this.name = 'ChatcastError';
    this.code = code;
    this.retryable = retryable;
    this.status = status;
    this.retryAfter = retryAfter;
    this.body = body;
  }
}

/**
 * Turn an `error` frame or JSON error body into a ChatcastError.
 * @param {any} err @param {number} [status]
 */
export function toError(err, status = 0) {
  const e = err && typeof err === 'object' ? err : {};
  return new ChatcastError(String(e.code || 'internal'), String(e.message || 'request failed'), {
    retryable: !!e.retryable, status, retryAfter: typeof e.retry_after === 'number' ? e.retry_after : null, body: e,
  });
}

/**
 * The error of an HTTP answer without a JSON error body (e.g. from a proxy), by its status:
 * the same mapping wherever the client reads HTTP.
 * @param {number} status
 */
export function httpError(status) {
  const code = status === 404 ? Code.NOT_FOUND : status === 401 ? Code.UNAUTHORIZED
    : status === 429 ? Code.RATE_LIMITED : status >= 500 ? Code.INTERNAL : Code.BAD_REQUEST;
  return new ChatcastError(code, `HTTP ${status}`, { status, retryable: status >= 500 || status === 429 });
}

const enc = encodeURIComponent;

/**
 * Carry one request over HTTP (SSE and long-poll tiers). Resolves with the JSON result.
 * @param {(method: string, path: string, body?: any) => Promise<any>} api
 * @param {{type: string, [k: string]: any}} req
 * @param {(chat: string) => string | null} activeGen the running generation of a chat
 */
export function httpCommand(api, req, activeGen) {
  switch (req.type) {
    case 'send': {
      const body = { content: req.content };
      if (req.client_msg_id) body.client_msg_id = req.client_msg_id;
      return api('POST', `/api/chats/${enc(req.chat)}/messages`, body);
    }
    case 'stop': {
      const gen = req.gen || (req.chat ? activeGen(req.chat) : null);
      if (!gen) return Promise.resolve({ status: 'idle' });
      return api('POST', `/api/generations/${enc(gen)}/stop`);
    }
    case 'regenerate':
      return api('POST', `/api/chats/${enc(req.chat)}/regenerate`, req.message ? { message: req.message } : {});
    case 'continue':
      return api('POST', `/api/generations/${enc(req.gen)}/continue`);
    case 'ping':
      return Promise.resolve({ type: 'pong' });
    default:
      return Promise.reject(new ChatcastError('unknown_type', `no HTTP route for ${req.type}`));
  }
}

/** Base URL helpers. */
/**
 * The URL of a chatcast path (`/api/…`, `/ws`) on a server whose base URL may carry a path
 * prefix (chatcast mounted under `/chat` in another app): `endpoint('https://a.b/chat', '/ws')`
 * is `https://a.b/chat/ws`, where `new URL('/ws', base)` would drop the prefix.
 * @param {string | URL} base
 * @param {string} path
 */
export function endpoint(base, path) {
  const root = new URL(String(base));
  if (!root.pathname.endsWith('/')) root.pathname += '/';
  return new URL(String(path).replace(/^\/+/, ''), root);
}

function wsUrl(base, path) {
  const u = endpoint(base, path);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  return u.toString();
}

export class WsTransport {
  /**
   * @param {any} owner
   * @param {{base: string, WebSocket: any, openTimeout: number, pingInterval: number,
   *          pongTimeout: number, query?: string}} opts
   */
  constructor(owner, opts) {
    this.name = 'ws';
    this.owner = owner;
    this.opts = opts;
    this.ws = null;
    this.established = false;
    this.closed = false;
    this.timers = new Set();
    this.lastFrameAt = 0;
  }

  open() {
    const { WebSocket: WS, base, query } = this.opts;
    try {
      this.ws = new WS(wsUrl(base, '/ws' + (query || '')));
    } catch (err) {
      // A CSP or a missing WebSocket: fail like a refused connection.
      this.later(() => this.finish(1006, String(err && err.message)), 0);
      return;
    }
    const ws = this.ws;
    this.later(() => { if (!this.established) this.finish(1006, 'open timeout'); }, this.opts.openTimeout);
    ws.onopen = () => {
      // Anything from the server proves the path works (a blocked proxy may accept and hang up).
      this.raw({ type: 'ping', rid: 'hello' });
      for (const [chat, state] of this.owner.chats()) this.subscribe(chat, state);
    };
    ws.onmessage = (e) => {
      if (typeof e.data !== 'string') return;
      const frame = decodeFrame(e.data);
      if (!frame) { this.owner.onMalformed(e.data, 'not a JSON event'); return; }
      this.lastFrameAt = Date.now();
      if (!this.established) {
        this.established = true;
        this.startHeartbeat();
        this.owner.onEstablished(this);
      }
      if (frame.type === 'ack' || frame.type === 'error' || frame.type === 'pong') {
        if (frame.rid && frame.rid !== 'hello' && frame.rid !== 'hb') { this.owner.onReply(frame.rid, frame); return; }
        if (frame.type === 'error') this.owner.onEvent(frame);
        return;
      }
      this.owner.onEvent(frame);
    };
    ws.onerror = () => { /* onclose follows with the code */ };
    ws.onclose = (e) => this.finish(e.code, e.reason);
  }

  startHeartbeat() {
    const { pingInterval, pongTimeout } = this.opts;
    const tick = () => {
      if (this.closed) return;
      if (Date.now() - this.lastFrameAt >= pingInterval) {
        const sentAt = Date.now();
        this.raw({ type: 'ping', rid: 'hb' });
        this.later(() => {
          if (this.lastFrameAt < sentAt) { // nothing came back: the peer is gone
            try { this.ws.close(4000, 'heartbeat timeout'); } catch { /* already closing */ }
            this.finish(1006, 'heartbeat timeout');
          }
        }, pongTimeout);
      }
      this.later(tick, pingInterval / 2);
    };
    this.later(tick, pingInterval / 2);
  }

  /** @param {() => void} fn @param {number} ms */
  later(fn, ms) {
    const t = setTimeout(() => { this.timers.delete(t); fn(); }, ms);
    this.timers.add(t);
  }

  raw(obj) {
    if (!this.ws || this.ws.readyState !== 1) return false;
    this.ws.send(encodeFrame(obj));
    return true;
  }

  get ready() {
    return !!this.ws && this.ws.readyState === 1;
  }

  /** @param {string} chat @param {import('./assembler.js').ChatState} state */
  subscribe(chat, state) {
    const req = { type: 'subscribe', chat, rid: `sub:${chat}` };
    if (state && state.cursor && state.ready) req.cursor = { gen: state.cursor.gen, seq: state.cursor.seq };
    this.raw(req);
  }

  /** @param {string} chat */
  unsubscribe(chat) {
    this.raw({ type: 'unsubscribe', chat });
  }

  /** Ask for a fresh snapshot of one chat. */
  resync(chat) {
    this.raw({ type: 'unsubscribe', chat });
    this.raw({ type: 'subscribe', chat, rid: `sub:${chat}` });
  }

  /**
   * Send a request; false if the socket is not open (the owner queues it).
   * Throws FrameTooLarge for an oversized frame.
   */
  request(req) {
    if (!this.established || !this.ready) return false;
    return this.raw(req);
  }

  finish(code, reason) {
    if (this.closed) return;
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    if (this.ws) {
      this.ws.onopen = this.ws.onmessage = this.ws.onclose = this.ws.onerror = null;
      if (this.ws.readyState <= 1) try { this.ws.close(); } catch { /* ignore */ }
    }
    this.owner.onClosed({ code, reason: reason || '', established: this.established });
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    if (this.ws) {
      this.ws.onopen = this.ws.onmessage = this.ws.onclose = this.ws.onerror = null;
      try { this.ws.close(Close.NORMAL, 'client closed'); } catch { /* ignore */ }
    }
  }
}

/** Common part of the two HTTP tiers: one loop per chat, commands over HTTP. */
class HttpTransport {
  constructor(owner, opts) {
    this.owner = owner;
    this.opts = opts;
    this.established = false;
    this.closed = false;
    /** @type {Map<string, AbortController>} */
    this.loops = new Map();
    this.ready = true;
  }

  open() {
    const chats = this.owner.chats();
    if (!chats.length) {
      // Nothing to stream yet: the tier is usable as soon as the server answers at all.
      this.opts.probe().then((ok) => {
        if (this.closed) return;
        if (ok) this.markEstablished(); else this.fail(1006, 'server unreachable');
      });
    }
    for (const [chat, state] of chats) this.subscribe(chat, state);
  }

  markEstablished() {
    if (this.established || this.closed) return;
    this.established = true;
    this.owner.onEstablished(this);
  }

  subscribe(chat, state) {
    if (this.closed) return;
    this.loops.get(chat)?.abort();
    const ctl = new AbortController();
    this.loops.set(chat, ctl);
    this.run(chat, state, ctl).catch((err) => {
      // Unsubscribed, replaced or closed: nothing to report. An abort by the loop's own timer
      // (an idle stream, a poll past its wait) is a failure like any other (see `lapsed`).
      if (this.closed || this.loops.get(chat) !== ctl) return;
      if (err instanceof ChatcastError && err.code === 'not_found') {
        this.loops.delete(chat);
        this.owner.onEvent({ type: 'error', chat, code: 'not_found', message: err.message, retryable: false });
        return;
      }
      const code = err instanceof ChatcastError && err.code === 'unauthorized' ? Close.UNAUTHORIZED : 1006;
      this.fail(code, err && err.message);
    });
  }

  unsubscribe(chat) {
    this.loops.get(chat)?.abort();
    this.loops.delete(chat);
  }

  resync(chat) {
    this.unsubscribe(chat);
    this.subscribe(chat, null);
  }

  request() {
    return false; // the owner sends commands by HTTP itself
  }

  fail(code, reason) {
    if (this.closed) return;
    this.close();
    this.owner.onClosed({ code, reason: reason || '', established: this.established });
  }

  close() {
    this.closed = true;
    for (const ctl of this.loops.values()) ctl.abort();
    this.loops.clear();
  }

  /** Where a chat's stream starts: after what its state holds, or (none yet) from the start. */
  cursorOf(state) {
    return state && state.ready ? formatCursor(state.cursor) : '';
  }

  /** The URL of one of `chat`'s streams (`events` or `poll`): the caller's query, our cursor. */
  chatUrl(chat, path, cursor, extra = {}) {
    const params = new URLSearchParams(this.opts.query || '');
    if (cursor) params.set('cursor', cursor);
    for (const [key, value] of Object.entries(extra)) params.set(key, value);
    const qs = params.toString();
    return endpoint(this.opts.base, `/api/chats/${enc(chat)}/${path}${qs ? `?${qs}` : ''}`);
  }

  /** One GET of `chat`'s loop, cancelled by its controller; a refusal is thrown as its error. */
  async get(url, ctl, init = {}) {
    const res = await this.opts.fetch(url, { ...init, signal: ctl.signal, cache: 'no-store', credentials: 'same-origin' });
    await this.check(res);
    return res;
  }

  /**
   * What a failure of `chat`'s loop means. Aborted while the tier is open and the loop still
   * current, it was the loop's own timer that gave up: a retryable `lapse`, so the owner
   * reconnects. Otherwise (unsubscribed, closed, or a real error) it is `err` itself.
   */
  lapsed(chat, ctl, err, lapse) {
    if (ctl.signal.aborted && !this.closed && this.loops.get(chat) === ctl) {
      return new ChatcastError('internal', lapse, { retryable: true });
    }
    return err;
  }

  async check(res) {
    if (res.ok) return;
    let body = null;
    try { body = await res.json(); } catch { /* not JSON */ }
    if (body && body.error) throw toError(body.error, res.status);
    throw httpError(res.status);
  }
}

export class SseTransport extends HttpTransport {
  name = 'sse';

  async run(chat, state, ctl) {
    const { idleTimeout } = this.opts;
    const url = this.chatUrl(chat, 'events', this.cursorOf(state));
    let idle;
    const arm = () => { clearTimeout(idle); idle = setTimeout(() => ctl.abort(), idleTimeout); };
    arm();
    try {
      const res = await this.get(url, ctl, { headers: { Accept: 'text/event-stream' } });
      if (!(res.headers.get('content-type') || '').includes('text/event-stream')) {
        throw new ChatcastError('internal', 'not an event stream', { retryable: true });
      }
      this.markEstablished();
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      const parser = new SseParser();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        arm();
        for (const msg of parser.push(decoder.decode(value, { stream: true }))) {
          const frame = decodeFrame(msg.data);
          if (frame) this.owner.onEvent({ chat, ...frame });
          else this.owner.onMalformed(msg.data, 'not a JSON event', chat);
        }
      }
    } catch (err) {
      throw this.lapsed(chat, ctl, err, 'event stream idle');
    } finally {
      clearTimeout(idle);
    }
    if (!ctl.signal.aborted) throw new ChatcastError('internal', 'event stream ended', { retryable: true });
  }
}

export class PollTransport extends HttpTransport {
  name = 'poll';

  async run(chat, state, ctl) {
    const { wait } = this.opts;
    // Start from our own position; afterwards pass back the server's opaque cursor unchanged.
    let cursor = this.cursorOf(state);
    while (!ctl.signal.aborted) {
      const url = this.chatUrl(chat, 'poll', cursor, { wait: String(wait) });
      const timer = setTimeout(() => ctl.abort(), (wait + 15) * 1000);
      let body;
      try {
        body = await (await this.get(url, ctl)).json();
      } catch (err) {
        throw this.lapsed(chat, ctl, err, 'poll timed out');
      } finally {
        clearTimeout(timer);
      }
      this.markEstablished();
      if (ctl.signal.aborted) return;
      for (const ev of Array.isArray(body.events) ? body.events : []) {
        if (ev && typeof ev === 'object' && !Array.isArray(ev)) this.owner.onEvent({ chat, ...ev });
        else this.owner.onMalformed(JSON.stringify(ev), 'not an event object', chat);
      }
      if (body.cursor !== undefined && body.cursor !== null) cursor = String(body.cursor);
    }
  }
}
