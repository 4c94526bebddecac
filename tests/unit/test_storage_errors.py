"""What counts as "the database is unavailable" (real drivers, real errors), and that HTTP
answers the protocol's JSON error for it and for anything unexpected."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chatcast.core.errors import ChatcastError, NotFound, StorageUnavailable
from chatcast.server.app import on_chatcast_error, on_unexpected
from chatcast.store.db import make_engine
from chatcast.store.errors import is_unavailable, translate_errors
from tests.helpers.ports import free_port


async def _query(url: str) -> None:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT * FROM no_such_table"))
    finally:
        await engine.dispose()


async def test_a_postgres_nobody_listens_on_is_unavailable() -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none"
    with pytest.raises(Exception) as caught:
        await _query(url)
    assert is_unavailable(caught.value)


async def test_a_failing_statement_is_not_an_outage(tmp_path: Path) -> None:
    with pytest.raises(Exception) as caught:
        await _query(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    assert "no_such_table" in str(caught.value)
    assert not is_unavailable(caught.value)


async def test_translate_errors_keeps_refusals_and_bugs_as_they_are() -> None:
    @translate_errors
    async def refused() -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    @translate_errors
    async def not_found() -> None:
        raise NotFound("chat")

    @translate_errors
    async def bug() -> None:
        raise KeyError("x")

    with pytest.raises(StorageUnavailable) as caught:
        await refused()
    assert caught.value.retryable and caught.value.http_status == 503
    assert caught.value.body()["retry_after"] == 2
    with pytest.raises(NotFound):
        await not_found()
    with pytest.raises(KeyError):
        await bug()


async def test_http_errors_are_json_with_retry_after_and_never_plain_text() -> None:
    async def storage(request: Request) -> Response:
        raise StorageUnavailable()

    async def boom(request: Request) -> Response:
        raise RuntimeError("a bug")

    app = Starlette(routes=[Route("/storage", storage), Route("/boom", boom)],
                    exception_handlers={ChatcastError: on_chatcast_error,
                                        Exception: on_unexpected})
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        r = await http.get("/storage")
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        assert r.json()["error"]["code"] == "storage_unavailable"
        assert r.json()["error"]["retryable"] is True
        r = await http.get("/boom")
        assert r.status_code == 500
        assert r.headers["content-type"] == "application/json"
        assert r.json()["error"] == {"code": "internal", "message": "internal error",
                                     "retryable": True}
