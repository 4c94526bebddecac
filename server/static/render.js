/**
 * The body of a message: markdown for answers, with two guarantees the rest of the page relies on.
 *
 * - Cheap while streaming: an answer being streamed is cut at block boundaries (a blank line
 *   outside a code fence, followed by a line that starts a new block). Each finished block is
 *   rendered once and kept as its own DOM node; only the growing tail after the last boundary is
 *   rendered again on each frame. Once the answer is no longer streaming it is rendered whole,
 *   once, and kept in a bounded cache so scrolling back to it costs nothing.
 * - Never fatal: a renderer that throws shows that message as plain text (the rest of the chat
 *   keeps working) and the error is reported once per message.
 *
 * `renderers.markdown` is the one renderer used; it can be replaced (e.g. from the console) to
 * try another one.
 */

import { h, defineComponent } from './vendor/vue/vue.runtime.esm-browser.prod.js';
import { renderMarkdown } from './markdown.js';

/** `tail: false` renders a streaming answer whole on every frame (for comparison only). */
export const renderers = { markdown: renderMarkdown, tail: true };

/** Called as `(error, message)` once per message whose rendering failed. */
let reportError = () => {};
export function onRenderError(fn) {
  reportError = fn;
}

/** A tail longer than this is cut at a line that starts a top-level list item as well. */
const LONG_TAIL = 4000;
/** The tail is highlighted only while it is shorter than this (an open code block grows). */
const HIGHLIGHT_TAIL = 20_000;
/** Rendered finished messages kept (by id); the DOM shows only a window of them anyway. */
const CACHE_SIZE = 400;

const FENCE = /^ {0,3}(`{3,}|~{3,})(.*)$/;
const LIST_ITEM = /^(?:[-*+]|\d{1,9}[.)])\s/;

/** Incremental markdown for one streaming answer: finished blocks plus a re-rendered tail. */
class StreamRender {
  constructor() {
    this.reset('');
  }

  reset(source) {
    this.source = source;
    this.scanned = 0; // text before this offset has been scanned line by line
    this.committed = 0; // text before this offset is rendered in `parts`
    this.fence = null; // the open code fence ("```" / "~~~~"), if any
    this.blank = false; // the last scanned line was blank
    /** @type {{key: number, html: string}[]} */
    this.parts = [];
  }

  /** @param {string} text the whole answer so far */
  update(text) {
    if (!text.startsWith(this.source)) this.reset('');
    this.source = text;
    let i = this.scanned;
    for (;;) {
      const nl = text.indexOf('\n', i);
      if (nl === -1) break;
      this.line(text.slice(i, nl), i);
      i = nl + 1;
    }
    this.scanned = i;
    const tail = text.slice(this.committed);
    const html = renderers.markdown(tail, { highlight: tail.length < HIGHLIGHT_TAIL });
    return [...this.parts, { key: this.committed, html, tail: true }];
  }

  line(line, start) {
    const fence = FENCE.exec(line);
    if (this.fence) {
      const m = fence && fence[1];
      if (m && m[0] === this.fence[0] && m.length >= this.fence.length && !fence[2].trim()) this.fence = null;
      return;
    }
    if (!line.trim()) { this.blank = true; return; }
    const startsBlock = /^\S/.test(line);
    if (startsBlock && start > this.committed
      && (this.blank || (start - this.committed > LONG_TAIL && LIST_ITEM.test(line)))) {
      this.commit(start);
    }
    this.blank = false;
    if (fence) this.fence = fence[1];
  }

  commit(end) {
    const text = this.source.slice(this.committed, end);
    this.parts.push({ key: this.committed, html: renderers.markdown(text) });
    this.committed = end;
  }
}

/** @type {Map<string, StreamRender>} message id → its incremental renderer while streaming */
const streams = new Map();
/** @type {Map<string, {content: string, html: string}>} message id → finished rendering (LRU) */
const finished = new Map();
/** @type {Map<string, string>} message id → status it had when its rendering failed */
const failed = new Map();

function renderWhole(msg) {
  const hit = finished.get(msg.id);
  if (hit && hit.content === msg.content) {
    finished.delete(msg.id); // refresh its place in the LRU order
    finished.set(msg.id, hit);
    return hit.html;
  }
  const html = renderers.markdown(msg.content);
  finished.set(msg.id, { content: msg.content, html });
  while (finished.size > CACHE_SIZE) finished.delete(finished.keys().next().value);
  return html;
}

/**
 * The parts of a message's HTML, or null when it must be shown as plain text.
 * @param {{id: string, content: string, status: string}} msg
 * @returns {{key: number | string, html: string, tail?: boolean}[] | null}
 */
export function messageParts(msg) {
  if (failed.has(msg.id)) {
    if (failed.get(msg.id) === msg.status) return null;
    failed.delete(msg.id); // its state changed (e.g. it finished): try again
  }
  try {
    if (msg.status === 'streaming' && renderers.tail) {
      let s = streams.get(msg.id);
      if (!s) { s = new StreamRender(); streams.set(msg.id, s); }
      return s.update(msg.content || '');
    }
    streams.delete(msg.id);
    if (msg.status === 'streaming') return [{ key: 'all', html: renderers.markdown(msg.content || ''), tail: true }];
    return [{ key: 'all', html: renderWhole(msg) }];
  } catch (err) {
    streams.delete(msg.id);
    failed.set(msg.id, msg.status);
    try { reportError(err, msg); } catch { /* reporting must not break rendering */ }
    return null;
  }
}

/** Forget what was rendered for messages no longer shown by any chat (e.g. on chat switch). */
export function forgetStreams(keep) {
  for (const id of streams.keys()) if (!keep.has(id)) streams.delete(id);
}

/** An answer's text as markdown, or as plain text when rendering failed. */
export const MarkdownBody = defineComponent({
  name: 'MarkdownBody',
  props: { msg: Object },
  setup(props) {
    return () => {
      const m = props.msg;
      const streaming = m.status === 'streaming';
      const parts = messageParts(m);
      if (!parts) {
        return h('div', { class: ['markdown', 'plain', streaming && 'streaming'], 'data-render': 'plain' }, m.content);
      }
      const cls = ['markdown', streaming && 'streaming', !m.content && streaming && 'empty'];
      if (parts.length === 1 && !parts[0].tail) return h('div', { class: cls, innerHTML: parts[0].html });
      return h('div', { class: cls }, parts.map((p) => h('div', {
        key: p.key, class: ['md-part', p.tail && 'md-tail'], innerHTML: p.html,
      })));
    };
  },
});
