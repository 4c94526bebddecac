import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChatcastClient } from '../chatcast.js';

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));
async function until(fn, ms = 2000) {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await tick(2);
  }
}

/** A WebSocket double the test drives by hand. */
function fakeWs() {
  class FakeWs {
    static all = [];
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      FakeWs.all.push(this);
    }
    send(text) { this.sent.push(JSON.parse(text)); }
    close() { if (this.readyState < 2) this.serverClose(1005); }
    accept() { this.readyState = 1; this.onopen?.({}); }
    push(obj) { this.onmessage?.({ data: JSON.stringify(obj) }); }
    serverClose(code, reason = '') { this.readyState = 3; this.onclose?.({ code, reason }); }
    refuse() { this.readyState = 3; this.onerror?.({}); this.onclose?.({ code: 1006, reason: '' }); }
    sentOf(type) { return this.sent.filter((f) => f.type === type); }
    pong() { const p = this.sentOf('ping').at(-1); this.push({ type: 'pong', rid: p.rid }); }
  }
  return FakeWs;
}

/** fetch double: routes by "METHOD path" prefix. */
function fakeFetch(routes) {
  const calls = [];
  const fn = async (url, init = {}) => {
    const u = new URL(url);
    const key = `${init.method || 'GET'} ${u.pathname}`;
    calls.push({ key, url: u, init, body: init.body ? JSON.parse(init.body) : undefined });
    for (const [prefix, handler] of Object.entries(routes)) {
      if (key.startsWith(prefix)) return handler(u, init);
    }
    throw new TypeError('network error');
  };
  fn.calls = calls;
  return fn;
}
const json = (obj, status = 200) => new Response(JSON.stringify(obj), { status, headers: { 'content-type': 'application/json' } });
const opts = (extra) => ({ baseUrl: 'http://srv', backoffBase: 5, backoffCap: 20, openTimeout: 500, ...extra });

test('ws: subscribe, snapshot, send with pending echo, resend with the same id after a drop, resume from cursor', async () => {
  const WS = fakeWs();
  const client = new ChatcastClient(opts({ WebSocket: WS, fetch: fakeFetch({ 'GET /healthz': () => json({}) }) }));
  const states = [];
  client.on('state', (s) => states.push(`${s.state}:${s.transport}`));
  const st = client.subscribe('c1');
  const ws = WS.all[0];
  assert.equal(ws.url, 'ws://srv/ws');
  ws.accept();
  assert.deepEqual(ws.sentOf('subscribe'), [{ type: 'subscribe', chat: 'c1', rid: 'sub:c1' }]);
  ws.pong();
  assert.equal(client.state, 'open');
  ws.push({ type: 'snapshot', chat: 'c1', messages: [], active: null });
  const sending = client.send('c1', 'hello');
  assert.equal(st.messages[0].status, 'pending');
  const frame = ws.sentOf('send')[0];
  assert.ok(frame.client_msg_id);
  ws.push({ type: 'message', chat: 'c1', message: { id: 'm1', role: 'user', content: 'hello', status: 'complete', client_msg_id: frame.client_msg_id } });
  ws.push({ type: 'start', chat: 'c1', gen: 'g1', message: 'a1', provider: 'demo', model: 'd' });
  ws.push({ type: 'delta', chat: 'c1', gen: 'g1', seq: 2, text: 'Hi ' });
  // The socket drops before the ack: the send goes again with the same client_msg_id.
  ws.serverClose(1011);
  await until(() => WS.all.length === 2);
  const ws2 = WS.all[1];
  ws2.accept();
  assert.deepEqual(ws2.sentOf('subscribe')[0].cursor, { gen: 'g1', seq: 2 });
  ws2.pong();
  const again = ws2.sentOf('send')[0];
  assert.equal(again.client_msg_id, frame.client_msg_id);
  ws2.push({ type: 'ack', rid: again.rid, message: { id: 'm1', role: 'user', content: 'hello', status: 'complete', client_msg_id: frame.client_msg_id }, gen: 'g1' });
  const ack = await sending;
  assert.equal(ack.gen, 'g1');
  ws2.push({ type: 'delta', chat: 'c1', gen: 'g1', seq: 2, text: 'Hi ' }); // replayed: ignored
  ws2.push({ type: 'delta', chat: 'c1', gen: 'g1', seq: 3, text: 'there' });
  assert.deepEqual(st.messages.map((m) => [m.id, m.content]), [['m1', 'hello'], ['a1', 'Hi there']]);
  assert.ok(states.includes('open:ws'));
  assert.ok(states.some((s) => s.startsWith('reconnecting')));
  client.close();
});

test('ws: non-idempotent request in flight fails with connection_lost; stop is resent', async () => {
  const WS = fakeWs();
  const client = new ChatcastClient(opts({ WebSocket: WS, fetch: fakeFetch({}) }));
  client.subscribe('c1');
  WS.all[0].accept();
  WS.all[0].pong();
  const regen = client.regenerate('c1');
  const stop = client.stop('c1', 'g9');
  WS.all[0].serverClose(1001);
  await assert.rejects(regen, { code: 'connection_lost', retryable: true });
  await until(() => WS.all.length === 2);
  WS.all[1].accept();
  WS.all[1].pong();
  const s = WS.all[1].sentOf('stop')[0];
  assert.equal(s.gen, 'g9');
  WS.all[1].push({ type: 'ack', rid: s.rid, status: 'stopped' });
  assert.equal((await stop).status, 'stopped');
  client.close();
});

test('close 1000 or 1008 after opening: no reconnect; 4001: unauthorized', async () => {
  for (const [code, state] of [[1000, 'closed'], [1008, 'closed'], [4001, 'unauthorized']]) {
    const WS = fakeWs();
    const client = new ChatcastClient(opts({ WebSocket: WS, fetch: fakeFetch({}) }));
    client.subscribe('c1');
    WS.all[0].accept();
    WS.all[0].pong();
    WS.all[0].serverClose(code);
    await tick(50);
    assert.equal(WS.all.length, 1);
    assert.equal(client.state, state);
    client.close();
  }
});

test('websocket blocked, server up: falls back to SSE; commands go by HTTP', async () => {
  const WS = fakeWs();
  let streamCtl;
  const fetch = fakeFetch({
    'GET /healthz': () => json({ ok: true }),
    'GET /api/chats/c1/events': () => new Response(new ReadableStream({ start(c) { streamCtl = c; } }),
      { headers: { 'content-type': 'text/event-stream' } }),
    'POST /api/chats/c1/messages': () => json({ message: { id: 'm1', role: 'user', content: 'yo', status: 'complete' }, gen: 'g1' }, 202),
    'POST /api/generations/g1/stop': () => json({ status: 'stopped' }),
  });
  const client = new ChatcastClient(opts({ WebSocket: WS, fetch }));
  const st = client.subscribe('c1');
  WS.all[0].refuse();
  await until(() => WS.all.length === 2);
  WS.all[1].accept();
  WS.all[1].serverClose(1000); // a proxy that accepts and hangs up at once
  await until(() => client.transportName === 'sse' && client.state === 'open');
  const enc = new TextEncoder();
  streamCtl.enqueue(enc.encode('retry: 2000\n\nevent: snapshot\ndata: {"type":"snapshot","chat":"c1","messages":[],"active":null}\n\n'));
  streamCtl.enqueue(enc.encode('event: start\ndata: {"type":"start","chat":"c1","gen":"g1","message":"a1","provider":"demo","model":"d"}\n\nevent: delta\nid: g1:1\ndata: {"type":"delta","chat":"c1","gen":"g1","seq":1,"text":"ok"}\n\n'));
  await until(() => st.get('a1')?.content === 'ok');
  const ack = await client.send('c1', 'yo');
  assert.equal(ack.gen, 'g1');
  const post = fetch.calls.find((c) => c.key === 'POST /api/chats/c1/messages');
  assert.equal(post.body.content, 'yo');
  assert.ok(post.body.client_msg_id);
  assert.equal((await client.stop('c1')).status, 'stopped');
  // The stream breaks: the client resumes with its cursor.
  streamCtl.error(new Error('reset'));
  await until(() => fetch.calls.filter((c) => c.key === 'GET /api/chats/c1/events').length === 2);
  const again = fetch.calls.filter((c) => c.key === 'GET /api/chats/c1/events')[1];
  assert.equal(again.url.searchParams.get('cursor'), 'g1:1');
  client.close();
});

test('server down: keeps retrying the WebSocket instead of falling back', async () => {
  const WS = fakeWs();
  const client = new ChatcastClient(opts({ WebSocket: WS, fetch: fakeFetch({}) }));
  client.subscribe('c1');
  for (let i = 0; i < 4; i++) {
    await until(() => WS.all.length === i + 1);
    WS.all[i].refuse();
  }
  await until(() => WS.all.length === 5);
  assert.equal(client.transportName, 'ws');
  client.close();
});

test('SSE blocked too: long-poll, passing the opaque cursor back unchanged', async () => {
  const WS = fakeWs();
  const polls = [];
  const fetch = fakeFetch({
    'GET /healthz': () => json({}),
    'GET /api/chats/c1/events': () => { throw new TypeError('blocked'); },
    'GET /api/chats/c1/poll': (u) => {
      polls.push(u.searchParams.get('cursor'));
      if (polls.length === 1) return json({ events: [{ type: 'snapshot', chat: 'c1', messages: [], active: { gen: 'g1', message: 'a1', seq: 1, content: 'a' } }], cursor: 'opaque-1' });
      if (polls.length === 2) return json({ events: [{ type: 'delta', chat: 'c1', gen: 'g1', seq: 2, text: 'b' }], cursor: 'opaque-2' });
      return new Promise(() => {}); // waits
    },
  });
  const client = new ChatcastClient(opts({ WebSocket: WS, fetch, transports: ['ws', 'sse', 'poll'] }));
  const st = client.subscribe('c1');
  WS.all[0].refuse();
  await until(() => WS.all.length === 2);
  WS.all[1].refuse();
  await until(() => polls.length >= 3, 3000);
  assert.equal(client.transportName, 'poll');
  assert.deepEqual(polls.slice(0, 3), [null, 'opaque-1', 'opaque-2']);
  assert.equal(st.get('a1').content, 'ab');
  client.close();
});

test('a mismatching done is repaired from the server row', async () => {
  const WS = fakeWs();
  const client = new ChatcastClient(opts({ WebSocket: WS, fetch: fakeFetch({}) }));
  const st = client.subscribe('c1');
  const integrity = [];
  client.on('integrity', (e) => integrity.push(e.ok));
  WS.all[0].accept();
  WS.all[0].pong();
  const ws = WS.all[0];
  ws.push({ type: 'snapshot', chat: 'c1', messages: [], active: { gen: 'g', message: 'a', seq: 1, content: 'abx' } });
  ws.push({ type: 'done', chat: 'c1', gen: 'g', seq: 2, status: 'completed', message: { id: 'a', content: 'abc', status: 'complete' },
    length: 3, sha256: 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad' });
  await until(() => integrity.length === 1);
  assert.deepEqual(integrity, [false]);
  assert.equal(st.get('a').content, 'abc');
  client.close();
});

test('a running answer that went silent and ended elsewhere is re-synced from a snapshot', async () => {
  const WS = fakeWs();
  const fetch = fakeFetch({ 'GET /api/generations/g1': () => json({ id: 'g1', status: 'interrupted' }) });
  const client = new ChatcastClient(opts({ WebSocket: WS, fetch, stallCheck: 60 }));
  client.subscribe('c1');
  const ws = WS.all[0];
  ws.accept();
  ws.pong();
  ws.push({ type: 'snapshot', chat: 'c1', messages: [], active: { gen: 'g1', message: 'a1', seq: 3, content: 'abc' } });
  await until(() => fetch.calls.some((c) => c.key === 'GET /api/generations/g1'));
  await until(() => ws.sentOf('subscribe').length === 2);
  assert.equal(ws.sentOf('subscribe')[1].cursor, undefined);
  assert.equal(ws.sentOf('unsubscribe').length, 1);
  client.close();
});

test('a done whose reasoning does not match is repaired from the server row', async () => {
  const WS = fakeWs();
  const client = new ChatcastClient(opts({ WebSocket: WS, fetch: fakeFetch({}) }));
  const st = client.subscribe('c1');
  const integrity = [];
  client.on('integrity', (e) => integrity.push([e.ok, e.text, e.reasoning]));
  WS.all[0].accept();
  WS.all[0].pong();
  const ws = WS.all[0];
  ws.push({ type: 'snapshot', chat: 'c1', messages: [], active: { gen: 'g', message: 'a', seq: 1, content: '', reasoning: 'abx' } });
  ws.push({ type: 'delta', chat: 'c1', gen: 'g', seq: 2, part: 'text', text: 'abc' });
  const abc = 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad';
  ws.push({ type: 'done', chat: 'c1', gen: 'g', seq: 3, status: 'completed', message: { id: 'a', content: 'abc', reasoning: 'abc', status: 'complete' },
    length: 3, sha256: abc, reasoning_length: 3, reasoning_sha256: abc });
  await until(() => integrity.length === 1);
  assert.deepEqual(integrity, [[false, true, false]]);
  assert.equal(st.get('a').reasoning, 'abc');
  assert.equal(st.get('a').content, 'abc');
  client.close();
});

test('an HTTP error without a JSON body maps to one code by status, wherever it is read', async () => {
  const { httpError } = await import('../transports.js');
  const cases = [[401, 'unauthorized', false], [404, 'not_found', false], [429, 'rate_limited', true],
    [400, 'bad_request', false], [403, 'bad_request', false], [502, 'internal', true]];
  for (const [status, code, retryable] of cases) {
    const err = httpError(status);
    assert.deepEqual([err.code, err.retryable, err.status], [code, retryable, status]);
  }
  const fetch = fakeFetch({ 'GET /api/chats': () => new Response('<html>no</html>', { status: 401 }) });
  const client = new ChatcastClient(opts({ WebSocket: fakeWs(), fetch }));
  await assert.rejects(client.api('GET', '/api/chats'), (err) => err.code === 'unauthorized');
  client.close();
});
test('malformed frames are skipped, announced and reported (rate-limited); the stream goes on', async () => {
  const WS = fakeWs();
  const fetch = fakeFetch({ 'GET /healthz': () => json({}), 'POST /api/client-errors': () => json({}, 202) });
  const client = new ChatcastClient(opts({ WebSocket: WS, fetch, reportsPerMinute: 3 }));
  const skipped = [];
  client.on('malformed', (m) => skipped.push(m.why));
  const st = client.subscribe('c1');
  const ws = WS.all[0];
  ws.accept();
  ws.pong();
  ws.push({ type: 'snapshot', chat: 'c1', messages: [], active: null });
  ws.push({ type: 'start', chat: 'c1', gen: 'g1', message: 'a1' });
  ws.push({ type: 'delta', chat: 'c1', gen: 'g1', seq: 1, text: 'one ' });
  ws.onmessage({ data: '{"type":"delta", "chat": "c1", "gen": "g1", "seq": 2, "text": "tw' }); // cut short
  ws.push({ type: 'delta', chat: 'c1', gen: 'g1', seq: 'x', text: 'bad seq' });
  ws.push({ type: 'delta', chat: 'c1', gen: 'g1', seq: 3, text: { not: 'text' } });
  ws.push({ type: 'delta', chat: 'c1', gen: 'g1', seq: 4, text: 'two' });
  ws.push({ type: 'future_event', chat: 'c1', what: 'ignored, not malformed' });
  ws.push({ type: 'done', chat: 'c1', gen: 'g1', seq: 5, status: 'completed', message: { id: 'a1', status: 'complete' } });
  assert.equal(st.messages[0].content, 'one two');
  assert.equal(st.messages[0].status, 'complete');
  assert.deepEqual(skipped, ['not a JSON event', 'delta without an integer seq', 'delta text is not a string']);
  await tick(5);
  const reports = fetch.calls.filter((c) => c.key === 'POST /api/client-errors');
  assert.equal(reports.length, 3);
  assert.deepEqual(reports.map((r) => r.body.kind), ['malformed_frame', 'malformed_frame', 'malformed_frame']);
  assert.equal(reports[1].body.chat_id, 'c1');
  assert.match(reports[1].body.detail.frame, /"seq":"x"/);
  // The same problem again within the minute is not reported twice; the limit holds.
  assert.equal(client.report('malformed_frame', 'delta without an integer seq'), false);
  assert.equal(client.report('render_error', 'something else'), false);
  client.close();
});

test('reports can be turned off', async () => {
  const fetch = fakeFetch({});
  const client = new ChatcastClient(opts({ WebSocket: fakeWs(), fetch, errorReports: false }));
  assert.equal(client.report('render_error', 'x'), false);
  await tick(2);
  assert.equal(fetch.calls.length, 0);
});

test('SSE: a stream silent past its idle timeout is given up and reopened from the cursor', async () => {
  const WS = fakeWs();
  const enc = new TextEncoder();
  const fetch = fakeFetch({
    'GET /healthz': () => json({}),
    'GET /api/chats/c1/events': (u, init) => new Response(new ReadableStream({
      start(c) {
        c.enqueue(enc.encode('event: snapshot\ndata: {"type":"snapshot","chat":"c1","messages":[],"active":{"gen":"g1","message":"a1","seq":1,"content":"a"}}\n\n'));
        // then silence, until aborted, as a real fetch's body is
        init.signal.addEventListener('abort', () => c.error(new DOMException('aborted', 'AbortError')));
      },
    }), { headers: { 'content-type': 'text/event-stream' } }),
  });
  const client = new ChatcastClient(opts({ WebSocket: WS, fetch, transports: ['ws', 'sse'], sseIdleTimeout: 100 }));
  const st = client.subscribe('c1');
  WS.all[0].refuse();
  await until(() => WS.all.length === 2);
  WS.all[1].refuse();
  const streams = () => fetch.calls.filter((c) => c.key === 'GET /api/chats/c1/events');
  await until(() => streams().length === 2, 3000);
  assert.equal(st.get('a1').content, 'a');
  const [first, again] = streams();
  assert.equal(first.init.headers.Accept, 'text/event-stream');
  assert.equal(first.init.credentials, 'same-origin');
  assert.equal(again.url.searchParams.get('cursor'), 'g1:1');
  client.close();
});
