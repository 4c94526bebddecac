"""Helpers for tests against one real server process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import Row, text

from chatcast.store.db import make_engine
from tests.conftest import ServerFactory
from tests.helpers.clients import WSClient, cookie_header
from tests.helpers.server import ServerProcess


@dataclass
class User:
    """One browser: an HTTP client holding the session cookie."""

    srv: ServerProcess
    http: httpx.AsyncClient

    @property
    def cookie(self) -> str:
        return cookie_header(self.http)

    async def new_chat(self) -> str:
        r = await self.http.post("/api/chats", json={})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def ws(self) -> WSClient:
        return await WSClient.connect(self.srv.ws_url, cookie=self.cookie)

    async def messages(self, chat: str) -> list[dict[str, Any]]:
        r = await self.http.get(f"/api/chats/{chat}/messages", params={"limit": 200})
        assert r.status_code == 200, r.text
        return list(r.json()["messages"])

    async def message(self, chat: str, message_id: str) -> dict[str, Any]:
        return next(m for m in await self.messages(chat) if m["id"] == message_id)


async def make_user(srv: ServerProcess) -> AsyncIterator[User]:
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as http:
        r = await http.get("/api/chats")  # the response sets the identity cookie
        assert r.status_code == 200 and http.cookies
        yield User(srv, http)


@pytest.fixture
async def srv(server: ServerFactory) -> ServerProcess:
    """A server whose demo model streams at 100 tokens/s (a reply takes ~1.5 s)."""
    return await server(env={"CHATCAST_DEMO_TOKENS_PER_S": "100"})


@pytest.fixture
async def slow_srv(server: ServerFactory) -> ServerProcess:
    """A server streaming at 20 tokens/s, so there is time to act mid-stream."""
    return await server(env={"CHATCAST_DEMO_TOKENS_PER_S": "20"})


@pytest.fixture
async def alice(srv: ServerProcess) -> AsyncIterator[User]:
    async for user in make_user(srv):
        yield user


@pytest.fixture
async def bob(srv: ServerProcess) -> AsyncIterator[User]:
    async for user in make_user(srv):
        yield user


async def sql_rows(srv: ServerProcess, query: str,
                   **params: Any) -> Sequence[Row[*tuple[Any, ...]]]:
    """The rows of one query on the server's own database, read straight from SQL and not
    through the server, so that what it answered can be checked against what it stored."""
    engine = make_engine(srv.database_url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text(query), params)).all()
    finally:
        await engine.dispose()


async def row_counts(srv: ServerProcess) -> dict[str, int]:
    """Rows per table, read straight from SQL (to prove bad input changed nothing)."""
    tables = ("user", "chat", "message", "generation")
    [counts] = await sql_rows(srv, "SELECT " + ", ".join(
        f'(SELECT count(*) FROM "{table}")' for table in tables))
    return {table: int(count) for table, count in zip(tables, counts, strict=True)}


async def sql_message(srv: ServerProcess, message_id: str) -> tuple[str, str]:
    """(content, status) of a message, straight from SQL."""
    [row] = await sql_rows(srv, "SELECT content, status FROM message WHERE id = :id",
                           id=message_id)
    return str(row[0]), str(row[1])
