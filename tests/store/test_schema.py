"""The schema, on SQLite and on PostgreSQL: migrations, constraints, JSON and time columns.

Uses the SQLModel tables directly; query functions are tested with store/repo.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession

from chatcast.store.db import alembic_config, make_engine, session_factory
from chatcast.store.ids import new_id
from chatcast.store.models import Chat, Generation, Message, User
from tests.conftest import DatabaseFactory, DbKind
from tests.helpers.threads import run_in_thread

TABLES = {"user", "chat", "message", "generation"}


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(db_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return session_factory(engine)


async def new_chat(sessions: async_sessionmaker[AsyncSession]) -> Chat:
    async with sessions() as s:
        user = User()
        chat = Chat(user_id=user.id)
        s.add(user)
        await s.flush()  # the user row first: chat.user_id references it
        s.add(chat)
        await s.commit()
        return chat


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


# -- migrations -----------------------------------------------------------------------------


async def test_migrations_apply_from_empty(db_kind: DbKind,
                                           make_database: DatabaseFactory) -> None:
    from chatcast.store.db import migrate

    url = make_database(db_kind, migrated=False)
    run_in_thread(lambda: migrate(url))
    run_in_thread(lambda: migrate(url))  # and again: a no-op at head

    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))
                       ).scalar_one()
    finally:
        await engine.dispose()
    assert tables >= TABLES
    assert version == head_revision()


async def test_migrated_schema_matches_the_models(engine: AsyncEngine) -> None:
    """A model change without a migration (or the reverse) shows up here."""
    def diff(conn: Connection) -> list[Any]:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, SQLModel.metadata))

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_tables_and_indexes_exist(engine: AsyncEngine) -> None:
    def describe(conn: Connection) -> tuple[set[str], set[str], set[str]]:
        insp = inspect(conn)
        gen_indexes = {ix["name"] for ix in insp.get_indexes("generation") if ix["name"]}
        msg_uniques = {uc["name"] for uc in insp.get_unique_constraints("message")
                       if uc["name"]}
        return set(insp.get_table_names()), gen_indexes, msg_uniques

    async with engine.connect() as conn:
        tables, gen_indexes, msg_uniques = await conn.run_sync(describe)
    assert tables >= TABLES
    assert {"uq_generation_one_active_per_chat", "ix_generation_status"} <= gen_indexes
    assert "uq_message_client_msg_id" in msg_uniques


# -- constraints ----------------------------------------------------------------------------


async def test_client_msg_id_is_unique_per_chat(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    chat, other = await new_chat(sessions), await new_chat(sessions)
    async with sessions() as s:
        s.add(Message(chat_id=chat.id, role="user", content="hi", client_msg_id="c-1"))
        s.add(Message(chat_id=other.id, role="user", content="hi", client_msg_id="c-1"))
        # Messages without a client id (assistant answers) never collide.
        s.add(Message(chat_id=chat.id, role="assistant", content="a"))
        s.add(Message(chat_id=chat.id, role="assistant", content="b"))
        await s.commit()

    async with sessions() as s:
        s.add(Message(chat_id=chat.id, role="user", content="again", client_msg_id="c-1"))
        with pytest.raises(IntegrityError):
            await s.commit()


async def test_one_active_generation_per_chat(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    chat, other = await new_chat(sessions), await new_chat(sessions)

    def gen(chat: Chat, status: str = "active") -> Generation:
        return Generation(chat_id=chat.id, message_id=new_id(), user_id=chat.user_id,
                          status=status, provider="demo", model="demo-1")

    first = gen(chat)
    async with sessions() as s:
        s.add_all([first, gen(other)])  # one active in each chat is fine
        s.add_all([gen(chat, "completed"), gen(chat, "stopped"), gen(chat, "completed"),
                   gen(chat, "error"), gen(chat, "interrupted")])
        await s.commit()

    async with sessions() as s:
        s.add(gen(chat))
        with pytest.raises(IntegrityError):
            await s.commit()

    # Once the active one is over, the chat may start another.
    async with sessions() as s:
        row = await s.get(Generation, first.id)
        assert row is not None
        row.status = "completed"
        await s.commit()
    async with sessions() as s:
        s.add(gen(chat))
        await s.commit()
        active = (await s.exec(select(Generation).where(Generation.chat_id == chat.id,
                                                        Generation.status == "active"))).all()
    assert len(active) == 1


async def test_foreign_keys_are_enforced_and_chat_delete_cascades(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as s:
        s.add(Message(chat_id=new_id(), role="user", content="orphan"))
        with pytest.raises(IntegrityError):
            await s.commit()

    chat = await new_chat(sessions)
    async with sessions() as s:
        s.add(Message(chat_id=chat.id, role="user", content="hi"))
        s.add(Generation(chat_id=chat.id, message_id=new_id(), user_id=chat.user_id,
                         provider="demo", model="demo-1"))
        await s.commit()
    async with sessions() as s:
        row = await s.get(Chat, chat.id)
        await s.delete(row)  # the ORM knows no relationships: the database must cascade
        await s.commit()
    async with sessions() as s:
        assert (await s.exec(select(Message).where(Message.chat_id == chat.id))).all() == []
        assert (await s.exec(select(Generation).where(Generation.chat_id == chat.id))
                ).all() == []


# -- column types ---------------------------------------------------------------------------


async def test_json_columns_round_trip(sessions: async_sessionmaker[AsyncSession]) -> None:
    chat = await new_chat(sessions)
    usage = {"input_tokens": 12, "output_tokens": 340, "cost": 0.0021,
             "nested": {"list": [1, "two", None, True], "text": "ünïcödé 🎉"}}
    meta = {"ttft_ms": 231.5, "tokens": 340, "retries": 1, "fallback": ["openai", "demo"]}
    error = {"code": "provider_error", "message": "upstream 502", "retryable": True}
    msg = Message(chat_id=chat.id, role="assistant", content="x", usage=usage)
    gen = Generation(chat_id=chat.id, message_id=msg.id, user_id=chat.user_id,
                     status="error", provider="openai", model="gpt-x", meta=meta, error=error)
    empty = Message(chat_id=chat.id, role="user", content="y")
    async with sessions() as s:
        s.add_all([msg, gen, empty])
        await s.commit()

    async with sessions() as s:
        got_msg = await s.get(Message, msg.id)
        got_gen = await s.get(Generation, gen.id)
        got_empty = await s.get(Message, empty.id)
    assert got_msg is not None and got_gen is not None and got_empty is not None
    assert got_msg.usage == usage
    assert got_gen.meta == meta
    assert got_gen.error == error
    assert got_empty.usage is None


async def test_aware_datetimes_round_trip(sessions: async_sessionmaker[AsyncSession]) -> None:
    chat = await new_chat(sessions)
    created = datetime(2025, 3, 30, 1, 59, 59, 123456, tzinfo=UTC)
    completed = datetime(2025, 3, 30, 4, 0, 0, 654321, tzinfo=timezone(timedelta(hours=2)))
    msg = Message(chat_id=chat.id, role="assistant", content="x", created_at=created,
                  completed_at=completed)
    async with sessions() as s:
        s.add(msg)
        await s.commit()

    async with sessions() as s:
        got = await s.get(Message, msg.id)
    assert got is not None
    assert got.created_at.tzinfo is not None, "created_at came back naive"
    assert got.completed_at is not None and got.completed_at.tzinfo is not None
    assert got.created_at == created
    assert got.completed_at == completed


async def test_reasoning_migration_keeps_existing_messages(db_kind: DbKind,
                                                          make_database: DatabaseFactory) -> None:
    """A database from before reasoning (revision 0002) with an answer in it: after the
    upgrade the answer is intact, with no reasoning; new answers store theirs."""
    from alembic import command

    url = make_database(db_kind, migrated=False)
    run_in_thread(lambda: command.upgrade(alembic_config(url), "0002"))
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text('INSERT INTO "user" (id, display_name, created_at) '
                                    "VALUES ('u1', 'a', CURRENT_TIMESTAMP)"))
            await conn.execute(text(
                "INSERT INTO chat (id, user_id, title, created_at, updated_at) "
                "VALUES ('c1', 'u1', 't', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
            await conn.execute(text(
                "INSERT INTO message (id, chat_id, role, content, status, is_streaming, "
                "created_at) VALUES ('m1', 'c1', 'assistant', 'old answer', 'complete', "
                "false, CURRENT_TIMESTAMP)"))
        await engine.dispose()
        run_in_thread(lambda: command.upgrade(alembic_config(url), "head"))
        sessions = session_factory(engine)
        async with sessions() as s:
            old = await s.get(Message, "m1")
            assert old is not None and old.content == "old answer"
            assert (old.reasoning, old.reasoning_started_at, old.reasoning_ended_at) == (
                "", None, None)
            started = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
            new = Message(chat_id="c1", role="assistant", content="4", reasoning="2 + 2 …",
                          reasoning_started_at=started,
                          reasoning_ended_at=started + timedelta(seconds=12))
            s.add(new)
            await s.commit()
            new_id_ = new.id
        async with sessions() as s:
            row = await s.get(Message, new_id_)
            assert row is not None and row.reasoning == "2 + 2 …"
            assert row.reasoning_started_at is not None and row.reasoning_ended_at is not None
            seconds = (row.reasoning_ended_at - row.reasoning_started_at).total_seconds()
            assert seconds == 12
        run_in_thread(lambda: command.downgrade(alembic_config(url), "0002"))
        async with engine.connect() as conn:
            columns = {c["name"] for c in await conn.run_sync(
                lambda c: inspect(c).get_columns("message"))}
        assert "reasoning" not in columns and "content" in columns
    finally:
        await engine.dispose()
