"""A FastAPI app of its own that mounts chatcast at /chat, as an application would (run by
uvicorn in tests/embed/test_mounted.py). Its identity hook reads its own header or cookie;
`boom` stands for a session store that is down (the hook raises)."""

from __future__ import annotations

import logging
import os

from fastapi import FastAPI
from starlette.requests import HTTPConnection

import chatcast


def authenticate(conn: HTTPConnection) -> str | None:
    who = conn.headers.get("x-host-user") or conn.cookies.get("host_user")
    if who == "boom":
        raise RuntimeError("session store unreachable")
    return who or None


logging.basicConfig(level=logging.INFO)  # the host's own logging, chatcast's included
chat = chatcast.create_app(auth="token", authenticate=authenticate)
# HOST_LIFESPAN=1: the host starts chatcast with its own lifespan instead of the first request.
app = FastAPI(lifespan=chat.lifespan if os.environ.get("HOST_LIFESPAN") else None)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"host": "ok"}


app.mount("/chat", chat)
