import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { ChatState, isThinking, thoughtSeconds, verifyContent } from '../assembler.js';
import { sha256Hex, sha256Bytes } from '../sha256.js';

const C = 'c1';
const user = (id, content, extra = {}) => ({ id, chat: C, role: 'user', content, status: 'complete', gen: null, ...extra });
const hex = (s) => createHash('sha256').update(s, 'utf8').digest('hex');
const done = (gen, seq, msg, content, status = 'completed') => ({
  type: 'done', chat: C, gen, seq, status, message: { ...msg, content, status: status === 'completed' ? 'complete' : status },
  length: [...content].length, sha256: hex(content),
});

test('snapshot with an active generation, then deltas, duplicates ignored, done verified', async () => {
  const s = new ChatState(C);
  s.apply({ type: 'snapshot', chat: C, messages: [user('m1', 'hi'), { id: 'a1', chat: C, role: 'assistant', content: 'Hel', status: 'streaming', gen: 'g1' }],
    active: { gen: 'g1', message: 'a1', seq: 2, content: 'Hel' } });
  assert.deepEqual(s.cursor, { gen: 'g1', seq: 2 });
  assert.equal(s.apply({ type: 'delta', chat: C, gen: 'g1', seq: 2, text: 'l' }).changed, false); // at the cursor
  s.apply({ type: 'delta', chat: C, gen: 'g1', seq: 4, text: 'lo' });
  assert.equal(s.apply({ type: 'delta', chat: C, gen: 'g1', seq: 3, text: 'XX' }).changed, false);
  s.apply({ type: 'delta', chat: C, gen: 'g1', seq: 5, text: ' 👋' });
  assert.equal(s.get('a1').content, 'Hello 👋');
  const { effects } = s.apply(done('g1', 6, { id: 'a1', chat: C, role: 'assistant', gen: 'g1' }, 'Hello 👋'));
  assert.equal(effects.length, 1);
  const v = effects[0];
  assert.equal(v.type, 'verify');
  assert.ok(await verifyContent(v.content, v.length, v.sha256, sha256Hex));
  assert.equal(s.get('a1').status, 'complete');
  assert.deepEqual(s.cursor, { gen: 'g1', seq: 6 });
  assert.equal(s.active, null);
  // A replayed done and late deltas change nothing.
  assert.equal(s.apply(done('g1', 6, { id: 'a1' }, 'Hello 👋')).changed, false);
  assert.equal(s.apply({ type: 'delta', chat: C, gen: 'g1', seq: 7, text: '!' }).changed, false);
});

test('verification catches a wrong assembly; replaceContent repairs it', async () => {
  const s = new ChatState(C);
  s.apply({ type: 'snapshot', chat: C, messages: [], active: null });
  s.apply({ type: 'start', chat: C, gen: 'g', message: 'a', provider: 'demo', model: 'demo-1' });
  s.apply({ type: 'delta', chat: C, gen: 'g', seq: 1, text: 'abc' });
  const { effects: [v] } = s.apply(done('g', 2, { id: 'a' }, 'abcd'));
  assert.equal(await verifyContent(v.content, v.length, v.sha256, sha256Hex), false);
  assert.equal(await verifyContent('abce', 4, hex('abcd'), sha256Hex), false);
  assert.ok(s.replaceContent('a', v.serverContent, v.content));
  assert.equal(s.get('a').content, 'abcd');
  assert.equal(s.replaceContent('a', 'zzz', 'not the current text'), false);
});

test('continue: start on an existing message keeps its text and appends', () => {
  const s = new ChatState(C);
  s.apply({ type: 'snapshot', chat: C, messages: [user('m1', 'q'), { id: 'a1', chat: C, role: 'assistant', content: 'partial', status: 'stopped', gen: 'g1' }], active: null });
  assert.equal(s.cursor, null);
  s.apply({ type: 'start', chat: C, gen: 'g2', message: 'a1', provider: 'demo', model: 'm' });
  assert.equal(s.get('a1').status, 'streaming');
  s.apply({ type: 'delta', chat: C, gen: 'g2', seq: 1, text: ' and more' });
  assert.equal(s.get('a1').content, 'partial and more');
  assert.deepEqual(s.cursor, { gen: 'g2', seq: 1 });
  // A delta of the finished generation is ignored.
  assert.equal(s.apply({ type: 'delta', chat: C, gen: 'g1', seq: 99, text: 'x' }).changed, false);
});

test('delta of an unknown generation asks for a resync', () => {
  const s = new ChatState(C);
  const { changed, effects } = s.apply({ type: 'delta', chat: C, gen: 'gx', seq: 1, text: 'x' });
  assert.equal(changed, false);
  assert.deepEqual(effects.map((e) => e.type), ['resync']);
});

test('optimistic message is replaced by the server row, also after a snapshot', () => {
  const s = new ChatState(C);
  s.apply({ type: 'snapshot', chat: C, messages: [], active: null });
  s.addPending('cm1', 'hello');
  s.addPending('cm2', 'second');
  assert.equal(s.messages.length, 2);
  s.apply({ type: 'message', chat: C, message: user('m1', 'hello', { client_msg_id: 'cm1' }) });
  assert.deepEqual(s.messages.map((m) => m.id), ['m1', 'local:cm2']);
  s.apply({ type: 'snapshot', chat: C, messages: [user('m1', 'hello', { client_msg_id: 'cm1' })], active: null });
  assert.deepEqual(s.messages.map((m) => m.id), ['m1', 'local:cm2']);
  s.markPending('cm2', 'failed');
  assert.equal(s.get('local:cm2').status, 'failed');
  s.dropPending('cm2');
  assert.deepEqual(s.messages.map((m) => m.id), ['m1']);
});

test('history pages are prepended once and survive a snapshot that continues them', () => {
  const s = new ChatState(C);
  s.apply({ type: 'snapshot', chat: C, messages: [user('m3', 'c'), user('m4', 'd')], active: null });
  assert.equal(s.oldestId(), 'm3');
  s.prependHistory([user('m1', 'a'), user('m2', 'b'), user('m3', 'c')], false);
  assert.deepEqual(s.messages.map((m) => m.id), ['m1', 'm2', 'm3', 'm4']);
  assert.equal(s.hasMore, false);
  s.apply({ type: 'snapshot', chat: C, messages: [user('m3', 'c'), user('m4', 'd'), user('m5', 'e')], active: null });
  assert.deepEqual(s.messages.map((m) => m.id), ['m1', 'm2', 'm3', 'm4', 'm5']);
});

test('unchanged messages keep their identity (cheap re-render)', () => {
  const s = new ChatState(C);
  s.apply({ type: 'snapshot', chat: C, messages: [user('m1', 'q')], active: null });
  const m1 = s.get('m1');
  const before = s.messages;
  s.apply({ type: 'start', chat: C, gen: 'g', message: 'a', provider: 'p', model: 'm' });
  s.apply({ type: 'delta', chat: C, gen: 'g', seq: 1, text: 'x' });
  assert.equal(s.get('m1'), m1);
  assert.notEqual(s.messages, before);
});

test('done for a generation never seen takes the server row', () => {
  const s = new ChatState(C);
  s.apply({ type: 'snapshot', chat: C, messages: [{ id: 'a', chat: C, role: 'assistant', content: 'par', status: 'streaming', gen: 'g' }], active: null });
  s.gens.delete('g');
  const { effects } = s.apply(done('g', 4, { id: 'a' }, 'partial', 'interrupted'));
  assert.equal(effects.length, 0);
  assert.equal(s.get('a').content, 'partial');
  assert.equal(s.get('a').status, 'interrupted');
});

test('pure-JS SHA-256 matches the platform', async () => {
  for (const s of ['', 'abc', 'é👍🏽', 'x'.repeat(55), 'x'.repeat(56), 'y'.repeat(64), 'z'.repeat(1000)]) {
    const js = Buffer.from(sha256Bytes(new TextEncoder().encode(s))).toString('hex');
    assert.equal(js, hex(s));
    assert.equal(await sha256Hex(s), hex(s));
  }
});

test('reasoning deltas build `reasoning`, never `content`; text ends the reasoning; done verifies both', async () => {
  const s = new ChatState(C);
  s.apply({ type: 'snapshot', chat: C, messages: [user('m1', 'hi')], active: null });
  s.apply({ type: 'start', chat: C, gen: 'g', message: 'a', provider: 'demo', model: 'demo-thinking' });
  s.apply({ type: 'delta', chat: C, gen: 'g', seq: 1, part: 'reasoning', text: '', reasoning: 'Let me ' });
  s.apply({ type: 'delta', chat: C, gen: 'g', seq: 2, part: 'reasoning', text: '', reasoning: 'think 🤔' });
  let m = s.get('a');
  assert.equal(m.reasoning, 'Let me think 🤔');
  assert.equal(m.content, '');
  assert.ok(isThinking(m) && m.reasoning_started_at && !m.reasoning_ended_at);
  // A duplicate reasoning delta is not applied twice.
  assert.equal(s.apply({ type: 'delta', chat: C, gen: 'g', seq: 2, part: 'reasoning', text: '', reasoning: 'think 🤔' }).changed, false);
  s.apply({ type: 'delta', chat: C, gen: 'g', seq: 3, part: 'text', text: 'Yes.' });
  m = s.get('a');
  assert.equal(m.content, 'Yes.');
  assert.ok(!isThinking(m) && m.reasoning_ended_at);
  const final = { ...done('g', 4, { id: 'a', reasoning: 'Let me think 🤔', reasoning_started_at: '2026-01-01T00:00:00Z', reasoning_ended_at: '2026-01-01T00:00:12.5Z' }, 'Yes.'),
    reasoning_length: [...'Let me think 🤔'].length, reasoning_sha256: hex('Let me think 🤔') };
  const { effects: [v] } = s.apply(final);
  assert.ok(await verifyContent(v.content, v.length, v.sha256, sha256Hex));
  assert.ok(await verifyContent(v.reasoning, v.reasoningLength, v.reasoningSha256, sha256Hex));
  assert.equal(thoughtSeconds(s.get('a')), 12.5);
  assert.equal(s.get('a').reasoning, 'Let me think 🤔');
});

test('a client of protocol v1 fields only still assembles the answer: reasoning deltas have empty text', () => {
  const s = new ChatState(C);
  s.apply({ type: 'snapshot', chat: C, messages: [], active: { gen: 'g', message: 'a', seq: 0, content: '', reasoning: 'so far ' } });
  assert.equal(s.get('a').reasoning, 'so far ');
  s.apply({ type: 'delta', chat: C, gen: 'g', seq: 1, part: 'reasoning', text: '', reasoning: 'more' });
  s.apply({ type: 'delta', chat: C, gen: 'g', seq: 2, text: 'Old-style delta' }); // no part: text
  assert.equal(s.get('a').content, 'Old-style delta');
  assert.equal(s.get('a').reasoning, 'so far more');
  assert.deepEqual(s.cursor, { gen: 'g', seq: 2 });
});

test('replaceReasoning repairs a reasoning that failed verification', () => {
  const s = new ChatState(C);
  s.apply({ type: 'snapshot', chat: C, messages: [{ id: 'a', chat: C, role: 'assistant', content: 'x', reasoning: 'bad', status: 'complete', gen: 'g' }], active: null });
  assert.equal(s.replaceReasoning('a', 'good', 'other'), false);
  assert.equal(s.replaceReasoning('a', 'good', 'bad'), true);
  assert.equal(s.get('a').reasoning, 'good');
  assert.equal(thoughtSeconds(s.get('a')), null);
});
