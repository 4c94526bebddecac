"""A FastAPI app that embeds chatcast: its own login (a signed session cookie), its own
model logic (retrieval over its own documents, then an OpenAI-compatible model asked with
that context), chatcast mounted under /chat for the streaming, and a webhook receiver that
learns of every answer that ends.

    MODEL_BASE_URL=http://127.0.0.1:11434/v1 MODEL_NAME=llama3.2 \\
    CHATCAST_WEBHOOK_URL=http://127.0.0.1:8080/webhooks/chatcast \\
    CHATCAST_WEBHOOK_SECRET=change-me \\
    uvicorn app:app --app-dir examples/fastapi-host --port 8080

Open http://127.0.0.1:8080/, sign in with any name, and chat at /chat/.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from itsdangerous import BadSignature, URLSafeSerializer
from starlette.requests import HTTPConnection

import chatcast
from chatcast.webhooks import WebhookVerificationError, verify

log = logging.getLogger("fastapi-host")

# -- the host's own login ---------------------------------------------------------------------

SESSION_COOKIE = "host_session"
sessions = URLSafeSerializer(os.environ.get("HOST_SESSION_SECRET", "dev-only-secret"),
                             salt="host-login")


def authenticate(conn: HTTPConnection) -> str | None:
    """chatcast's identity hook: the user the host's session cookie names, else None (and
    then CHATCAST_AUTH decides: `token` below, so a stranger is refused)."""
    value = conn.cookies.get(SESSION_COOKIE)
    if not value:
        return None
    try:
        name = sessions.loads(value)
    except BadSignature:
        return None
    return f"host-{name}" if isinstance(name, str) else None


# -- the host's own model logic ---------------------------------------------------------------


@dataclass(frozen=True)
class Doc:
    title: str
    url: str
    text: str


DOCS = [
    Doc("Returns", "https://example.com/help/returns",
        "Items can be returned within 30 days of delivery, unused and in their box."),
    Doc("Shipping", "https://example.com/help/shipping",
        "Orders ship within two working days; express delivery takes one day."),
    Doc("Warranty", "https://example.com/help/warranty",
        "Every device has a two-year warranty covering manufacturing defects."),
]


def retrieve(question: str, k: int = 2) -> list[Doc]:
    """The documents sharing the most words with the question (a stand-in for a vector
    search)."""
    words = set(re.findall(r"\w+", question.lower()))
    scored = [(len(words & set(re.findall(r"\w+", d.text.lower() + " " + d.title.lower()))),
               d) for d in DOCS]
    return [d for score, d in sorted(scored, key=lambda s: -s[0]) if score][:k]


class RetrievalProvider:
    """Finds the documents for the question, tells chatcast the sources, and streams the
    answer of an OpenAI-compatible model asked with them. A stop cancels `answer`, which
    closes the model's HTTP stream (the `async with` blocks)."""

    def __init__(self, base_url: str, api_key: str, model: str) -> None:
        self.default_model = model
        self.http = httpx.AsyncClient(base_url=base_url, trust_env=False,
                                      headers={"Authorization": f"Bearer {api_key}"},
                                      timeout=httpx.Timeout(60, connect=10))

    async def answer(self, messages: list[chatcast.ChatMessage],
                     context: chatcast.Context) -> AsyncIterator[chatcast.Output]:
        question = next((m.content for m in reversed(messages) if m.role == "user"), "")
        docs = retrieve(question)
        yield chatcast.Metadata({"sources": [{"title": d.title, "url": d.url} for d in docs]})
        notes = "\n".join(f"[{d.title}] {d.text}" for d in docs) or "(nothing found)"
        prompt = [{"role": "system",
                   "content": f"Answer from these documents only:\n{notes}"},
                  *({"role": m.role, "content": m.content} for m in messages
                    if m.role != "system")]
        body = {"model": context.model, "stream": True, "messages": prompt,
                "user": context.user_id}
        async with self.http.stream("POST", "/chat/completions", json=body) as response:
            response.raise_for_status()  # a 429/5xx is retried by chatcast, then fallback
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                for choice in json.loads(line[6:]).get("choices", []):
                    if text := (choice.get("delta") or {}).get("content"):
                        yield text

    async def aclose(self) -> None:
        await self.http.aclose()


# -- what the host does when an answer ends ---------------------------------------------------


async def on_done(event: chatcast.AnswerEnded) -> None:
    log.info("answer %s done: %d characters", event.generation_id, len(event.content))


chat = chatcast.create_app(
    providers={"rag": RetrievalProvider(
        os.environ.get("MODEL_BASE_URL", "http://127.0.0.1:11434/v1"),
        os.environ.get("MODEL_API_KEY", "none"), os.environ.get("MODEL_NAME", "llama3.2"))},
    provider="rag",
    auth="token",  # no session cookie: refused (API tokens still work)
    authenticate=authenticate,
    on_done=on_done,
)

# -- the host's app ---------------------------------------------------------------------------

app = FastAPI()
app.mount("/chat", chat)

PAGE = """<!doctype html><title>Host</title>
<form method="post" action="/login"><label>Name <input name="name" required></label>
<button>Sign in</button></form>"""


@app.get("/", response_class=HTMLResponse)
async def home() -> str:
    return PAGE


@app.post("/login")
async def login(request: Request) -> Response:
    """A stand-in for the host's real login: any name signs in."""
    name = parse_qs((await request.body()).decode()).get("name", [""])[0].strip()
    if not name:
        return RedirectResponse("/", status_code=303)
    response = RedirectResponse("/chat/", status_code=303)
    response.set_cookie(SESSION_COOKIE, sessions.dumps(name[:40]), httponly=True,
                        samesite="lax")
    return response


@app.get("/healthz")
async def healthz() -> dict[str, bool]:
    return {"ok": True}


@app.post("/webhooks/chatcast")
async def chatcast_webhook(request: Request) -> Response:
    """The host's back end hears of every ended answer (verified; deduplicated by id)."""
    body = await request.body()
    try:
        event = verify(body, request.headers, os.environ["CHATCAST_WEBHOOK_SECRET"])
    except WebhookVerificationError:
        return Response(status_code=400)
    if received := os.environ.get("HOST_WEBHOOK_LOG"):  # where the tests read them
        await asyncio.to_thread(_append, Path(received), json.dumps(event))
    return Response(status_code=204)


def _append(path: Path, line: str) -> None:
    with path.open("a") as out:
        out.write(line + "\n")
