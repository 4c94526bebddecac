/**
 * chatcast demo UI: Vue 3 runtime build with render functions (no template compiler, so the
 * strict CSP needs no 'unsafe-eval'), the chatcast client for streaming, markdown rendered by
 * markdown.js. The open chat lives in the URL: /#/c/<id>.
 */

import {
  createApp, defineComponent, h, nextTick, onBeforeUnmount, onMounted, reactive, ref, shallowRef, computed,
} from './vendor/vue/vue.runtime.esm-browser.prod.js';
import { ChatcastClient, isThinking, thoughtSeconds } from '../client/chatcast.js';
import { renderMarkdown } from './markdown.js';
import { forgetStreams, MarkdownBody, onRenderError, renderers } from './render.js';
import * as saved from './cache.js';

// ---- connection ---------------------------------------------------------------------------

const params = new URLSearchParams(location.search);
const ALL = ['ws', 'sse', 'poll'];
const first = ALL.indexOf(params.get('transport') || '');
// Every URL is relative to the page, so the UI works where chatcast is mounted (`/chat/`).
const base = new URL('.', location.href).href;
const client = new ChatcastClient({ baseUrl: base, transports: first > 0 ? ALL.slice(first) : ALL });
window.chatcast = client; // handy in the console, and for tests
window.chatcastRenderers = renderers; // likewise: the renderer can be swapped from there

// A renderer that throws shows that message as plain text; the error goes to the server's log.
onRenderError((err, msg) => {
  console.error('rendering failed; message shown as plain text', err);
  client.report('render_error', String((err && err.message) || err),
    { message_id: msg.id, status: msg.status, length: (msg.content || '').length, stack: String((err && err.stack) || '').slice(0, 800) },
    msg.chat || ui.currentId);
});

const TRANSPORT_NAMES = { ws: 'WebSocket', sse: 'SSE', poll: 'long-poll' };

const ui = reactive({
  chats: [],
  models: [],
  currentId: null,
  conn: { state: 'idle', transport: null, detail: null },
  banners: [],
  draft: '',
  renaming: null,
  renameText: '',
  sidebarOpen: false,
  atBottom: true,
  loadingOlder: false,
  newChatModel: null,
  missing: false,
  keepCopy: saved.enabled(),
});

/** The open chat's state, copied from the client once per animation frame. `saved`: painted
 * from the browser's copy while the server's snapshot is on its way (shown, never live). */
const view = shallowRef({ messages: [], active: null, hasMore: false, ready: false, saved: false });

// ---- banners --------------------------------------------------------------------------------

let bannerSeq = 0;
function banner(text, action = null, key = null) {
  if (key) ui.banners = ui.banners.filter((b) => b.key !== key);
  ui.banners.push({ id: ++bannerSeq, text, action, key });
}
function dismiss(id) {
  ui.banners = ui.banners.filter((b) => b.id !== id);
}
function describe(err) {
  if (!err) return 'Something went wrong.';
  const map = {
    network: 'Cannot reach the server.',
    rate_limited: 'Too many requests — wait a moment.',
    too_many_generations: 'Too many answers are being generated at once.',
    busy: 'This chat is already answering. Stop it first or wait.',
    too_large: 'That message is too long.',
    not_found: 'This chat does not exist (or is not yours).',
    connection_lost: 'The connection dropped before the server answered.',
    provider_unavailable: 'The model provider is unavailable right now.',
    storage_unavailable: 'The database is unavailable right now — try again in a moment.',
  };
  return map[err.code] || err.message || 'Something went wrong.';
}

// ---- rendering batched per animation frame ---------------------------------------------------

let frameQueued = false;
function scheduleFlush() {
  if (frameQueued) return;
  frameQueued = true;
  // Hidden tabs get no animation frames; keep them current at a lower rate. A visible tab that
  // is not the focused one may get none either (some engines pause them): a timer backs it up.
  if (document.hidden) { setTimeout(flush, 150); return; }
  const backup = setTimeout(() => frameQueued && flush(), 250);
  requestAnimationFrame(() => { clearTimeout(backup); if (frameQueued) flush(); });
}
function flush() {
  frameQueued = false;
  const st = ui.currentId ? client.chat(ui.currentId) : null;
  if (st && !st.ready && savedCopy && savedCopy.id === ui.currentId) {
    const pending = st.messages.filter((m) => m.local);
    view.value = { messages: [...savedCopy.messages, ...pending], active: null, hasMore: false, ready: false, saved: true };
  } else {
    if (st && st.ready) { savedCopy = null; saveSoon(); }
    view.value = st
      ? { messages: st.messages, active: st.active, hasMore: st.hasMore !== false, ready: st.ready, saved: false }
      : { messages: [], active: null, hasMore: false, ready: true, saved: false };
  }
  afterRender();
}

// ---- the browser's copy ----------------------------------------------------------------------

/** The open chat as the browser kept it, until the server's snapshot arrives. */
let savedCopy = null;
let saveTimer = null;
function saveSoon() {
  if (saveTimer || !ui.keepCopy) return;
  saveTimer = setTimeout(saveNow, 1500);
}
function saveNow() {
  clearTimeout(saveTimer);
  saveTimer = null;
  if (!ui.keepCopy) return;
  const st = ui.currentId ? client.chat(ui.currentId) : null;
  if (st && st.ready) saved.saveChat(ui.currentId, st.messages);
}
function setKeepCopy(on) {
  ui.keepCopy = on;
  saved.setEnabled(on);
  if (on) { saved.saveChats(ui.chats); saveNow(); }
}
window.addEventListener('pagehide', saveNow);
document.addEventListener('visibilitychange', () => { if (document.hidden) saveNow(); });

let scroller = null; // the message list element
let stick = true; // follow new text while the reader is at the bottom

/*
 * A bounded DOM for long chats: at most WINDOW messages are rendered, a window over the chat's
 * messages that follows the end while the reader is there (`windowEnd` null) and otherwise ends at
 * a given message. Scrolling near the top or bottom of what is rendered moves the window by STEP
 * messages, keeping the message under the reader's eyes in place; at the very top, older history is
 * fetched from the server as before.
 */
const WINDOW = 60;
const STEP = 20;
const windowEnd = ref(null); // id of the last rendered message, or null: the chat's last one

function windowRange(msgs) {
  let end = msgs.length;
  if (windowEnd.value) {
    const i = msgs.findIndex((m) => m.id === windowEnd.value);
    if (i !== -1) end = i + 1;
  }
  return [Math.max(0, end - WINDOW), end];
}

/** Change what is rendered without moving what the reader sees. */
async function keepingPlace(change) {
  const el = scroller && [...scroller.querySelectorAll('.thread > .msg')].find((m) => m.offsetTop + m.offsetHeight > scroller.scrollTop);
  const id = el && el.dataset.id;
  const top = el ? el.offsetTop - scroller.scrollTop : 0;
  await change();
  await nextTick();
  if (!scroller || !id) return;
  const again = scroller.querySelector(`.thread > .msg[data-id="${CSS.escape(id)}"]`);
  if (again) scroller.scrollTop = again.offsetTop - top;
}

let shifting = false;
async function shiftWindow(direction) {
  const msgs = view.value.messages;
  const [start, end] = windowRange(msgs);
  if (shifting) return false;
  if (direction < 0 && start === 0) return false;
  if (direction > 0 && end >= msgs.length) return false;
  shifting = true;
  try {
    await keepingPlace(() => {
      const next = direction < 0 ? Math.min(msgs.length, Math.max(0, start - STEP) + WINDOW) : Math.min(msgs.length, end + STEP);
      windowEnd.value = next >= msgs.length ? null : msgs[next - 1].id;
    });
  } finally {
    shifting = false;
  }
  return true;
}

function afterRender() {
  nextTick(() => {
    if (scroller && stick && !windowEnd.value) scroller.scrollTop = scroller.scrollHeight;
    maybeLoadOlder();
  });
}
function onScroll() {
  if (!scroller) return;
  const fromBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight;
  stick = !windowEnd.value && fromBottom < 60;
  ui.atBottom = stick;
  if (fromBottom < 300 && windowEnd.value) shiftWindow(1);
  else if (scroller.scrollTop < 300) shiftWindow(-1).then((moved) => moved || maybeLoadOlder());
}
function jumpToLatest() {
  windowEnd.value = null;
  stick = true;
  ui.atBottom = true;
  nextTick(() => { if (scroller) scroller.scrollTop = scroller.scrollHeight; });
}

async function maybeLoadOlder() {
  const id = ui.currentId;
  if (!scroller || !id || ui.loadingOlder || !view.value.ready || !view.value.hasMore) return;
  if (scroller.scrollTop > 150 || !view.value.messages.length) return;
  if (windowRange(view.value.messages)[0] > 0) return; // older ones are loaded, just not shown
  ui.loadingOlder = true;
  try {
    // A full window stays on the same messages; the ones loaded come into view by moving it up.
    await keepingPlace(async () => {
      await client.loadOlder(id, 50);
      flush();
    });
    if (ui.currentId === id && scroller && scroller.scrollTop < 300) await shiftWindow(-1);
  } catch (err) {
    banner(`Could not load older messages: ${describe(err)}`, { label: 'Retry', run: maybeLoadOlder }, 'history');
  } finally {
    ui.loadingOlder = false;
  }
}

// ---- client events ----------------------------------------------------------------------------

client.on('state', (s) => {
  ui.conn = { state: s.state, transport: s.transport, detail: s.detail };
  if (s.state === 'open') ui.banners = ui.banners.filter((b) => b.key !== 'conn');
  if (s.state === 'closed' && s.detail && s.detail.why !== 'closed by the page') {
    banner('Disconnected from the server.', { label: 'Reconnect', run: () => client.reconnect() }, 'conn');
  }
  if (s.state === 'unauthorized') { saved.clear(); savedCopy = null; }
  if (s.state === 'unauthorized') banner('Your session is no longer valid. Reload the page to sign in again.', { label: 'Reload', run: () => location.reload() }, 'conn');
});
client.on('change', ({ chat, event }) => {
  if (chat === ui.currentId) scheduleFlush();
  if (event && (event.type === 'done' || event.type === 'message')) refreshChatsSoon();
});
client.on('error', (err) => {
  if (err.chat && err.code === 'not_found') saved.forgetChat(err.chat);
  if (err.chat && err.chat === ui.currentId && err.code === 'not_found') {
    if (savedCopy) { savedCopy = null; flush(); }
    ui.missing = true;
    banner(describe(err), { label: 'New chat', run: newChat }, 'missing');
    return;
  }
  banner(describe(err), null, `err:${err.code}`);
});

// ---- chats -----------------------------------------------------------------------------------

async function refreshChats() {
  try {
    const body = await client.api('GET', '/api/chats');
    ui.chats = Array.isArray(body) ? body : body.chats || [];
    if (ui.keepCopy) saved.saveChats(ui.chats);
  } catch (err) {
    banner(`Could not load your chats: ${describe(err)}`, { label: 'Retry', run: refreshChats }, 'chats');
  }
}
let refreshTimer = null;
function refreshChatsSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refreshChats, 300);
}

async function loadModels() {
  try {
    const body = await client.api('GET', '/api/models');
    ui.models = Array.isArray(body) ? body : body.models || [];
  } catch { /* the picker just stays empty */ }
}

function chatFromHash() {
  const m = /^#\/c\/([A-Za-z0-9_-]{1,64})$/.exec(location.hash);
  return m ? m[1] : null;
}

function open(id) {
  if (ui.currentId === id) return;
  if (ui.currentId) { saveNow(); client.unsubscribe(ui.currentId); }
  ui.currentId = id;
  windowEnd.value = null;
  forgetStreams(new Set()); // incremental renderings are rebuilt on demand for the chat shown
  const copy = id && !client.chat(id)?.ready ? saved.loadChat(id) : null;
  savedCopy = copy ? { id, messages: copy.messages } : null;
  ui.missing = false;
  ui.banners = ui.banners.filter((b) => b.key !== 'missing' && b.key !== 'history');
  ui.sidebarOpen = false;
  stick = true;
  ui.atBottom = true;
  if (id) client.subscribe(id);
  flush();
  const chat = ui.chats.find((c) => c.id === id);
  document.title = chat ? `${chat.title} · chatcast` : 'chatcast';
  if (id && !chat) refreshChatsSoon(); // opened from a link or another tab
  focusComposer();
}

function go(id) {
  const hash = id ? `#/c/${id}` : '#/';
  if (location.hash !== hash) location.hash = hash; // its hashchange finds the chat open already
  open(id);
}

function newChat() {
  go(null);
}

const currentChat = computed(() => ui.chats.find((c) => c.id === ui.currentId) || null);

async function renameChat(chat, title) {
  const t = title.trim().slice(0, 200);
  ui.renaming = null;
  if (!t || t === chat.title) return;
  try {
    const updated = await client.api('PATCH', `/api/chats/${chat.id}`, { title: t });
    Object.assign(chat, updated);
  } catch (err) {
    banner(`Could not rename: ${describe(err)}`);
  }
}

async function deleteChat(chat) {
  if (!window.confirm(`Delete “${chat.title}”? This cannot be undone.`)) return;
  try {
    await client.api('DELETE', `/api/chats/${chat.id}`);
    ui.chats = ui.chats.filter((c) => c.id !== chat.id);
    saved.forgetChat(chat.id);
    if (ui.keepCopy) saved.saveChats(ui.chats);
    if (ui.currentId === chat.id) newChat();
  } catch (err) {
    banner(`Could not delete: ${describe(err)}`);
  }
}

function modelKey(m) {
  return m ? `${m.provider}/${m.model}` : '';
}
const selectedModel = computed(() => {
  const chat = currentChat.value;
  if (chat && chat.provider && chat.model) return `${chat.provider}/${chat.model}`;
  if (!chat && ui.newChatModel) return ui.newChatModel;
  return modelKey(ui.models.find((m) => m.default) || ui.models[0]);
});

async function pickModel(key) {
  const m = ui.models.find((x) => modelKey(x) === key);
  if (!m) return;
  const chat = currentChat.value;
  if (!chat) { ui.newChatModel = key; return; }
  try {
    const updated = await client.api('PATCH', `/api/chats/${chat.id}`, { provider: m.provider, model: m.model });
    Object.assign(chat, updated);
  } catch (err) {
    banner(`Could not switch model: ${describe(err)}`);
  }
}

// ---- commands ------------------------------------------------------------------------------

function titleFrom(text) {
  const line = text.replace(/\s+/g, ' ').trim();
  return line.length > 48 ? `${line.slice(0, 47)}…` : line || 'New chat';
}

async function submit() {
  const text = ui.draft;
  if (!text.trim() || generating.value) return;
  let id = ui.currentId;
  if (!id) {
    const body = { title: titleFrom(text) };
    const m = ui.models.find((x) => modelKey(x) === ui.newChatModel);
    if (m) Object.assign(body, { provider: m.provider, model: m.model });
    try {
      const chat = await client.api('POST', '/api/chats', body);
      ui.chats = [chat, ...ui.chats.filter((c) => c.id !== chat.id)];
      id = chat.id;
      ui.newChatModel = null;
      go(id);
    } catch (err) {
      banner(`Could not start a chat: ${describe(err)}`, { label: 'Retry', run: submit }, 'send');
      return;
    }
  }
  ui.draft = '';
  const box = document.querySelector('.composer textarea');
  if (box) box.style.height = ''; // back to one line
  stick = true;
  send(id, text);
}

function send(chat, text, clientMsgId) {
  ui.banners = ui.banners.filter((b) => b.key !== 'send');
  client.send(chat, text, { clientMsgId }).catch((err) => {
    banner(`Message not sent: ${describe(err)}`, { label: 'Retry', run: () => send(chat, text, err.clientMsgId) }, 'send');
  });
}

function act(label, promise) {
  promise.catch((err) => banner(`${label} failed: ${describe(err)}`, null, `act:${label}`));
}
const generating = computed(() => !!view.value.active);
function stop() {
  if (ui.currentId) act('Stop', client.stop(ui.currentId));
}
function regenerate() {
  if (ui.currentId) { stick = true; act('Regenerate', client.regenerate(ui.currentId)); }
}
function continueAnswer(msg) {
  if (msg.gen) { stick = true; act('Continue', client.continue(msg.gen)); }
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const ta = document.createElement('textarea');
    ta.value = text;
    ta.setAttribute('readonly', '');
    ta.className = 'offscreen';
    document.body.appendChild(ta);
    ta.select();
    document.execCommand('copy');
    ta.remove();
  }
  if (button) {
    const before = button.textContent;
    button.textContent = 'Copied';
    setTimeout(() => { button.textContent = before; }, 1500);
  }
}

function focusComposer() {
  nextTick(() => document.querySelector('.composer textarea')?.focus({ preventScroll: true }));
}

// ---- components ------------------------------------------------------------------------------

const Icon = (d, extra = {}) => h('svg', { viewBox: '0 0 24 24', width: 18, height: 18, 'aria-hidden': 'true', class: 'icon', ...extra },
  [h('path', { d, fill: 'none', stroke: 'currentColor', 'stroke-width': 2, 'stroke-linecap': 'round', 'stroke-linejoin': 'round' })]);
const ICONS = {
  plus: 'M12 5v14M5 12h14',
  send: 'M12 19V5M5 12l7-7 7 7',
  stop: 'M7 7h10v10H7z',
  regen: 'M4 4v6h6M20 20v-6h-6M5.5 15a7 7 0 0 0 12.3 2M18.5 9A7 7 0 0 0 6.2 7',
  cont: 'M5 12h14M13 6l6 6-6 6',
  copy: 'M9 9h10v10H9zM5 15V5h10',
  edit: 'M4 20h4L19 9l-4-4L4 16zM14 6l4 4',
  trash: 'M4 7h16M9 7V4h6v3M6 7l1 13h10l1-13',
  menu: 'M4 6h16M4 12h16M4 18h16',
  down: 'M12 5v14M5 12l7 7 7-7',
};

const StatusNote = {
  stopped: 'Stopped',
  interrupted: 'Interrupted — the server lost this answer midway.',
  error: 'The answer failed.',
  saved: 'Saved on this device while it was being written; checking with the server…',
};

/**
 * The model's reasoning above its answer: open while it thinks ("Thinking…"), collapsed once
 * the answer starts ("Thought for N s"), open or closed as the reader chooses after that.
 * Markdown, through the same sanitiser as answers.
 */
const ReasoningView = defineComponent({
  name: 'ReasoningView',
  props: { msg: Object },
  setup(props) {
    const html = computed(() => renderMarkdown(props.msg.reasoning));
    const chosen = ref(null); // the reader's own open/closed, once they toggled it
    const auto = computed(() => !props.msg.content); // open until the answer starts
    const onToggle = (e) => {
      // The browser also fires `toggle` when the page opens or closes it: only a change
      // away from what the page set is the reader's choice.
      if (e.target.open !== auto.value) chosen.value = e.target.open;
    };
    return () => {
      const m = props.msg;
      const thinking = isThinking(m);
      const secs = thoughtSeconds(m);
      const label = thinking ? 'Thinking…'
        : secs !== null ? `Thought for ${Math.max(1, Math.round(secs))} s` : 'Reasoning';
      return h('details', { class: ['reasoning', thinking && 'thinking'], open: chosen.value ?? auto.value, onToggle }, [
        h('summary', { class: 'reasoning-head' }, label),
        h('div', { class: 'markdown reasoning-body', innerHTML: html.value }),
      ]);
    };
  },
});

/**
 * Sources a provider attached to an answer (`metadata.sources`: strings, or `{title, url}`),
 * under its text. Only http(s) URLs become links; anything else is shown as text.
 */
function SourcesView(msg) {
  const sources = msg.metadata && Array.isArray(msg.metadata.sources) ? msg.metadata.sources : [];
  if (!sources.length || msg.status === 'streaming') return null;
  return h('div', { class: 'sources', 'data-testid': 'sources' }, [
    h('span', { class: 'sources-head' }, 'Sources'),
    ...sources.slice(0, 20).map((src) => {
      const title = String((src && typeof src === 'object' ? src.title || src.url : src) || '');
      const url = src && typeof src === 'object' && typeof src.url === 'string' ? src.url : '';
      return /^https?:\/\//i.test(url)
        ? h('a', { class: 'source', href: url, target: '_blank', rel: 'noopener noreferrer' }, title)
        : h('span', { class: 'source' }, title);
    }),
  ]);
}

const MessageView = defineComponent({
  name: 'MessageView',
  props: { msg: Object, last: Boolean, busy: Boolean },
  setup(props) {
    return () => {
      const m = props.msg;
      if (m.role === 'user') {
        return h('div', { class: ['msg', 'user', m.status], 'data-id': m.id, 'data-role': 'user' }, [
          h('div', { class: 'bubble' }, m.content),
          m.status === 'failed' ? h('div', { class: 'note error' }, 'Not sent') : null,
        ]);
      }
      const streaming = m.status === 'streaming';
      const children = [
        h('div', { class: 'avatar', 'aria-hidden': 'true' }, '✦'),
        h('div', { class: 'body' }, [
          m.reasoning ? h(ReasoningView, { msg: m }) : null,
          h(MarkdownBody, { msg: m }),
          SourcesView(m),
          StatusNote[m.status] ? h('div', { class: ['note', m.status] }, [
            StatusNote[m.status],
            m.error && m.error.message ? ` ${m.error.message}` : '',
          ]) : null,
          !streaming && !m.saved ? h('div', { class: 'actions' }, [
            h('button', { type: 'button', class: 'ghost', 'aria-label': 'Copy message', title: 'Copy', onClick: (e) => copyText(m.content, e.currentTarget.querySelector('span')) },
              [Icon(ICONS.copy), h('span', 'Copy')]),
            props.last && !props.busy ? h('button', { type: 'button', class: 'ghost', 'aria-label': 'Regenerate', title: 'Regenerate', onClick: regenerate },
              [Icon(ICONS.regen), h('span', 'Regenerate')]) : null,
            props.last && !props.busy && ['stopped', 'interrupted', 'error'].includes(m.status) && m.gen
              ? h('button', { type: 'button', class: 'ghost', 'aria-label': 'Continue', title: 'Continue', onClick: () => continueAnswer(m) },
                [Icon(ICONS.cont), h('span', 'Continue')]) : null,
            m.model ? h('span', { class: 'model-tag' }, m.model) : null,
          ]) : null,
        ]),
      ];
      return h('div', { class: ['msg', 'assistant', m.status], 'data-id': m.id, 'data-role': 'assistant', 'data-status': m.status }, children);
    };
  },
});

const Sidebar = defineComponent({
  name: 'Sidebar',
  setup() {
    return () => h('nav', { class: ['sidebar', ui.sidebarOpen && 'open'], 'aria-label': 'Chats' }, [
      h('div', { class: 'brand' }, [h('span', { class: 'logo', 'aria-hidden': 'true' }), 'chatcast']),
      h('button', { type: 'button', class: 'new-chat', 'aria-label': 'New chat', onClick: newChat }, [Icon(ICONS.plus), h('span', 'New chat')]),
      h('div', { class: 'chat-list', role: 'list' }, ui.chats.length
        ? ui.chats.map((c) => h('div', { key: c.id, role: 'listitem', class: ['chat-item', c.id === ui.currentId && 'current'] }, [
          ui.renaming === c.id
            ? h('input', {
              class: 'rename', value: ui.renameText, 'aria-label': 'Chat title', maxlength: 200,
              onInput: (e) => { ui.renameText = e.target.value; },
              onKeydown: (e) => {
                if (e.key === 'Enter') renameChat(c, ui.renameText);
                if (e.key === 'Escape') ui.renaming = null;
              },
              onBlur: () => ui.renaming === c.id && renameChat(c, ui.renameText),
              onVnodeMounted: ({ el }) => { el.focus(); el.select(); },
            })
            : h('a', { href: `#/c/${c.id}`, class: 'chat-link', title: c.title, 'aria-current': c.id === ui.currentId ? 'page' : null }, c.title || 'New chat'),
          ui.renaming === c.id ? null : h('div', { class: 'chat-tools' }, [
            h('button', { type: 'button', class: 'icon-btn', 'aria-label': `Rename chat ${c.title}`, title: 'Rename', onClick: () => { ui.renaming = c.id; ui.renameText = c.title; } }, [Icon(ICONS.edit)]),
            h('button', { type: 'button', class: 'icon-btn', 'aria-label': `Delete chat ${c.title}`, title: 'Delete', onClick: () => deleteChat(c) }, [Icon(ICONS.trash)]),
          ]),
        ]))
        : [h('p', { class: 'muted small' }, 'No chats yet.')]),
      h('div', { class: 'sidebar-foot muted small' }, [
        h('p', 'Answers keep streaming when you close the tab.'),
        h('label', { class: 'keep-copy' }, [
          h('input', { type: 'checkbox', checked: ui.keepCopy, onChange: (e) => setKeepCopy(e.target.checked) }),
          ' Keep a copy on this device',
        ]),
      ]),
    ]);
  },
});

const ConnectionBadge = defineComponent({
  name: 'ConnectionBadge',
  setup() {
    return () => {
      const { state, transport, detail } = ui.conn;
      const name = TRANSPORT_NAMES[transport] || transport || '';
      let text;
      if (state === 'open') text = `Live · ${name}`;
      else if (state === 'reconnecting') text = detail && detail.trying ? `Reconnecting · ${TRANSPORT_NAMES[detail.trying]}…` : 'Reconnecting…';
      else if (state === 'connecting') text = 'Connecting…';
      else if (state === 'unauthorized') text = 'Signed out';
      else if (state === 'closed') text = 'Disconnected';
      else text = 'Idle';
      return h('div', { class: ['conn', state], role: 'status', 'aria-live': 'polite', 'data-testid': 'connection', 'data-state': state, 'data-transport': transport || '' }, [
        h('span', { class: 'dot', 'aria-hidden': 'true' }), h('span', { class: 'conn-text' }, text),
      ]);
    };
  },
});

const Banners = defineComponent({
  name: 'Banners',
  setup() {
    return () => (ui.banners.length ? h('div', { class: 'banners' }, ui.banners.map((b) => h('div', { key: b.id, class: 'banner', role: 'alert' }, [
      h('span', { class: 'banner-text' }, b.text),
      b.action ? h('button', { type: 'button', class: 'banner-action', onClick: () => { dismiss(b.id); b.action.run(); } }, b.action.label) : null,
      h('button', { type: 'button', class: 'icon-btn', 'aria-label': 'Dismiss', onClick: () => dismiss(b.id) }, '×'),
    ]))) : null);
  },
});

const SUGGESTIONS = [
  'Explain how resuming a stream from a cursor works',
  'Write a Python function that retries with jittered backoff',
  'Compare WebSockets and Server-Sent Events',
];

const Conversation = defineComponent({
  name: 'Conversation',
  setup() {
    const listRef = ref(null);
    onMounted(() => { scroller = listRef.value; });
    onBeforeUnmount(() => { scroller = null; });
    const onClick = (e) => {
      const btn = e.target.closest && e.target.closest('.copy-code');
      if (btn) {
        const code = btn.closest('.code-block')?.querySelector('code');
        if (code) copyText(code.textContent, btn);
      }
    };
    return () => {
      const v = view.value;
      const msgs = v.messages;
      const lastAnswer = msgs.length && msgs[msgs.length - 1].role === 'assistant' ? msgs[msgs.length - 1].id : null;
      const empty = ui.currentId ? v.ready && !msgs.length : true;
      const [start, end] = windowRange(msgs);
      const shown = msgs.slice(start, end);
      return h('div', { class: 'scroller', ref: listRef, onScroll, onClick }, [
        h('div', { class: 'thread', 'aria-live': 'off' }, [
          ui.loadingOlder ? h('div', { class: 'muted small center' }, 'Loading earlier messages…') : null,
          ui.currentId && !v.ready && !v.saved ? h('div', { class: 'loading' }, [h('span'), h('span'), h('span')]) : null,
          v.saved ? h('div', { class: 'saved-note muted small center', role: 'status' }, 'Showing the copy saved on this device · updating…') : null,
          empty && !ui.missing ? h('div', { class: 'welcome' }, [
            h('h1', 'How can I help?'),
            h('p', { class: 'muted' }, 'Answers stream live to every tab that has this chat open.'),
            h('div', { class: 'suggestions' }, SUGGESTIONS.map((s) => h('button', { type: 'button', class: 'suggestion', onClick: () => { ui.draft = s; focusComposer(); } }, s))),
          ]) : null,
          ...shown.map((m) => h(MessageView, { key: m.id, msg: m, last: m.id === lastAnswer, busy: !!v.active || v.saved })),
        ]),
        ui.atBottom && !windowEnd.value ? null : h('button', { type: 'button', class: 'jump', 'aria-label': 'Jump to latest', onClick: jumpToLatest }, [Icon(ICONS.down)]),
      ]);
    };
  },
});

const Composer = defineComponent({
  name: 'Composer',
  setup() {
    const grow = (el) => { el.style.height = 'auto'; el.style.height = `${Math.min(el.scrollHeight, 220)}px`; };
    return () => h('form', { class: 'composer', onSubmit: (e) => { e.preventDefault(); submit(); } }, [
      h('div', { class: 'composer-box' }, [
        h('textarea', {
          rows: 1, placeholder: 'Message chatcast', 'aria-label': 'Message', value: ui.draft,
          onInput: (e) => { ui.draft = e.target.value; grow(e.target); },
          onKeydown: (e) => {
            if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); submit(); }
          },
        }),
        generating.value
          ? h('button', { type: 'button', class: 'primary stop', 'aria-label': 'Stop', title: 'Stop generating', onClick: stop }, [Icon(ICONS.stop)])
          : h('button', { type: 'submit', class: 'primary', 'aria-label': 'Send', title: 'Send (Enter)', disabled: !ui.draft.trim() }, [Icon(ICONS.send)]),
      ]),
      h('div', { class: 'hint muted small' }, 'Enter to send · Shift+Enter for a new line'),
    ]);
  },
});

const App = defineComponent({
  name: 'App',
  setup() {
    return () => h('div', { class: 'layout' }, [
      h(Sidebar),
      ui.sidebarOpen ? h('div', { class: 'scrim', onClick: () => { ui.sidebarOpen = false; } }) : null,
      h('main', { class: 'main' }, [
        h('header', { class: 'topbar' }, [
          h('button', { type: 'button', class: 'icon-btn menu', 'aria-label': 'Toggle sidebar', onClick: () => { ui.sidebarOpen = !ui.sidebarOpen; } }, [Icon(ICONS.menu)]),
          h('div', { class: 'title' }, currentChat.value ? currentChat.value.title : 'New chat'),
          ui.models.length ? h('select', {
            class: 'model-picker', 'aria-label': 'Model', value: selectedModel.value,
            onChange: (e) => pickModel(e.target.value),
          }, ui.models.map((m) => h('option', { value: modelKey(m) }, `${m.model} · ${m.provider}`))) : null,
          h(ConnectionBadge),
        ]),
        h(Banners),
        h(Conversation),
        h(Composer),
      ]),
    ]);
  },
});

// ---- start -----------------------------------------------------------------------------------

window.addEventListener('hashchange', () => open(chatFromHash()));
window.addEventListener('focus', refreshChatsSoon);
document.addEventListener('visibilitychange', () => {
  if (!document.hidden) { refreshChatsSoon(); scheduleFlush(); }
});
setInterval(() => { if (!document.hidden) refreshChats(); }, 20000);

const app = createApp(App);
app.mount('#app');
document.getElementById('app').classList.remove('boot');
const keptChats = saved.loadChats();
if (keptChats) ui.chats = keptChats; // replaced by the server's list as soon as it answers
client.connect();
open(chatFromHash());
refreshChats().then(() => {
  const chat = currentChat.value;
  if (chat) document.title = `${chat.title} · chatcast`;
});
loadModels();
