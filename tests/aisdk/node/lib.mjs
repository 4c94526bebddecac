// Shared by the AI SDK tests: a Chat as the `ai` package's own tests make one (AbstractChat
// with a small state), a browser-like cookie jar, and chatcast's REST API for checks.
// Run through pytest (tests/aisdk/test_node.py), which starts chatcast and passes its URL.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';

export const BASE = process.env.CHATCAST_URL;
assert.ok(BASE, 'CHATCAST_URL is not set: run these tests through pytest tests/aisdk');
export const API = `${BASE}/api/ai/chat`;
export const WS_URL = `${BASE.replace(/^http/, 'ws')}/api/ai/ws`;

/** One browser: keeps chatcast's session cookie like a browser does. */
export class Browser {
  constructor() {
    this.cookies = new Map();
    this.fetch = this.fetch.bind(this);
  }

  header() {
    return [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ');
  }

  async fetch(url, init = {}) {
    const headers = new Headers(init.headers);
    if (this.cookies.size) headers.set('cookie', this.header());
    const response = await fetch(url, { ...init, headers });
    for (const line of response.headers.getSetCookie()) {
      const [pair] = line.split(';');
      const at = pair.indexOf('=');
      this.cookies.set(pair.slice(0, at).trim(), pair.slice(at + 1).trim());
    }
    return response;
  }

  async json(path, init = {}) {
    const response = await this.fetch(`${BASE}${path}`, init);
    const text = await response.text();
    assert.ok(response.ok, `${init.method ?? 'GET'} ${path}: ${response.status} ${text}`);
    return JSON.parse(text);
  }

  /** The chat's messages as chatcast stores them (SQL). */
  async stored(chatId) {
    return (await this.json(`/api/chats/${chatId}/messages?limit=200`)).messages;
  }

  async generation(gen) {
    return this.json(`/api/generations/${gen}`);
  }

  /** Wait until the generation is over (its terminal status). */
  async settled(gen, timeoutMs = 20_000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const g = await this.generation(gen);
      if (g.status !== 'active') return g;
      assert.ok(Date.now() < deadline, `generation ${gen} still active`);
      await sleep(50);
    }
  }

  async stop(chatId) {
    return this.json(`/api/ai/chat/${encodeURIComponent(chatId)}/stop`, { method: 'POST' });
  }

  async uiMessages(chatId) {
    return (await this.json(`/api/ai/chat/${encodeURIComponent(chatId)}/messages`)).messages;
  }

  /** A chatcast chat made through REST (to choose its provider). */
  async newChat(body = {}) {
    return (await this.json('/api/chats', {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
    })).id;
  }
}

/** The chat state the `ai` package's own tests use, minus React. */
class State {
  constructor(messages = []) {
    this.messages = messages;
    this.status = 'ready';
    this.error = undefined;
  }

  pushMessage(message) { this.messages = this.messages.concat(message); }

  popMessage() { this.messages = this.messages.slice(0, -1); }

  replaceMessage(index, message) {
    this.messages = [...this.messages.slice(0, index), message, ...this.messages.slice(index + 1)];
  }

  snapshot(value) { return structuredClone(value); }
}

/** `new (testChat(ai))({id, transport, messages})`: a Chat of that `ai` version. */
export function testChat(ai) {
  return class TestChat extends ai.AbstractChat {
    constructor({ messages, ...init }) {
      const errors = [];
      super({ ...init, state: new State(messages), onError: (e) => errors.push(e) });
      this.errors = errors;
    }
  };
}

export function textOf(message) {
  return message.parts.filter((p) => p.type === 'text').map((p) => p.text).join('');
}

export function reasoningOf(message) {
  return message.parts.filter((p) => p.type === 'reasoning').map((p) => p.text).join('');
}

/**
 * Send `text` and wait for its answer, which both transports must end `ready`: the answer
 * shows the reasoning and text the server stored for it (and it did reason).
 */
export async function askWithReasoning(browser, chat, id, text) {
  await chat.sendMessage({ text });
  assert.equal(chat.status, 'ready', chat.error?.message);
  const answer = chat.messages.at(-1);
  const [, stored] = await browser.stored(id);
  assert.ok(reasoningOf(answer).length > 0);
  assert.equal(reasoningOf(answer), stored.reasoning);
  assert.equal(textOf(answer), stored.content);
  return { answer, stored };
}

export function assistants(chat) {
  return chat.messages.filter((m) => m.role === 'assistant');
}

/** Wait until `predicate()` holds (checked every 10 ms). */
export async function until(predicate, what, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** Wait until the chat shows some text of a new answer (one not there when called). */
export async function streaming(chat) {
  const known = new Set(chat.messages.map((m) => m.id));
  await until(() => {
    const last = chat.messages.at(-1);
    return last?.role === 'assistant' && !known.has(last.id) && textOf(last).length > 0;
  }, 'answer text');
  return chat.messages.at(-1);
}
