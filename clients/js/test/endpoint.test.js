// endpoint(): chatcast paths below a base URL that may carry the prefix chatcast is mounted at.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { endpoint } from '../transports.js';

test('paths go below the base, with or without a prefix or a trailing slash', () => {
  assert.equal(endpoint('http://srv', '/api/chats').href, 'http://srv/api/chats');
  assert.equal(endpoint('http://srv/', '/ws?ticket=t').href, 'http://srv/ws?ticket=t');
  assert.equal(endpoint('http://srv/chat', '/api/chats').href, 'http://srv/chat/api/chats');
  assert.equal(endpoint('https://srv/a/chat/', 'api/chats/x/events').href, 'https://srv/a/chat/api/chats/x/events');
});

test('an absolute URL stays as it is', () => {
  assert.equal(endpoint('http://srv/chat', 'https://reports.example/e').href, 'https://reports.example/e');
});
