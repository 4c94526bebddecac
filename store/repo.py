"""Queries. Every lookup a client can reach is scoped by user: another user's id is not found."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, bindparam, case, func, insert, text, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import select as core_select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker
from sqlalchemy.orm import configure_mappers
from sqlmodel import SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from chatcast.core.errors import BadRequest, Busy, NotFound, TooManyGenerations
from chatcast.store.errors import translate_errors
from chatcast.store.ids import new_id, utcnow
from chatcast.store.models import (
    TERMINAL_TO_MESSAGE,
    ApiToken,
    Chat,
    Generation,
    Message,
    Reasoning,
    User,
)

TOKEN_TOUCH_INTERVAL = timedelta(minutes=1)  # last_used_at is written at most this often

Sessions = async_sessionmaker[AsyncSession]
M = TypeVar("M", bound=SQLModel)


@dataclass(slots=True)
class Started:
    """What starting a generation created (or found, for a repeated client_msg_id)."""

    chat: Chat
    generation: Generation
    assistant: Message
    user_message: Message | None
    base_content: str = ""  # text the answer already had (continue)
    base_reasoning: Reasoning = field(default_factory=Reasoning)  # and its reasoning
    repeated: bool = False  # the same client_msg_id was sent before
    # The conversation before the answer (as `Repo.history` reads it), when the start read
    # it in its own transaction; None: read it later.
    history: list[Message] | None = None


@dataclass(slots=True)
class ChatState:
    """A chat as a snapshot shows it (see `Repo.chat_state`)."""

    messages: list[Message]  # the newest page, oldest first
    has_more: bool
    active: tuple[Generation, Message] | None
    latest: Generation | None  # the latest generation, when none is active


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The partial answer of a running generation, as of `seq`."""

    gen: str
    message: str
    content: str
    seq: int
    reasoning: Reasoning = field(default_factory=Reasoning)


class Repo:
    """Every public method raises StorageUnavailable (never a driver error) when the
    database cannot be reached (`translate_errors`)."""

    def __init__(self, sessions: Sessions, *, max_active_per_user: int | None = None) -> None:
        """`max_active_per_user`: how many generations one user may have active at once
        (None: no limit). Checked inside the transaction that starts a generation."""
        self.sessions = sessions
        self.max_active_per_user = max_active_per_user
        # The hot paths (a chat's creation, a send, a snapshot, a finish) are Core
        # statements on a connection: no session, no ORM object work per row (rows become
        # model instances as the ORM's own loading makes them, `_load`).
        self.engine: AsyncEngine = sessions.kw["bind"]
        self._pg = self.engine.dialect.name == "postgresql"
        # Reads, and writes that are one statement, run without BEGIN/ROLLBACK round trips
        # on PostgreSQL (autocommit: each statement is its own transaction, which under
        # READ COMMITTED is the snapshot each statement of a transaction had anyway). SQLite's
        # driver begins a transaction only before a write, so its reads need nothing.
        self._auto = self.engine.execution_options(isolation_level="AUTOCOMMIT") \
            if self._pg else self.engine
        self._users: set[str] = set()  # users whose row exists
        # gen -> (content, reasoning) lengths this process last checkpointed
        self._saved: dict[str, tuple[int, int]] = {}

    async def ping(self) -> bool:
        try:
            async with self.sessions() as s:
                await s.exec(select(1))
            return True
        except Exception:
            return False

    # Users and chats -----------------------------------------------------------------

    @translate_errors
    async def ensure_user(self, user_id: str) -> None:
        async with self.sessions() as s:
            await self._ensure_user(s, user_id)
            await s.commit()
        self._users.add(user_id)

    async def _ensure_user(self, s: AsyncSession, user_id: str) -> None:
        """The user's row, inserted in `s`'s transaction unless it exists: one statement
        that a concurrent insert cannot fail (ON CONFLICT DO NOTHING, on both databases),
        none at all for a user this process has seen committed (users are never deleted;
        the caller notes it in `_users` after its commit)."""
        if user_id in self._users:
            return
        row = User(id=user_id)
        insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
        await s.exec(insert(User).values(id=row.id, display_name=row.display_name,
                                            created_at=row.created_at).on_conflict_do_nothing())

    @translate_errors
    async def create_api_token(self, user_id: str, name: str, token_hash: str) -> ApiToken:
        """Store a token's hash for `user_id` (created if new)."""
        await self.ensure_user(user_id)
        row = ApiToken(user_id=user_id, name=name, token_hash=token_hash)
        async with self.sessions() as s:
            s.add(row)
            await s.commit()
        return row

    @translate_errors
    async def list_api_tokens(self, user_id: str | None = None) -> list[ApiToken]:
        async with self.sessions() as s:
            q = select(ApiToken)
            if user_id is not None:
                q = q.where(ApiToken.user_id == user_id)
            return list(await s.exec(q.order_by(col(ApiToken.created_at))))

    @translate_errors
    async def revoke_api_token(self, token_id: str) -> bool:
        """Delete a token (by its id, never by its value); False if there was none."""
        async with self.sessions() as s:
            row = await s.get(ApiToken, token_id)
            if row is None:
                return False
            await s.delete(row)
            await s.commit()
            return True

    @translate_errors
    async def user_for_token(self, token_hash: str) -> str | None:
        """The user of a token hash, or None; notes when the token was last used."""
        async with self.sessions() as s:
            row = (await s.exec(select(ApiToken).where(ApiToken.token_hash == token_hash)))\
                .first()
            if row is None:
                return None
            now = utcnow()
            last = row.last_used_at
            if last is not None and last.tzinfo is None:  # SQLite returns naive UTC
                last = last.replace(tzinfo=now.tzinfo)
            if last is None or now - last > TOKEN_TOUCH_INTERVAL:
                await s.exec(update(ApiToken).where(col(ApiToken.id) == row.id)
                             .values(last_used_at=now))
                await s.commit()
            return row.user_id

    @translate_errors
    async def create_chat(self, user_id: str, title: str | None = None,
                          provider: str | None = None, model: str | None = None) -> Chat:
        """A new chat (and its user, if new) in one transaction: on PostgreSQL one statement
        (the user's `INSERT … ON CONFLICT DO NOTHING` in a WITH clause), on SQLite two."""
        chat = _new(Chat, user_id=user_id, title=title or "New chat", provider=provider,
                    model=model)
        new_user = None if user_id in self._users else {
            "id": user_id, "display_name": "anonymous", "created_at": chat.created_at}
        add_chat = insert(_CHAT).values(_columns(chat))
        if self._pg:
            if new_user is not None:
                add_chat = add_chat.add_cte(
                    pg_insert(_USER).values(new_user).on_conflict_do_nothing().cte("new_user"))
            async with self._auto.connect() as conn:
                await conn.execute(add_chat)
        else:
            async with self.engine.begin() as conn:
                if new_user is not None:
                    await conn.execute(sqlite_insert(_USER).values(new_user)
                                       .on_conflict_do_nothing())
                await conn.execute(add_chat)
        self._users.add(user_id)
        return chat

    @translate_errors
    async def list_chats(self, user_id: str, limit: int = 200) -> list[Chat]:
        async with self.sessions() as s:
            rows = await s.exec(select(Chat).where(Chat.user_id == user_id)
                                .order_by(col(Chat.updated_at).desc()).limit(limit))
            return list(rows)

    @translate_errors
    async def get_chat(self, user_id: str, chat_id: str) -> Chat:
        async with self._auto.connect() as conn:
            row = (await conn.execute(_SELECT_CHAT, {"id": chat_id})).first()
        if row is None or row.user_id != user_id:
            raise NotFound("chat")  # another user's chat too: never reveal that it exists
        return _load(Chat, row)

    @translate_errors
    async def find_chat(self, user_id: str, chat_id: str) -> Chat | None:
        """The user's chat, None if no chat has this id, NotFound if another user's has."""
        async with self.sessions() as s:
            chat = await s.get(Chat, chat_id)
        if chat is not None and chat.user_id != user_id:
            raise NotFound("chat")
        return chat

    @translate_errors
    async def ensure_chat(self, user_id: str, chat_id: str) -> Chat:
        """The user's chat with this id, created (empty) if no chat has it yet; another
        user's is NotFound. For clients that choose their chats' ids themselves."""
        chat = await self.find_chat(user_id, chat_id)
        if chat is not None:
            return chat
        await self.ensure_user(user_id)
        async with self.sessions() as s:
            s.add(Chat(id=chat_id, user_id=user_id))
            try:
                await s.commit()
            except IntegrityError:  # created at the same moment, by this user or another
                await s.rollback()
        return await self.get_chat(user_id, chat_id)

    @translate_errors
    async def update_chat(self, user_id: str, chat_id: str, changes: dict[str, Any]) -> Chat:
        async with self.sessions() as s:
            chat = await _owned_chat(s, user_id, chat_id)
            for key, value in changes.items():
                setattr(chat, key, value)
            chat.updated_at = utcnow()
            s.add(chat)
            await s.commit()
            return chat

    @translate_errors
    async def delete_chat(self, user_id: str, chat_id: str) -> None:
        async with self.sessions() as s:
            chat = await _owned_chat(s, user_id, chat_id)
            if await self._active_generation(s, chat_id) is not None:
                raise Busy()
            for model in (Generation, Message):
                rows = await s.exec(select(model).where(model.chat_id == chat_id))
                for row in rows:
                    await s.delete(row)
            await s.delete(chat)
            await s.commit()

    # Messages ------------------------------------------------------------------------

    @translate_errors
    async def messages_page(self, chat_id: str, before: str | None = None,
                            limit: int = 50) -> tuple[list[Message], bool]:
        """A page of history, newest page first; messages oldest → newest within the page."""
        async with self._auto.connect() as conn:
            return await _page(conn, chat_id, before, limit)

    @translate_errors
    async def history(self, chat_id: str, upto_message: str | None = None) -> list[Message]:
        """The conversation for the model: oldest first, up to (excluding) a message."""
        async with self._auto.connect() as conn:
            return await _history(conn, chat_id, upto_message)

    @translate_errors
    async def get_message(self, message_id: str) -> Message | None:
        async with self.sessions() as s:
            return await s.get(Message, message_id)

    # Generations ---------------------------------------------------------------------

    @translate_errors
    async def start_send(self, user_id: str, chat_id: str, content: str,
                         client_msg_id: str | None, provider: str, model: str,
                         owner: str, chat: Chat | None = None) -> Started:
        """Store the user message and start its generation, atomically. The same
        client_msg_id twice returns the first result; a chat already generating is Busy.
        `chat`: the user's chat as the caller just read it (else it is read here)."""
        if chat is None or chat.id != chat_id or chat.user_id != user_id:
            chat = await self.get_chat(user_id, chat_id)
        gen_id = new_id()
        user_msg = _new(Message, chat_id=chat_id, role="user", content=content,
                        client_msg_id=client_msg_id, generation_id=gen_id)
        assistant = _new(Message, chat_id=chat_id, role="assistant", status="streaming",
                         is_streaming=True, provider=provider, model=model,
                         generation_id=gen_id)
        gen = _new(Generation, id=gen_id, chat_id=chat_id, message_id=assistant.id,
                   user_id=user_id, provider=provider, model=model, owner=owner)
        chat_changes: dict[str, Any] = {}
        if chat.title == "New chat":
            chat.title = chat_changes["title"] = _title_from(content)
        chat.updated_at = chat_changes["updated_at"] = utcnow()
        # (One INSERT per message: SQLAlchemy compiles a multi-row VALUES anew each time.)
        messages = [_columns(user_msg), _columns(assistant)]
        writes = [insert(_GENERATION).values(_columns(gen)),
                  update(_CHAT).where(_CHAT.c.id == chat_id).values(chat_changes)]
        # The conversation so far, read in this transaction (not in a session of its own
        # once the answer starts): what came before, and the new message.
        read_history = _history_query(chat_id, None)
        allowed = True
        async with self.engine.connect() as conn:
            if not await self._may_start(conn, user_id):
                allowed = failed = False
                await conn.rollback()
            else:
                try:
                    if self._pg:
                        # One statement: the writes in its WITH clause, the history its result
                        # (every part of a statement sees the rows as they were before it).
                        writes += [insert(_MESSAGE).values(m) for m in messages]
                        result = await conn.execute(read_history.add_cte(
                            *(w.cte(f"w{i}") for i, w in enumerate(writes))))
                        before = [_load(Message, r) for r in result]
                    else:
                        before = await _history(conn, chat_id, None)
                        await conn.execute(insert(_MESSAGE), messages)
                        for w in writes:
                            await conn.execute(w)
                    await conn.commit()
                except IntegrityError:
                    await conn.rollback()
                    failed = True
                else:
                    failed = False
        if not allowed:  # (looked up with the connection back in the pool: SQLite has one)
            found = await self._find_sent(chat_id, client_msg_id) if client_msg_id else None
            if found is None:
                raise self._too_many()
            return found
        if failed:
            # Either this client_msg_id was sent before (answer the same result) or the
            # chat is already generating. The unique constraints decided; we only look.
            found = await self._find_sent(chat_id, client_msg_id) if client_msg_id else None
            if found is None:
                raise Busy()
            return found
        history = sorted((m for m in [*before, user_msg] if m.id < assistant.id),
                         key=lambda m: m.id)
        return Started(chat, gen, assistant, user_msg, history=history)

    async def _may_start(self, s: AsyncConnection, user_id: str) -> bool:
        """Whether the user may start one more generation. Locks the user's row first, so
        concurrent starts by one user (on any process) are checked one after the other: on
        PostgreSQL `SELECT … FOR UPDATE`; on SQLite a no-op UPDATE, which takes the
        database's single write lock until this transaction ends."""
        if self.max_active_per_user is None:
            return True
        if self._pg:
            await s.execute(core_select(_USER.c.id).where(_USER.c.id == user_id)
                            .with_for_update())
        else:
            await s.execute(text('UPDATE "user" SET display_name = display_name WHERE id = :u')
                            .bindparams(u=user_id))
        n = await s.execute(core_select(func.count()).select_from(_GENERATION).where(
            _GENERATION.c.user_id == user_id, _GENERATION.c.status == "active"))
        return int(n.scalar_one()) < self.max_active_per_user

    def _too_many(self) -> TooManyGenerations:
        n = self.max_active_per_user
        return TooManyGenerations(f"at most {n} answers may be generating at once; wait for "
                                  "one to finish or stop one")

    async def _find_sent(self, chat_id: str, client_msg_id: str) -> Started | None:
        async with self.sessions() as s:
            user_msg = (await s.exec(select(Message).where(
                Message.chat_id == chat_id, Message.client_msg_id == client_msg_id))).first()
            if user_msg is None or user_msg.generation_id is None:
                return None
            chat = await s.get(Chat, chat_id)
            gen = await s.get(Generation, user_msg.generation_id)
            assistant = await s.get(Message, gen.message_id) if gen else None
            if chat is None or gen is None or assistant is None:
                return None
            return Started(chat, gen, assistant, user_msg, repeated=True)

    @translate_errors
    async def start_regenerate(self, user_id: str, chat_id: str, message_id: str | None,
                               provider: str, model: str, owner: str) -> Started:
        """A new answer to the last (or given) user message."""
        chat = await self.get_chat(user_id, chat_id)
        async with self.sessions() as s:
            if not await self._may_start(await s.connection(), user_id):
                raise self._too_many()
            q = select(Message).where(Message.chat_id == chat_id, Message.role == "user")
            if message_id:
                q = q.where(Message.id == message_id)
            user_msg = (await s.exec(q.order_by(col(Message.id).desc()))).first()
            if user_msg is None:
                raise NotFound("message") if message_id else BadRequest("nothing to regenerate")
            assistant = Message(chat_id=chat_id, role="assistant", status="streaming",
                                is_streaming=True, provider=provider, model=model)
            gen = Generation(chat_id=chat_id, message_id=assistant.id, user_id=user_id,
                             provider=provider, model=model, owner=owner,
                             meta={"regenerates": user_msg.id})
            assistant.generation_id = gen.id
            chat.updated_at = utcnow()
            # `chat` was read without the ORM (`get_chat`): it is in no session, so its
            # change is an UPDATE of its own (adding it would INSERT it again).
            await s.exec(update(_CHAT).where(_CHAT.c.id == chat_id)
                         .values(updated_at=chat.updated_at))
            s.add_all([assistant, gen])
            await _commit_start(s)
        return Started(chat, gen, assistant, None)

    @translate_errors
    async def start_continue(self, user_id: str, gen_id: str, owner: str) -> Started:
        """A new generation appending to the partial answer of a stopped/interrupted/failed one."""
        async with self.sessions() as s:
            if not await self._may_start(await s.connection(), user_id):
                raise self._too_many()
            old = await s.get(Generation, gen_id)
            if old is None or old.user_id != user_id:
                raise NotFound("generation")
            chat = await s.get(Chat, old.chat_id)
            assistant = await s.get(Message, old.message_id)
            if chat is None or assistant is None:
                raise NotFound("generation")
            if old.status == "active":
                raise Busy()
            if assistant.generation_id != old.id or assistant.status not in (
                    "stopped", "interrupted", "error"):
                raise BadRequest(f"generation {gen_id} is {old.status}; only the latest "
                                 "stopped, interrupted or failed answer can be continued")
            gen = Generation(chat_id=chat.id, message_id=assistant.id, user_id=user_id,
                             provider=old.provider, model=old.model, owner=owner,
                             meta={"continues": old.id})
            assistant.generation_id = gen.id
            assistant.status = "streaming"
            assistant.is_streaming = True
            assistant.completed_at = None
            chat.updated_at = utcnow()
            s.add_all([assistant, gen, chat])
            await _commit_start(s)
            return Started(chat, gen, assistant, None, base_content=assistant.content,
                           base_reasoning=Reasoning.of(assistant))

    @translate_errors
    async def checkpoint_many(self, items: list[Checkpoint]) -> None:
        """Checkpoints of every running generation, in one transaction, without ORM work
        per row (the ORM's bulk UPDATE by primary key cost 30-50 µs of event-loop CPU per
        generation): on PostgreSQL one statement for both tables, its rows as arrays that
        asyncpg encodes in C; elsewhere one Core executemany per table.

        Only what each text gained since this repo's last checkpoint of the generation is
        sent: `substr(content, 1, saved) || tail` (characters, as Python counts them, on
        both databases). A long answer otherwise went whole over the wire every interval.
        `saved` is what this process itself committed: while a generation is active only
        its owner writes its text, and whoever ends it writes the full text."""
        if not items:
            return
        rows = []
        for c in items:
            saved, saved_reasoning = self._saved.get(c.gen, (0, 0))
            rows.append((c, saved, c.content[saved:], saved_reasoning,
                         c.reasoning.text[saved_reasoning:]))
        async with self.sessions() as s:
            conn = await s.connection()
            if conn.dialect.name == "postgresql":
                await conn.execute(_CHECKPOINT_PG, {
                    "gens": [c.gen for c in items], "messages": [c.message for c in items],
                    "saved": [r[1] for r in rows], "tails": [r[2] for r in rows],
                    "rsaved": [r[3] for r in rows], "rtails": [r[4] for r in rows],
                    "started": [c.reasoning.started_at for c in items],
                    "ended": [c.reasoning.ended_at for c in items],
                    "seqs": [c.seq for c in items]})
            else:
                await conn.execute(_CHECKPOINT_MESSAGE, [
                    {"m_id": c.message, "m_saved": saved, "m_tail": tail,
                     "m_rsaved": rsaved, "m_rtail": rtail, "m_started": c.reasoning.started_at,
                     "m_ended": c.reasoning.ended_at} for c, saved, tail, rsaved, rtail in rows])
                await conn.execute(_CHECKPOINT_GENERATION, [{"g_id": c.gen, "g_seq": c.seq}
                                                            for c in items])
            await s.commit()
        for c in items:
            self._saved[c.gen] = (len(c.content), len(c.reasoning.text))

    @translate_errors
    async def finish(self, gen_id: str, status: str, content: str, seq: int, *,
                     usage: dict[str, Any] | None = None, error: dict[str, Any] | None = None,
                     meta: dict[str, Any] | None = None, only_if_active: bool = False,
                     reasoning: Reasoning | None = None,
                     message_meta: dict[str, Any] | None = None) -> Message | None:
        """Write the terminal state. With `only_if_active`, do nothing (and return None)
        unless the generation is still active — so two processes cannot both finish it.
        `reasoning` None leaves the message's reasoning as it is; `message_meta` becomes the
        answer message's metadata."""
        now = utcnow()
        self._saved.pop(gen_id, None)
        q = update(_GENERATION).where(_GENERATION.c.id == gen_id)
        if only_if_active:
            q = q.where(_GENERATION.c.status == "active")
        values: dict[str, Any] = {"status": status, "last_seq": seq, "completed_at": now,
                                  "error": error}
        if meta is not None:
            values["metadata"] = meta
        changes: dict[str, Any] = {
            "content": content, "status": TERMINAL_TO_MESSAGE[status],
            "is_streaming": False, "completed_at": now, "metadata": message_meta}
        if reasoning is not None:
            changes.update(reasoning.columns())
        if usage is not None:
            changes["usage"] = usage
        # The finish path runs for every answer, often for many at the same moment: no
        # reads, no ORM flush. On PostgreSQL one statement (the generation's UPDATE in its
        # WITH clause, no transaction of its own to begin and commit); on SQLite two
        # statements with RETURNING in one transaction.
        set_gen = q.values(values).returning(_GENERATION.c.message_id)
        if self._pg:
            done = set_gen.cte("done")
            async with self._auto.connect() as conn:
                row = (await conn.execute(
                    update(_MESSAGE).where(_MESSAGE.c.id == done.c.message_id)
                    .values(changes).returning(*_MESSAGE.c))).first()
            return None if row is None else _load(Message, row)
        async with self.engine.connect() as conn:
            message_id = (await conn.execute(set_gen)).scalar()
            if message_id is None:
                await conn.rollback()
                return None
            row = (await conn.execute(update(_MESSAGE).where(_MESSAGE.c.id == message_id)
                                      .values(changes).returning(*_MESSAGE.c))).one()
            await conn.commit()
        return _load(Message, row)

    @translate_errors
    async def get_generation(self, user_id: str, gen_id: str) -> Generation:
        async with self.sessions() as s:
            gen = await s.get(Generation, gen_id)
        if gen is None or gen.user_id != user_id:
            raise NotFound("generation")
        return gen

    @translate_errors
    async def generation(self, gen_id: str) -> Generation | None:
        async with self.sessions() as s:
            return await s.get(Generation, gen_id)

    @translate_errors
    async def active_generation(self, chat_id: str) -> Generation | None:
        async with self.sessions() as s:
            return await self._active_generation(s, chat_id)

    async def _active_generation(self, s: AsyncSession, chat_id: str) -> Generation | None:
        return (await s.exec(select(Generation).where(
            Generation.chat_id == chat_id, Generation.status == "active"))).first()

    @translate_errors
    async def chat_state(self, chat_id: str, limit: int) -> ChatState:
        """What a snapshot of the chat shows, read in one session (one connection and
        transaction instead of three): the newest page of messages, the active generation
        with its message, and the latest generation."""
        async with self._auto.connect() as conn:
            messages, has_more = await _page(conn, chat_id, None, limit)
            row = (await conn.execute(_GENERATION_STATE, {"chat": chat_id})).first()
        if row is None:
            return ChatState(messages, has_more, None, None)
        gen = _load(Generation, row)
        if row.m_id is not None and gen.status == "active":
            msg = _load(Message, row, prefix="m_")
            return ChatState(messages, has_more, (gen, msg), None)
        return ChatState(messages, has_more, None, gen)

    @translate_errors
    async def active_with_message(self, chat_id: str) -> tuple[Generation, Message] | None:
        """The active generation and its message read in ONE statement, so the checkpointed
        content and `last_seq` belong together."""
        async with self.sessions() as s:
            return await _active_with_message(s, chat_id)

    @translate_errors
    async def latest_generation(self, chat_id: str) -> Generation | None:
        async with self.sessions() as s:
            return await _latest_generation(s, chat_id)

    @translate_errors
    async def active_generations(self, exclude_owner: str | None = None) -> list[Generation]:
        async with self.sessions() as s:
            q = select(Generation).where(Generation.status == "active")
            if exclude_owner is not None:
                q = q.where(col(Generation.owner).is_distinct_from(exclude_owner))
            return list(await s.exec(q))



_USER = SQLModel.metadata.tables["user"]
_CHAT = SQLModel.metadata.tables["chat"]
_MESSAGE = SQLModel.metadata.tables["message"]
_GENERATION = SQLModel.metadata.tables["generation"]
_SELECT_CHAT = core_select(_CHAT).where(_CHAT.c.id == bindparam("id"))
# A snapshot's generation in one statement: the active one with its message if there is
# one (ONE row, so the checkpointed content and `last_seq` belong together), else the
# latest. An active generation whose message is missing counts as none, as a join would.
_ACTIVE_FIRST: ColumnElement[int] = case(
    ((_GENERATION.c.status == "active") & _MESSAGE.c.id.is_not(None), 0), else_=1)
_GENERATION_STATE = (
    core_select(*_GENERATION.c, *(c.label(f"m_{c.name}") for c in _MESSAGE.c))
    .select_from(_GENERATION.outerjoin(_MESSAGE, _MESSAGE.c.id == _GENERATION.c.message_id))
    .where(_GENERATION.c.chat_id == bindparam("chat"))
    .order_by(_ACTIVE_FIRST, _GENERATION.c.id.desc()).limit(1))
# Bind names differ from the column names: SQLAlchemy reserves those for SET.
_CHECKPOINT_MESSAGE = (
    update(_MESSAGE).where(_MESSAGE.c.id == bindparam("m_id"))
    .values(content=func.substr(_MESSAGE.c.content, 1, bindparam("m_saved"))
            .concat(bindparam("m_tail")),
            reasoning=func.substr(_MESSAGE.c.reasoning, 1, bindparam("m_rsaved"))
            .concat(bindparam("m_rtail")),
            reasoning_started_at=bindparam("m_started"),
            reasoning_ended_at=bindparam("m_ended")))
_CHECKPOINT_GENERATION = (update(_GENERATION).where(_GENERATION.c.id == bindparam("g_id"))
                          .values(last_seq=bindparam("g_seq")))
# PostgreSQL: every row of both tables in one statement, the values as parallel arrays.
_CHECKPOINT_PG = text("""
WITH v AS (
  SELECT * FROM unnest(CAST(:gens AS varchar[]), CAST(:messages AS varchar[]),
                       CAST(:saved AS integer[]), CAST(:tails AS text[]),
                       CAST(:rsaved AS integer[]), CAST(:rtails AS text[]),
                       CAST(:started AS timestamptz[]), CAST(:ended AS timestamptz[]),
                       CAST(:seqs AS integer[]))
    AS v(gen, message, saved, tail, rsaved, rtail, started, ended, seq)
), m AS (
  UPDATE message SET content = substr(message.content, 1, v.saved) || v.tail,
         reasoning = substr(message.reasoning, 1, v.rsaved) || v.rtail,
         reasoning_started_at = v.started, reasoning_ended_at = v.ended
  FROM v WHERE message.id = v.message
)
UPDATE generation SET last_seq = v.seq FROM v WHERE generation.id = v.gen
""")


def _history_query(chat_id: str, upto_message: str | None) -> Select[Any]:
    q = core_select(_MESSAGE).where(_MESSAGE.c.chat_id == chat_id)
    if upto_message:
        q = q.where(_MESSAGE.c.id < upto_message)
    return q.order_by(_MESSAGE.c.id)


async def _history(conn: AsyncConnection, chat_id: str,
                   upto_message: str | None) -> list[Message]:
    return [_load(Message, r) for r in await conn.execute(_history_query(chat_id, upto_message))]


async def _page(conn: AsyncConnection, chat_id: str, before: str | None,
                limit: int) -> tuple[list[Message], bool]:
    q = core_select(_MESSAGE).where(_MESSAGE.c.chat_id == chat_id)
    if before:
        q = q.where(_MESSAGE.c.id < before)
    rows = list(await conn.execute(q.order_by(_MESSAGE.c.id.desc()).limit(limit + 1)))
    return [_load(Message, r) for r in reversed(rows[:limit])], len(rows) > limit


# Model instances without the ORM: a row becomes an instance the way the ORM's own loading
# makes one (the class manager's new instance, its attributes set in its __dict__, no
# __init__: SQLModel table models do not validate there either), ~10 µs instead of ~50-190
# for the constructor. Such instances are transient (in no session); the callers only read
# them or hand them back to this module.
configure_mappers()
_ATTRS: dict[type[SQLModel], list[tuple[str, str]]] = {
    model: [(a.key, a.columns[0].name) for a in sa_inspect(model).column_attrs]
    for model in (User, Chat, Message, Generation)}


def _load(model: type[M], row: Row[Any], prefix: str = "") -> M:
    """The instance of `model` a row (or its columns named `prefix` + column) holds."""
    values = row._mapping
    obj: M = sa_inspect(model).class_manager.new_instance()
    obj.__dict__.update({key: values[prefix + name] for key, name in _ATTRS[model]})
    return obj


def _new(cls: type[M], /, **values: Any) -> M:
    """A new instance of `cls`: `values`, and each other field's default."""
    obj: M = sa_inspect(cls).class_manager.new_instance()
    fields = cls.model_fields
    obj.__dict__.update({key: values[key] if key in values
                         else fields[key].get_default(call_default_factory=True)
                         for key, _name in _ATTRS[cls]})
    return obj


def _columns(obj: SQLModel) -> dict[str, Any]:
    """An instance's values by column name (an INSERT's)."""
    values = obj.__dict__
    return {name: values[key] for key, name in _ATTRS[type(obj)]}


async def _active_with_message(s: AsyncSession,
                               chat_id: str) -> tuple[Generation, Message] | None:
    row = (await s.exec(select(Generation, Message)
                        .join(Message, col(Message.id) == col(Generation.message_id))
                        .where(Generation.chat_id == chat_id,
                               Generation.status == "active"))).first()
    return (row[0], row[1]) if row else None


async def _latest_generation(s: AsyncSession, chat_id: str) -> Generation | None:
    return (await s.exec(select(Generation).where(Generation.chat_id == chat_id)
                         .order_by(col(Generation.id).desc()).limit(1))).first()


async def _commit_start(s: AsyncSession) -> None:
    """Commit a new generation; the one-active-per-chat index refusing it means busy."""
    try:
        await s.commit()
    except IntegrityError:
        await s.rollback()
        raise Busy() from None


async def _owned_chat(s: AsyncSession, user_id: str, chat_id: str) -> Chat:
    """The chat if it belongs to the user; another user's chat is not found, like a
    missing one (never reveal that it exists)."""
    chat = await s.get(Chat, chat_id)
    if chat is None or chat.user_id != user_id:
        raise NotFound("chat")
    return chat


def _title_from(content: str) -> str:
    line = " ".join(content.split())
    return (line[:57] + "…") if len(line) > 60 else (line or "New chat")
