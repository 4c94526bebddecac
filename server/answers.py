"""Where an answer comes from: the provider registry (retries and fallbacks live there) or,
when the settings allow it, the response cache (server/cache.py).

- At temperature 0 with `CHATCAST_CACHE`, an identical earlier request answers at once (not
  for a regenerate: its user asks for a fresh answer).
- With `CHATCAST_CACHE_LAST_FALLBACK`, when every provider failed before the first token, a
  cached answer to the same request is served instead of the error.
- A completed answer of the provider that was asked is stored, with its reasoning, for the
  next identical request (not a fallback's answer, not a stopped or failed one).

The generation's metadata says which it was (`cached`, `cache`, `cached_at`) and so does the
answer message's (`message_meta`), which also keeps what the provider sent as metadata
(`Chunk.metadata`: sources, citations).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from chatcast.providers import (
    ChatMessage,
    Chunk,
    Context,
    ProviderFailure,
    Registry,
    StreamParams,
)
from chatcast.server import metrics
from chatcast.server.cache import MAX_ANSWER_CHARS, CachedAnswer, ResponseCache, cache_key, replay
from chatcast.server.settings import Settings
from chatcast.store.models import Generation

log = logging.getLogger("chatcast.runner")

#: Where the generation's metadata keeps what the provider sent for the answer message.
ANSWER_METADATA = "answer_metadata"


class Answers:
    def __init__(self, settings: Settings, registry: Registry,
                 store: ResponseCache | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store

    def _key(self, gen: Generation, history: list[ChatMessage],
             params: StreamParams) -> str | None:
        s = self.settings
        if self.store is None or not (s.cache_last_fallback
                                      or (s.cache and params.temperature == 0)):
            return None
        return cache_key(scope="*" if s.cache_shared else gen.user_id, provider=gen.provider,
                         model=gen.model, messages=history, system_prompt=s.system_prompt,
                         params=params)

    async def stream(self, gen: Generation, history: list[ChatMessage],
                     meta: dict[str, Any]) -> AsyncGenerator[Chunk, None]:
        """The chunks of the answer to `history`; `meta` is the generation's metadata."""
        params = StreamParams(temperature=self.settings.temperature)
        key = self._key(gen, history, params)
        store = self.store
        if (store is not None and key is not None and self.settings.cache
                and params.temperature == 0 and not (gen.meta or {}).get("regenerates")):
            hit = await store.get(key)
            metrics.CACHE_LOOKUPS.labels("answer", "miss" if hit is None else "hit").inc()
            if hit is not None:
                meta.update(provider=hit.provider, fallback=None, non_streaming=False,
                            retries=0, errors=[], **_cached("hit", hit))
                async for chunk in replay(hit, self.settings.cache_tokens_per_s):
                    yield chunk
                return
        texts: list[str] = []
        reasonings: list[str] = []
        usage: dict[str, Any] | None = None
        context = Context(gen.chat_id, gen.user_id, gen.id, gen.message_id, gen.model, params,
                          dict(gen.meta or {}))
        try:
            async for chunk in self.registry.stream(gen.provider, gen.model, history, params,
                                                    meta, context):
                if chunk.metadata:
                    meta[ANSWER_METADATA] = {**meta.get(ANSWER_METADATA, {}),
                                             **chunk.metadata}
                if chunk.text:
                    texts.append(chunk.text)
                if chunk.reasoning:
                    reasonings.append(chunk.reasoning)
                if chunk.usage is not None:
                    usage = chunk.usage.as_dict()
                yield chunk
        except ProviderFailure:
            if (texts or reasonings or store is None or key is None
                    or not self.settings.cache_last_fallback):
                raise
            hit = await store.get(key)
            metrics.CACHE_LOOKUPS.labels("last_fallback", "miss" if hit is None else "hit").inc()
            if hit is None:
                raise
            self.registry.on_failure(gen.provider, "fallback_used")
            meta.update(_cached("last_fallback", hit))
            log.warning("every provider failed: answered from the cache",
                        extra={"gen": gen.id, "chat": gen.chat_id})
            async for chunk in replay(hit, self.settings.cache_tokens_per_s):
                yield chunk
            return
        # Reached only when the provider ended the answer (a stop cancels this generator).
        text, reasoning = "".join(texts), "".join(reasonings)
        if (store is not None and key is not None and text and meta.get("fallback") is None
                and len(text) + len(reasoning) <= MAX_ANSWER_CHARS):
            await store.put(key, CachedAnswer(text, gen.provider, gen.model, usage,
                                              time.time(), reasoning))
            metrics.CACHE_STORES.inc()


def _cached(use: str, hit: CachedAnswer) -> dict[str, Any]:
    """What a generation's metadata says of an answer from the cache."""
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(hit.stored_at))
    return {"cached": True, "cache": use, "cached_at": at}


def message_meta(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The answer message's metadata: what the provider sent as metadata, and whether (and
    how) the answer came from the cache."""
    out: dict[str, Any] = dict(meta.get(ANSWER_METADATA) or {})
    if meta.get("cached"):
        out.update({key: meta[key] for key in ("cached", "cache", "cached_at")})
    return out or None
