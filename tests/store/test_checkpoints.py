"""Checkpoints of many generations in one statement per table, on SQLite and PostgreSQL:
after a crash (the process gone, nothing finished), a new process reads back exactly the
text, reasoning, lengths and seq of each generation's last checkpoint."""

from __future__ import annotations

from datetime import UTC, datetime

from chatcast.store.db import make_engine, session_factory
from chatcast.store.models import Reasoning
from chatcast.store.repo import Checkpoint, Repo, Started

USER = "checkpointing-user"


async def _start(repo: Repo, n: int) -> list[Started]:
    started = []
    for i in range(n):
        chat = await repo.create_chat(USER)
        started.append(await repo.start_send(USER, chat.id, f"question {i}", None, "demo",
                                             "demo-1", "owner-a"))
    return started


def _text(i: int, upto: int) -> str:
    # Multi-byte characters, quotes and newlines: lengths are counted in characters.
    return "".join(f"é{i}'\"ü😀 w{k}\n" for k in range(upto))


async def test_checkpoints_survive_a_crash_exactly(db_url: str) -> None:
    engine = make_engine(db_url)
    repo = Repo(session_factory(engine))
    started = await _start(repo, 40)
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    first = [Checkpoint(s.generation.id, s.assistant.id, _text(i, 3), 3)
             for i, s in enumerate(started)]
    await repo.checkpoint_many(first)
    # The second interval: every text grew, some generations reason, one did not advance
    # (it is not in the batch and keeps its first checkpoint).
    second = [Checkpoint(s.generation.id, s.assistant.id, _text(i, 10 + i), 10 + i,
                         Reasoning(f"thinking {i}", at, at if i % 2 else None)
                         if i % 3 == 0 else Reasoning())
              for i, s in enumerate(started) if i != 7]
    await repo.checkpoint_many(second)
    await repo.checkpoint_many([])  # nothing advanced: nothing to write
    await engine.dispose()  # the process dies here: no final write

    engine = make_engine(db_url)
    try:
        fresh = Repo(session_factory(engine))
        expected = {c.gen: c for c in second} | {first[7].gen: first[7]}
        for s in started:
            c = expected[s.generation.id]
            got = await fresh.active_with_message(s.chat.id)
            assert got is not None
            gen, msg = got
            assert gen.status == "active" and gen.last_seq == c.seq
            assert msg.content == c.content and len(msg.content) == len(c.content)
            assert msg.reasoning == c.reasoning.text
            assert _utc(msg.reasoning_started_at) == c.reasoning.started_at
            assert _utc(msg.reasoning_ended_at) == c.reasoning.ended_at
            assert msg.status == "streaming"
    finally:
        await engine.dispose()


def _utc(t: datetime | None) -> datetime | None:
    """A time as the database gave it back, in UTC (SQLite returns naive UTC)."""
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


async def test_a_finished_generation_is_not_rewritten_by_a_late_checkpoint_row(
        db_url: str) -> None:
    """The runner never checkpoints a finishing generation; if a checkpoint of it ran
    anyway, the final content would be overwritten, so the batch writes only what it is
    given: a finish between two batches keeps its own text."""
    engine = make_engine(db_url)
    try:
        repo = Repo(session_factory(engine))
        a, b = await _start(repo, 2)
        await repo.checkpoint_many([Checkpoint(a.generation.id, a.assistant.id, "a1", 1),
                                    Checkpoint(b.generation.id, b.assistant.id, "b1", 1)])
        await repo.finish(a.generation.id, "completed", "a1 a2", 2, only_if_active=True)
        await repo.checkpoint_many([Checkpoint(b.generation.id, b.assistant.id, "b1 b2", 2)])
        msg_a = await repo.get_message(a.assistant.id)
        msg_b = await repo.get_message(b.assistant.id)
        assert msg_a is not None and (msg_a.content, msg_a.status) == ("a1 a2", "complete")
        assert msg_b is not None and (msg_b.content, msg_b.status) == ("b1 b2", "streaming")
    finally:
        await engine.dispose()
