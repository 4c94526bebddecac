/**
 * Reconnect timing: full-jitter exponential backoff and the close-code policy.
 * Pure functions, no I/O.
 * @module chatcast/backoff
 */

import { Close, CLOSE_RETRYABLE } from './protocol.js';

/**
 * Full jitter: a uniformly random delay in [0, min(cap, base · 2^attempt)).
 * Spreads reconnecting clients out so a restarted server is not hit by all of them at once.
 * @param {number} attempt 0 for the first retry
 * @param {{base?: number, cap?: number, random?: () => number}} [opts] milliseconds
 * @returns {number} milliseconds
 */
export function fullJitter(attempt, { base = 500, cap = 15000, random = Math.random } = {}) {
  const ceiling = Math.min(cap, base * 2 ** Math.max(0, Math.min(attempt, 30)));
  return Math.floor(random() * ceiling);
}

/**
 * `retry_after` (seconds) from a 4029 close reason: JSON `{"retry_after": n}`,
 * `retry_after=n`, or a bare number. Null when absent.
 * @param {string | undefined} reason
 * @returns {number | null}
 */
export function retryAfterFromReason(reason) {
  if (!reason) return null;
  try {
    const obj = JSON.parse(reason);
    if (typeof obj === 'number') return obj;
    if (obj && typeof obj.retry_after === 'number') return obj.retry_after;
  } catch { /* not JSON */ }
  const m = /(?:retry[_-]?after\D{0,3})?(\d+(?:\.\d+)?)/i.exec(reason);
  return m ? Number(m[1]) : null;
}

/**
 * @typedef {object} ReconnectPlan
 * @property {boolean} reconnect whether to reconnect at all
 * @property {number} delay milliseconds to wait first
 * @property {boolean} resetAttempts whether the backoff sequence starts over
 * @property {string} why short explanation (for logs and the UI)
 */

/**
 * What to do after the connection closed with `code`.
 * A connection that closed before it was ever established is always retried with backoff
 * (that is how a blocked WebSocket looks), except 4001 (re-authenticate first).
 * @param {{code: number, reason?: string, established: boolean, attempt: number,
 *          base?: number, cap?: number, random?: () => number}} info
 * @returns {ReconnectPlan}
 */
export function reconnectPlan({ code, reason, established, attempt, base, cap, random = Math.random }) {
  const backoff = () => fullJitter(attempt, { base, cap, random });
  if (code === Close.UNAUTHORIZED) {
    return { reconnect: false, delay: 0, resetAttempts: false, why: 'unauthorized' };
  }
  if (!established) {
    return { reconnect: true, delay: backoff(), resetAttempts: false, why: 'connect failed' };
  }
  const known = Object.prototype.hasOwnProperty.call(CLOSE_RETRYABLE, code);
  if (known && !CLOSE_RETRYABLE[code]) {
    return { reconnect: false, delay: 0, resetAttempts: false, why: `closed (${code})` };
  }
  switch (code) {
    case Close.GOING_AWAY: // server shutting down: another process (or the restarted one) is ready
      return { reconnect: true, delay: Math.floor(random() * 100), resetAttempts: true, why: 'server going away' };
    case Close.SLOW_CONSUMER: // resume from the cursor right away
      return { reconnect: true, delay: Math.floor(random() * 100), resetAttempts: true, why: 'slow consumer' };
    case Close.RATE_LIMITED: {
      const after = retryAfterFromReason(reason);
      const ms = (after ?? 5) * 1000;
      return { reconnect: true, delay: ms + Math.floor(random() * 500), resetAttempts: false, why: 'rate limited' };
    }
    default: // 1011, 1006 (abnormal), anything unknown
      return { reconnect: true, delay: backoff(), resetAttempts: false, why: `connection lost (${code})` };
  }
}
