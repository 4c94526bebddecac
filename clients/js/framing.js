/**
 * Framing: JSON frames for the WebSocket, an incremental Server-Sent Events parser for the SSE
 * transport, and text measures. Pure, no I/O.
 * @module chatcast/framing
 */

import { MAX_FRAME_BYTES } from './protocol.js';

const encoder = new TextEncoder();

/** Number of Unicode code points in `text` (what `done.length` counts). */
export function codePointLength(text) {
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    // A high surrogate followed by a low one is one code point.
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) {
      const d = text.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) i++;
    }
    n++;
  }
  return n;
}

/** Size of `text` in UTF-8 bytes. */
export function utf8Length(text) {
  return encoder.encode(text).length;
}

/** A frame that would exceed the server's limit (it would close the socket with 1009). */
export class FrameTooLarge extends Error {
  constructor(bytes) {
    super(`frame is ${bytes} bytes; the limit is ${MAX_FRAME_BYTES}`);
    this.name = 'FrameTooLarge';
    this.bytes = bytes;
  }
}

/**
 * One request object → one text frame. Throws FrameTooLarge instead of letting the server close
 * the connection for everyone on it.
 * @param {object} request
 * @returns {string}
 */
export function encodeFrame(request) {
  const text = JSON.stringify(request);
  // Cheap upper bound first: a UTF-16 unit is at most 3 UTF-8 bytes.
  if (text.length * 3 > MAX_FRAME_BYTES) {
    const bytes = utf8Length(text);
    if (bytes > MAX_FRAME_BYTES) throw new FrameTooLarge(bytes);
  }
  return text;
}

/**
 * One text frame → an event object with a string `type`, or null if it is not one.
 * @param {string} text
 * @returns {{type: string, [k: string]: any} | null}
 */
export function decodeFrame(text) {
  let obj;
  try {
    obj = JSON.parse(text);
  } catch {
    return null;
  }
  return obj && typeof obj === 'object' && !Array.isArray(obj) && typeof obj.type === 'string' ? obj : null;
}

/**
 * @typedef {object} SseMessage
 * @property {string} event `message` when the stream named none
 * @property {string} data lines joined with "\n"
 * @property {string | null} id the `id:` field of this message, if any
 */

/**
 * Incremental `text/event-stream` parser (WHATWG HTML §9.2.6): feed decoded text chunks of
 * any size, get complete messages back. Handles LF, CR and CRLF line ends split across chunks,
 * comments, a leading BOM, multi-line data and `retry:`.
 */
export class SseParser {
  constructor() {
    this.buffer = '';
    this.sawCR = false;
    this.first = true;
    this.reset();
    /** Last `id:` seen (the EventSource "last event ID"). */
    this.lastEventId = '';
    /** Last valid `retry:` in milliseconds, or null. */
    this.retry = null;
  }

  reset() {
    this.event = '';
    this.data = [];
    this.id = null;
    this.hasData = false;
  }

  /**
   * @param {string} chunk
   * @returns {SseMessage[]}
   */
  push(chunk) {
    if (this.first && chunk.length) {
      if (chunk.charCodeAt(0) === 0xfeff) chunk = chunk.slice(1);
      this.first = false;
    }
    /** @type {SseMessage[]} */
    const out = [];
    let text = this.buffer + chunk;
    if (this.sawCR && text.startsWith('\n')) text = text.slice(1); // CRLF split across chunks
    this.sawCR = false;
    let start = 0;
    for (let i = 0; i < text.length; i++) {
      const c = text[i];
      if (c !== '\n' && c !== '\r') continue;
      this.line(text.slice(start, i), out);
      if (c === '\r') {
        if (i + 1 < text.length) {
          if (text[i + 1] === '\n') i++;
        } else {
          this.sawCR = true;
        }
      }
      start = i + 1;
    }
    this.buffer = text.slice(start);
    return out;
  }

  /** @param {string} line @param {SseMessage[]} out */
  line(line, out) {
    if (line === '') {
      if (this.hasData) {
        out.push({ event: this.event || 'message', data: this.data.join('\n'), id: this.id });
      }
      this.reset();
      return;
    }
    if (line.startsWith(':')) return; // comment (heartbeat)
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    switch (field) {
      case 'event': this.event = value; break;
      case 'data': this.data.push(value); this.hasData = true; break;
      case 'id':
        if (!value.includes('\0')) { this.id = value; this.lastEventId = value; }
        break;
      case 'retry': if (/^\d+$/.test(value)) this.retry = Number(value); break;
      default: break; // unknown fields are ignored
    }
  }
}
