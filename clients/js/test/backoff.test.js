import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fullJitter, reconnectPlan, retryAfterFromReason } from '../backoff.js';

test('full jitter stays within [0, min(cap, base·2^n))', () => {
  for (let n = 0; n < 12; n++) {
    const ceiling = Math.min(15000, 500 * 2 ** n);
    assert.equal(fullJitter(n, { random: () => 0 }), 0);
    assert.equal(fullJitter(n, { random: () => 0.999999 }), Math.floor(0.999999 * ceiling));
    for (let k = 0; k < 50; k++) {
      const d = fullJitter(n);
      assert.ok(d >= 0 && d < ceiling);
    }
  }
  assert.ok(fullJitter(1000, { random: () => 0.5 }) <= 15000);
});

const plan = (code, extra = {}) => reconnectPlan({ code, established: true, attempt: 3, random: () => 0.5, ...extra });

test('close-code table', () => {
  assert.equal(plan(1000).reconnect, false);
  assert.equal(plan(1008).reconnect, false);
  assert.equal(plan(1009).reconnect, false);
  assert.equal(plan(4001).reconnect, false);
  const away = plan(1001);
  assert.ok(away.reconnect && away.delay < 100 && away.resetAttempts);
  const slow = plan(4008);
  assert.ok(slow.reconnect && slow.delay < 100 && slow.resetAttempts);
  const internal = plan(1011);
  assert.ok(internal.reconnect && !internal.resetAttempts);
  assert.equal(internal.delay, Math.floor(0.5 * 4000));
  assert.ok(plan(1006).reconnect);
  const limited = plan(4029, { reason: '{"retry_after": 7}' });
  assert.ok(limited.reconnect && limited.delay >= 7000 && limited.delay < 7500);
  assert.ok(plan(4029).delay >= 5000);
});

test('a connection that never opened is retried with backoff, except unauthorized', () => {
  assert.ok(plan(1000, { established: false }).reconnect);
  assert.ok(plan(1006, { established: false }).reconnect);
  assert.equal(plan(4001, { established: false }).reconnect, false);
});

test('retry_after from a close reason', () => {
  assert.equal(retryAfterFromReason('{"retry_after": 3}'), 3);
  assert.equal(retryAfterFromReason('retry_after=2.5'), 2.5);
  assert.equal(retryAfterFromReason('12'), 12);
  assert.equal(retryAfterFromReason(''), null);
  assert.equal(retryAfterFromReason('rate limited'), null);
});
