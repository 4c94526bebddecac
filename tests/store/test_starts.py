"""The start path's reads, on SQLite and PostgreSQL: what a start reads inside its own
transaction is what separate reads would give afterwards."""

from __future__ import annotations

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
