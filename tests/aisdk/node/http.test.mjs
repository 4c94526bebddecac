// DefaultChatTransport of the real `ai` package, 6.x and 7.x, against a real chatcast.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import * as ai6 from 'ai6';
import * as ai7 from 'ai7';

import {
  API, Browser, askWithReasoning, assistants, reasoningOf, streaming, testChat, textOf, until,
} from './lib.mjs';

const REASONING_MODEL = process.env.CHATCAST_REASONING_MODEL;

for (const [name, ai] of [['ai 6', ai6], ['ai 7', ai7]]) {
  const Chat = testChat(ai);

  function open(browser, id, messages = []) {
    const transport = new ai.DefaultChatTransport({ api: API, fetch: browser.fetch });
    return new Chat({ id, transport, messages });
  }

  describe(`${name} (${ai.DefaultChatTransport.name}) over HTTP`, () => {
    test('sends, streams the answer, and regenerates it', async () => {
      const browser = new Browser();
      const id = ai.generateId();
      const chat = open(browser, id);
      await chat.sendMessage({ text: 'How do cursors work?' });
      assert.equal(chat.status, 'ready', chat.error?.message);
      assert.equal(chat.messages.length, 2);
      const [question, answer] = chat.messages;
      const stored = await browser.stored(id);
      assert.deepEqual(stored.map((m) => m.role), ['user', 'assistant']);
      // the user message keeps the id the client gave it; the answer has chatcast's
      assert.equal(stored[0].client_msg_id, question.id);
      assert.equal(answer.id, stored[1].id);
      assert.equal(textOf(answer), stored[1].content);
      assert.ok(stored[1].content.length > 20);
      assert.equal(answer.metadata.status, 'completed');
      assert.equal(answer.metadata.gen, stored[1].gen);
      assert.equal(answer.metadata.chat, id);
      assert.ok(answer.metadata.usage.output_tokens > 0);

      await chat.regenerate();
      assert.equal(chat.status, 'ready', chat.error?.message);
      assert.equal(chat.messages.length, 2);
      const again = chat.messages[1];
      assert.notEqual(again.id, answer.id);
      const after = await browser.stored(id);
      assert.deepEqual(after.map((m) => m.role), ['user', 'assistant', 'assistant']);
      assert.equal(again.id, after[2].id);
      assert.equal(textOf(again), after[2].content);
      assert.equal(after[2].status, 'complete');
      // after a reload the page gets what it shows now: the newest answer only
      assert.deepEqual((await browser.uiMessages(id)).map((m) => m.id),
        chat.messages.map((m) => m.id));

      // a second question continues the same chatcast chat
      await chat.sendMessage({ text: 'echo: and one more' });
      assert.equal(textOf(chat.messages.at(-1)), 'and one more');
      assert.equal((await browser.stored(id)).length, 5);
    });

    test('the stop endpoint stops the generation; the partial answer is kept', async () => {
      const browser = new Browser();
      const id = ai.generateId();
      const chat = open(browser, id);
      const sent = chat.sendMessage({ text: 'Tell me about stop' });
      const partial = await streaming(chat);
      assert.deepEqual(await browser.stop(id), { gen: partial.metadata.gen, status: 'stopping' });
      await sent; // the stream ends by itself once the generation has stopped
      assert.equal(chat.status, 'ready', chat.error?.message);
      const gen = await browser.generation(partial.metadata.gen);
      assert.equal(gen.status, 'stopped');
      const [, stored] = await browser.stored(id);
      assert.equal(stored.status, 'stopped');
      assert.ok(stored.content.length > 0);
      const shown = chat.messages.at(-1);
      assert.equal(shown.id, stored.id);
      assert.equal(textOf(shown), stored.content); // what the page shows is what SQL keeps
      assert.equal(shown.metadata.status, 'stopped');
      // stop is idempotent
      assert.deepEqual(await browser.stop(id), { gen: gen.id, status: 'stopped' });
    });

    test('resumes after a reload: the whole message once, under its id', async () => {
      const browser = new Browser();
      const id = ai.generateId();
      const before = open(browser, id);
      const sent = before.sendMessage({ text: 'Explain resume' });
      const partial = await streaming(before);
      // the page goes away: its fetch is dropped (this stops nothing on the server)
      await before.stop();
      await sent;

      // a second tab, open now, sees the same turn
      const tab = open(browser, id, await browser.uiMessages(id));
      const tabDone = tab.resumeStream();

      // the reloaded page: history from chatcast (the partial answer in it), then resume
      const history = await browser.uiMessages(id);
      assert.equal(history.length, 2);
      assert.equal(history[1].id, partial.id);
      const after = open(browser, id, history);
      await after.resumeStream();
      await tabDone;
      const [, stored] = await browser.stored(id);
      assert.equal(stored.status, 'complete');
      for (const chat of [after, tab]) {
        assert.equal(chat.status, 'ready', chat.error?.message);
        assert.equal(chat.messages.length, 2);
        assert.equal(assistants(chat).length, 1);
        assert.equal(chat.messages[1].id, partial.id);
        assert.equal(textOf(chat.messages[1]), stored.content);
        assert.equal(chat.messages[1].metadata.status, 'completed');
      }

      // a page that had only the question when it reloaded gets the answer once too
      const sent2 = after.sendMessage({ text: 'Explain resume again' });
      const second = await streaming(after);
      await after.stop();
      await sent2;
      const onlyQuestion = (await browser.uiMessages(id)).slice(0, -1);
      const fresh = open(browser, id, onlyQuestion);
      await fresh.resumeStream();
      const stored2 = (await browser.stored(id)).at(-1);
      assert.equal(assistants(fresh).filter((m) => m.id === second.id).length, 1);
      assert.equal(textOf(fresh.messages.at(-1)), stored2.content);
    });

    test('resume answers 204 when nothing is generating', async () => {
      const browser = new Browser();
      const id = ai.generateId();
      const chat = open(browser, id);
      await chat.resumeStream(); // a chat never used
      assert.equal(chat.status, 'ready');
      assert.equal(chat.messages.length, 0);
      await chat.sendMessage({ text: 'echo: short' });
      const response = await browser.fetch(`${API}/${id}/stream`);
      assert.equal(response.status, 204);
      const reloaded = open(browser, id, await browser.uiMessages(id));
      await reloaded.resumeStream();
      assert.equal(reloaded.status, 'ready');
      assert.deepEqual(reloaded.messages.map(textOf), ['echo: short', 'short']);
    });

    test('a provider error is the chat\'s error, with chatcast\'s safe message', async () => {
      const browser = new Browser();
      const id = await browser.newChat({ provider: 'openai' }); // the fake answers 401
      const chat = open(browser, id);
      await chat.sendMessage({ text: 'hello' });
      assert.equal(chat.status, 'error');
      const [, stored] = await browser.stored(id);
      const gen = await browser.generation(stored.gen);
      assert.equal(gen.status, 'error');
      assert.equal(chat.error.message, gen.error.message);
      assert.doesNotMatch(chat.error.message, /sk-fake/);
      assert.equal(chat.messages.at(-1).metadata.status, 'error');
    });

    test('another user\'s chat is not found; bad requests are refused', async () => {
      const alice = new Browser();
      const id = ai.generateId();
      await open(alice, id).sendMessage({ text: 'echo: mine' });
      const mallory = new Browser();
      const theirs = open(mallory, id);
      await theirs.sendMessage({ text: 'echo: let me in' });
      assert.equal(theirs.status, 'error');
      assert.equal(JSON.parse(theirs.error.message).error.code, 'not_found');
      for (const path of ['stream', 'messages']) {
        const r = await mallory.fetch(`${API}/${id}/${path}`);
        assert.equal(r.status, 404, path);
      }
      const stop = await mallory.fetch(`${API}/${id}/stop`, { method: 'POST' });
      assert.equal(stop.status, 404);
      const bad = open(alice, 'no spaces allowed');
      await bad.sendMessage({ text: 'hi' });
      assert.equal(JSON.parse(bad.error.message).error.code, 'bad_request');
      assert.equal((await alice.stored(id)).length, 2); // nothing changed
    });

    test('reasoning streams as reasoning parts', { skip: !REASONING_MODEL && 'no reasoning model configured' }, async () => {
      const browser = new Browser();
      const id = await browser.newChat({ model: REASONING_MODEL });
      const chat = open(browser, id);
      const { answer, stored } = await askWithReasoning(browser, chat, id, 'Think about cursors');
      const kinds = answer.parts.map((p) => p.type).filter((t) => t !== 'step-start');
      assert.equal(kinds[0], 'reasoning');
      assert.equal(kinds.at(-1), 'text');
      // and after a reload the history has it in the same place
      const [, again] = await browser.uiMessages(id);
      assert.equal(reasoningOf(again), stored.reasoning);

      // a reload while it still thinks: reasoning and answer come back once each
      const known = new Set(chat.messages.map((m) => m.id));
      const sent = chat.sendMessage({ text: 'Think about resume' });
      await until(() => {
        const last = chat.messages.at(-1);
        return last.role === 'assistant' && !known.has(last.id) && reasoningOf(last).length > 0;
      }, 'reasoning');
      const thinking = chat.messages.at(-1);
      await chat.stop();
      await sent;
      const reloaded = open(browser, id, await browser.uiMessages(id));
      await reloaded.resumeStream();
      assert.equal(reloaded.status, 'ready', reloaded.error?.message);
      const resumed = reloaded.messages.at(-1);
      const final = (await browser.stored(id)).at(-1);
      assert.equal(resumed.id, thinking.id);
      assert.equal(reloaded.messages.filter((m) => m.id === thinking.id).length, 1);
      assert.equal(reasoningOf(resumed), final.reasoning);
      assert.equal(textOf(resumed), final.content);
      assert.equal(resumed.parts.filter((p) => p.type === 'reasoning').length, 1);
    });
  });
}
