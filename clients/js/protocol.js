/**
 * chatcast wire protocol v1 — constants mirrored from core/protocol.py and core/codes.py.
 * Pure data. tests/test_js_mirror.py checks that this file and the server agree, so keep the
 * one-entry-per-line layout of the frozen tables below.
 * @module chatcast/protocol
 */

export const VERSION = 1;
export const MAX_FRAME_BYTES = 64 * 1024;

/** Client → server request types. */
export const REQUEST_TYPES = Object.freeze([
  'subscribe',
  'unsubscribe',
  'send',
  'stop',
  'regenerate',
  'continue',
  'ping',
]);

/** Server → client event types. */
export const EVENT_TYPES = Object.freeze([
  'ack',
  'error',
  'snapshot',
  'message',
  'start',
  'delta',
  'done',
  'saving',
  'pong',
]);

/** The parts of an answer a `delta` carries (its `part` field): answer text, or reasoning. */
export const PARTS = Object.freeze([
  'text',
  'reasoning',
]);

/** Terminal statuses of a generation (the `status` of a `done` event). */
export const DONE_STATUSES = Object.freeze(['completed', 'stopped', 'error', 'interrupted']);

/** WebSocket close codes the server uses. */
export const Close = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  POLICY: 1008,
  TOO_BIG: 1009,
  INTERNAL: 1011,
  UNAUTHORIZED: 4001,
  SLOW_CONSUMER: 4008,
  RATE_LIMITED: 4029,
});

/** Whether a client should reconnect (with backoff) and resume after each close code. */
export const CLOSE_RETRYABLE = Object.freeze({
  [Close.NORMAL]: false,
  [Close.GOING_AWAY]: true,
  [Close.POLICY]: false,
  [Close.TOO_BIG]: false,
  [Close.INTERNAL]: true,
  [Close.UNAUTHORIZED]: false,
  [Close.SLOW_CONSUMER]: true,
  [Close.RATE_LIMITED]: true,
});

/** Error codes carried by `error` frames and JSON error bodies. */
export const Code = Object.freeze({
  BAD_REQUEST: 'bad_request',
  UNKNOWN_TYPE: 'unknown_type',
  NOT_FOUND: 'not_found',
  UNAUTHORIZED: 'unauthorized',
  RATE_LIMITED: 'rate_limited',
  TOO_MANY_GENERATIONS: 'too_many_generations',
  BUSY: 'busy',
  TOO_LARGE: 'too_large',
  PROVIDER_ERROR: 'provider_error',
  PROVIDER_UNAVAILABLE: 'provider_unavailable',
  STORAGE_UNAVAILABLE: 'storage_unavailable',
  INTERNAL: 'internal',
});

/** HTTP status and retryability of each error code. */
export const CODES = Object.freeze({
  [Code.BAD_REQUEST]: { httpStatus: 400, retryable: false },
  [Code.UNKNOWN_TYPE]: { httpStatus: 400, retryable: false },
  [Code.NOT_FOUND]: { httpStatus: 404, retryable: false },
  [Code.UNAUTHORIZED]: { httpStatus: 401, retryable: false },
  [Code.RATE_LIMITED]: { httpStatus: 429, retryable: true },
  [Code.TOO_MANY_GENERATIONS]: { httpStatus: 429, retryable: true },
  [Code.BUSY]: { httpStatus: 409, retryable: true },
  [Code.TOO_LARGE]: { httpStatus: 413, retryable: false },
  [Code.PROVIDER_ERROR]: { httpStatus: 502, retryable: false },
  [Code.PROVIDER_UNAVAILABLE]: { httpStatus: 503, retryable: true },
  [Code.STORAGE_UNAVAILABLE]: { httpStatus: 503, retryable: true },
  [Code.INTERNAL]: { httpStatus: 500, retryable: true },
});

/**
 * Codes the client itself produces (never sent by the server): the connection dropped before
 * a non-idempotent request was acknowledged, or the network failed.
 */
export const LocalCode = Object.freeze({
  CONNECTION_LOST: 'connection_lost',
  NETWORK: 'network',
  CLOSED: 'closed',
});
