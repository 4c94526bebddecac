"""The start path's reads, on SQLite and PostgreSQL: what a start reads inside its own
transaction is what separate reads would give afterwards."""

from __future__ import annotations

import pytest

from chatcast.core.errors import Busy, TooManyGenerations
from chatcast.store.db import make_engine, session_factory
from chatcast.store.repo import Repo


async def test_a_send_reads_the_conversation_as_history_does(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        repo = Repo(session_factory(engine))
        chat = await repo.create_chat("history-user")
        first = await repo.start_send("history-user", chat.id, "one", None, "demo", "demo-1",
                                      "owner")
        assert [m.content for m in first.history or []] == ["one"]
        await repo.finish(first.generation.id, "completed", "answer one", 2,
                          only_if_active=True)
        again = await repo.get_chat("history-user", chat.id)
        second = await repo.start_send("history-user", chat.id, "two", None, "demo",
                                       "demo-1", "owner", chat=again)
        read = await repo.history(chat.id, upto_message=second.assistant.id)
        assert second.history is not None
        assert [(m.id, m.role, m.content) for m in second.history] == \
            [(m.id, m.role, m.content) for m in read] == \
            [(first.user_message.id if first.user_message else "", "user", "one"),
             (first.assistant.id, "assistant", "answer one"),
             (second.user_message.id if second.user_message else "", "user", "two")]
        # A new user and chat in one transaction; the same user again needs no insert.
        other = await repo.create_chat("history-user")
        assert (await repo.get_chat("history-user", other.id)).user_id == "history-user"
    finally:
        await engine.dispose()


async def test_every_start_and_a_snapshot_after_each(db_url: str) -> None:
    """send, a repeated send, busy, the limit, regenerate and continue, with a snapshot's
    reading of the chat after each (the active answer with its message, else the latest)."""
    engine = make_engine(db_url)
    try:
        repo = Repo(session_factory(engine), max_active_per_user=1)
        user = "starts-user"
        chat = await repo.create_chat(user, provider="demo")
        empty = await repo.chat_state(chat.id, 50)
        assert (empty.messages, empty.has_more, empty.active, empty.latest) == \
            ([], False, None, None)
        sent = await repo.start_send(user, chat.id, "a question that names the chat", "c-1",
                                     "demo", "demo-1", "owner")
        assert sent.chat.title == "a question that names the chat"
        assert (await repo.get_chat(user, chat.id)).title == sent.chat.title
        again = await repo.start_send(user, chat.id, "ignored", "c-1", "demo", "demo-1", "o")
        assert again.repeated and again.generation.id == sent.generation.id
        with pytest.raises(TooManyGenerations):  # checked first: a new client_msg_id
            await repo.start_send(user, chat.id, "two", "c-2", "demo", "demo-1", "owner")
        other = await repo.create_chat(user)
        with pytest.raises(TooManyGenerations):
            await repo.start_send(user, other.id, "three", None, "demo", "demo-1", "owner")
        with pytest.raises(Busy):  # without a limit: the one-active-per-chat index
            await Repo(session_factory(engine)).start_send(user, chat.id, "two", "c-2",
                                                           "demo", "demo-1", "owner")
        state = await repo.chat_state(chat.id, 50)
        assert state.active is not None and state.latest is None
        assert (state.active[0].id, state.active[1].id) == \
            (sent.generation.id, sent.assistant.id)
        assert [m.role for m in state.messages] == ["user", "assistant"]

        stopped = await repo.finish(sent.generation.id, "stopped", "part", 3,
                                    only_if_active=True, usage={"output_tokens": 1},
                                    message_meta={"k": 1})
        assert stopped is not None and (stopped.status, stopped.content, stopped.meta,
                                        stopped.usage) == ("stopped", "part", {"k": 1},
                                                           {"output_tokens": 1})
        assert await repo.finish(sent.generation.id, "completed", "x", 4,
                                 only_if_active=True) is None
        state = await repo.chat_state(chat.id, 1)
        assert state.active is None and state.has_more
        assert state.latest is not None and (state.latest.id, state.latest.status,
                                             state.latest.last_seq) == \
            (sent.generation.id, "stopped", 3)

        cont = await repo.start_continue(user, sent.generation.id, "owner")
        assert cont.base_content == "part" and cont.assistant.id == sent.assistant.id
        await repo.finish(cont.generation.id, "completed", "part and more", 5)
        regen = await repo.start_regenerate(user, chat.id, None, "demo", "demo-1", "owner")
        assert regen.generation.meta == {"regenerates": sent.user_message.id
                                         if sent.user_message else ""}
        state = await repo.chat_state(chat.id, 50)
        assert state.active is not None and state.active[0].id == regen.generation.id
        assert [m.content for m in state.messages] == \
            ["a question that names the chat", "part and more", ""]
    finally:
        await engine.dispose()
