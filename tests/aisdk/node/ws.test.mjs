// WebSocketChatTransport of the real `ai` 7.x against chatcast's /api/ai/ws.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import * as ai from 'ai7';
import WebSocket from 'ws';

import {
  Browser, WS_URL, askWithReasoning, assistants, streaming, testChat, textOf, until,
} from './lib.mjs';

const Chat = testChat(ai);
const REASONING_MODEL = process.env.CHATCAST_REASONING_MODEL;

/** Node 20 has no global WebSocket: the `ws` package's, sending the browser's cookie. */
function socketOf(browser) {
  return class BrowserWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { headers: { cookie: browser.header() } });
    }
  };
}

function open(browser, id, messages = []) {
  const transport = new ai.WebSocketChatTransport({ url: WS_URL, webSocket: socketOf(browser) });
  const chat = new Chat({ id, transport, messages });
  return chat;
}

async function signedIn() {
  const browser = new Browser();
  await browser.json('/api/chats'); // the first response sets the session cookie
  return browser;
}

describe('ai 7 WebSocketChatTransport', () => {
  test('sends, streams the answer, and regenerates it', async () => {
    const browser = await signedIn();
    const id = ai.generateId();
    const chat = open(browser, id);
    try {
      await chat.sendMessage({ text: 'How do websockets work?' });
      assert.equal(chat.status, 'ready', chat.error?.message);
      const stored = await browser.stored(id);
      assert.equal(chat.messages[1].id, stored[1].id);
      assert.equal(textOf(chat.messages[1]), stored[1].content);
      assert.equal(chat.messages[1].metadata.status, 'completed');

      await chat.regenerate();
      assert.equal(chat.status, 'ready', chat.error?.message);
      const after = await browser.stored(id);
      assert.equal(after.length, 3);
      assert.equal(chat.messages.length, 2);
      assert.equal(chat.messages[1].id, after[2].id);
      assert.equal(textOf(chat.messages[1]), after[2].content);
    } finally {
      await chat.dispose();
    }
  });

  test('abort (chat.stop) stops the generation on the server; the partial is kept', async () => {
    const browser = await signedIn();
    const id = ai.generateId();
    const chat = open(browser, id);
    try {
      const sent = chat.sendMessage({ text: 'Tell me about aborts' });
      const partial = await streaming(chat);
      await chat.stop();
      await sent;
      assert.equal(chat.status, 'ready');
      const gen = await browser.settled(partial.metadata.gen);
      assert.equal(gen.status, 'stopped');
      const [, stored] = await browser.stored(id);
      assert.equal(stored.status, 'stopped');
      assert.ok(stored.content.startsWith(textOf(chat.messages.at(-1))));
      assert.ok(stored.content.length > 0);
    } finally {
      await chat.dispose();
    }
  });

  test('resumes on a new socket after a reload: the whole message once, under its id', async () => {
    const browser = await signedIn();
    const id = ai.generateId();
    const before = open(browser, id);
    const sent = before.sendMessage({ text: 'Explain websocket resume' });
    const partial = await streaming(before);
    before.transport.close(); // the page goes away: its socket closes, nothing is aborted
    await sent;

    const after = open(browser, id, await browser.uiMessages(id));
    try {
      await after.resumeStream();
      assert.equal(after.status, 'ready', after.error?.message);
      const [, stored] = await browser.stored(id);
      assert.equal(stored.status, 'complete');
      assert.equal(assistants(after).length, 1);
      assert.equal(after.messages[1].id, partial.id);
      assert.equal(textOf(after.messages[1]), stored.content);

      // nothing generating now: `no-active`, and the chat is unchanged
      await after.resumeStream();
      assert.equal(after.status, 'ready');
      assert.equal(after.messages.length, 2);
    } finally {
      await after.dispose();
    }
  });

  test('a resume replaced at once (React strict mode) does not stop the answer', async () => {
    const browser = await signedIn();
    const id = ai.generateId();
    const first = open(browser, id);
    const sent = first.sendMessage({ text: 'Explain strict mode' });
    const partial = await streaming(first);
    first.transport.close();
    await sent;
    const page = open(browser, id, await browser.uiMessages(id));
    try {
      const replaced = page.resumeStream();
      await page.resumeStream(); // aborts the first resume, as a double mount does
      await replaced;
      const gen = await browser.settled(partial.metadata.gen);
      assert.equal(gen.status, 'completed');
      assert.equal(textOf(page.messages.at(-1)), (await browser.stored(id))[1].content);
    } finally {
      await page.dispose();
    }
  });

  test('reasoning streams as reasoning parts', { skip: !REASONING_MODEL && 'no reasoning model configured' }, async () => {
    const browser = await signedIn();
    const id = await browser.newChat({ model: REASONING_MODEL });
    const chat = open(browser, id);
    try {
      await askWithReasoning(browser, chat, id, 'Think about sockets');
    } finally {
      await chat.dispose();
    }
  });

  test('a provider error is the chat\'s error', async () => {
    const browser = await signedIn();
    const id = await browser.newChat({ provider: 'openai' }); // the fake answers 401
    const chat = open(browser, id);
    try {
      await chat.sendMessage({ text: 'hello' });
      assert.equal(chat.status, 'error');
      const [, stored] = await browser.stored(id);
      const gen = await browser.generation(stored.gen);
      assert.equal(chat.error.message, gen.error.message);
      assert.doesNotMatch(chat.error.message, /sk-fake/);
    } finally {
      await chat.dispose();
    }
  });

  test('refusals are request errors; the socket stays usable', async () => {
    const owner = await signedIn();
    const id = ai.generateId();
    const mine = open(owner, id);
    await mine.sendMessage({ text: 'echo: mine' });
    await mine.dispose();
    const other = await signedIn();
    const theirs = open(other, id);
    try {
      await theirs.sendMessage({ text: 'echo: let me in' });
      assert.equal(theirs.status, 'error');
      assert.equal(theirs.error.message, 'chat not found');
      theirs.clearError();
      const own = ai.generateId();
      const chat = new Chat({ id: own, transport: theirs.transport });
      await chat.sendMessage({ text: 'echo: on the same socket' });
      assert.equal(textOf(chat.messages.at(-1)), 'on the same socket');
      await until(async () => (await other.stored(own)).length === 2, 'stored');
    } finally {
      await theirs.dispose();
    }
  });
});
