import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SseParser, codePointLength, encodeFrame, decodeFrame, FrameTooLarge } from '../framing.js';
import { formatCursor, parseCursor, covers } from '../cursor.js';

test('SSE parser: events split across arbitrary chunks', () => {
  const stream = 'retry: 2000\n\n: heartbeat\n\nevent: delta\nid: g1:3\ndata: {"type":"delta","seq":3}\n\n' +
    'event: done\r\nid: g1:4\r\ndata: {"type":"done",\r\ndata: "seq":4}\r\n\r\n';
  for (let size = 1; size <= stream.length; size++) {
    const p = new SseParser();
    const out = [];
    for (let i = 0; i < stream.length; i += size) out.push(...p.push(stream.slice(i, i + size)));
    assert.equal(out.length, 2, `chunk size ${size}`);
    assert.deepEqual(out[0], { event: 'delta', id: 'g1:3', data: '{"type":"delta","seq":3}' });
    assert.deepEqual(out[1], { event: 'done', id: 'g1:4', data: '{"type":"done",\n"seq":4}' });
    assert.equal(p.retry, 2000);
    assert.equal(p.lastEventId, 'g1:4');
  }
});

test('SSE parser: BOM, bare CR line ends, no event name, field without colon', () => {
  const p = new SseParser();
  const out = p.push('\ufeffdata: a\rdata\r\rdata:b\n');
  assert.deepEqual(out, [{ event: 'message', data: 'a\n', id: null }]);
  assert.deepEqual(p.push('\n'), [{ event: 'message', data: 'b', id: null }]);
});

test('SSE parser: a message without data is not dispatched', () => {
  const p = new SseParser();
  assert.deepEqual(p.push('event: snapshot\n\n'), []);
});

test('code points, not UTF-16 units', () => {
  assert.equal(codePointLength(''), 0);
  assert.equal(codePointLength('héllo'), 5);
  assert.equal(codePointLength('👍🏽 ok'), 5);
  assert.equal(codePointLength('𝔘𝔫𝔦'), 3);
});

test('frames: encode refuses what the server would close for; decode is forgiving', () => {
  assert.equal(encodeFrame({ type: 'ping' }), '{"type":"ping"}');
  assert.throws(() => encodeFrame({ type: 'send', content: 'é'.repeat(40000) }), FrameTooLarge);
  assert.doesNotThrow(() => encodeFrame({ type: 'send', content: 'x'.repeat(30000) }));
  assert.equal(decodeFrame('nope'), null);
  assert.equal(decodeFrame('[1]'), null);
  assert.equal(decodeFrame('{"x":1}'), null);
  assert.deepEqual(decodeFrame('{"type":"pong"}'), { type: 'pong' });
});

test('cursor format and parse', () => {
  assert.equal(formatCursor({ gen: 'g1', seq: 7 }), 'g1:7');
  assert.equal(formatCursor(null), '');
  assert.deepEqual(parseCursor('a:b:12'), { gen: 'a:b', seq: 12 });
  assert.equal(parseCursor('g1'), null);
  assert.equal(parseCursor(':3'), null);
  assert.equal(parseCursor('g1:x'), null);
  assert.equal(parseCursor(undefined), null);
  assert.ok(covers({ gen: 'g', seq: 5 }, 'g', 5));
  assert.ok(!covers({ gen: 'g', seq: 5 }, 'g', 6));
  assert.ok(!covers({ gen: 'g', seq: 5 }, 'h', 1));
});
