"""Provider registry: which providers are configured, which one a chat uses, and the stream
that the runner consumes (retry before the first token and fallback live here, nowhere else)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

from chatcast.core.retry import Backoff
from chatcast.providers.base import (
    ChatMessage,
    Chunk,
    Provider,
    ProviderError,
    ProviderFailure,
    ProviderStreamBroken,
    ProviderUnavailable,
    StreamParams,
    Usage,
)
from chatcast.providers.custom import Context, CustomProvider, as_provider, load
from chatcast.providers.demo import DemoProvider
from chatcast.providers.history import trim_history
from chatcast.providers.resilience import guarded, scenario

__all__ = ["ChatMessage", "Chunk", "Context", "Provider", "ProviderError", "ProviderFailure",
           "ProviderStreamBroken", "ProviderUnavailable", "Registry", "RetryPolicy",
           "StreamParams", "Usage", "trim_history"]

log = logging.getLogger("chatcast.providers")


@runtime_checkable
class NonStreaming(Protocol):
    """A provider that can also answer with one plain request (the last-resort fallback)."""

    async def complete(self, messages: list[ChatMessage], *, model: str,
                       params: StreamParams) -> list[Chunk]: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 2
    base_s: float = 0.5
    max_s: float = 20.0
    idle_timeout_s: float = 60.0
    nonstream_fallback: bool = False

    @property
    def backoff(self) -> Backoff:
        """Pauses between retries of one provider: exponential, jittered, the upstream's
        Retry-After honoured."""
        return Backoff(self.base_s, self.max_s, jitter=0.5)


@dataclass(frozen=True, slots=True)
class _Attempt:
    provider: str
    model: str
    streaming: bool


def _ignore(provider: str, scenario: str) -> None:
    pass


class Registry:
    """The configured providers, built once per process. `on_failure(provider, scenario)`
    is told of every failed attempt (scenario: before_first_token, mid_stream,
    idle_timeout) and of every answer that came from a fallback (fallback_used, with the
    provider that was asked)."""

    def __init__(self, providers: dict[str, Provider], default: str,
                 default_model: str | None = None, fallback: list[str] | None = None,
                 policy: RetryPolicy | None = None) -> None:
        if default not in providers:
            raise ValueError(f"provider {default!r} is not configured")
        self.providers = providers
        self.default = default
        self.default_model = default_model or providers[default].default_model
        self.fallback = [p for p in (fallback or []) if p in providers]
        self.policy = policy or RetryPolicy()
        self.on_failure: Callable[[str, str], None] = _ignore

    @classmethod
    def from_settings(cls, settings: Any,
                      custom: Mapping[str, object] | None = None) -> Registry:
        """Demo always; OpenAI when it has a key or a base URL (local servers need no key);
        Gemini when it has a key; the application's own providers, from CHATCAST_PROVIDERS
        and then `custom` (a name given again replaces the earlier provider). Default:
        CHATCAST_PROVIDER, else the first of OpenAI and Gemini configured, else demo.
        A custom provider that cannot be used raises `ProviderConfigError`."""
        providers: dict[str, Provider] = {
            "demo": DemoProvider(settings.demo_tokens_per_s, settings.demo_max_tokens),
        }
        timeouts = {"connect_timeout_s": settings.provider_connect_timeout_s,
                    "idle_timeout_s": settings.provider_idle_timeout_s}
        # SDKs are imported only when configured: google-genai alone takes a while to import.
        if settings.openai_api_key or settings.openai_base_url:
            from chatcast.providers.openai import OpenAIProvider
            from chatcast.providers.think import ThinkTags
            providers["openai"] = OpenAIProvider(
                api_key=settings.openai_api_key, base_url=settings.openai_base_url,
                wire=settings.openai_wire, think_tags=ThinkTags.parse(settings.think_tags),
                think_open_models=settings.think_open_models,
                reasoning_summary=settings.openai_reasoning_summary or None,
                reasoning_effort=settings.openai_reasoning_effort, **timeouts)
        if settings.gemini_api_key:
            from chatcast.providers.gemini import GeminiProvider
            providers["gemini"] = GeminiProvider(
                api_key=settings.gemini_api_key, base_url=settings.gemini_base_url,
                include_thoughts=settings.gemini_include_thoughts,
                thinking_budget=settings.gemini_thinking_budget, **timeouts)
        providers.update(load(settings.providers))
        for name, obj in (custom or {}).items():
            providers[name] = as_provider(name, obj)
        default = settings.provider or next(
            (p for p in ("openai", "gemini") if p in providers), "demo")
        fallback = [p.strip() for p in settings.fallback.split(",") if p.strip()]
        unknown = [p for p in fallback if p not in providers]
        if unknown:
            log.warning("fallback providers not configured, ignored: %s", ", ".join(unknown))
        policy = RetryPolicy(
            max_retries=settings.provider_max_retries,
            base_s=settings.provider_retry_base_s,
            max_s=settings.provider_retry_max_s,
            idle_timeout_s=settings.provider_idle_timeout_s,
            nonstream_fallback=settings.provider_nonstream_fallback,
        )
        return cls(providers, default, settings.model, fallback, policy)

    def models(self) -> list[dict[str, Any]]:
        return [{"provider": name, "model": self.default_model if name == self.default
                 else p.default_model, "default": name == self.default}
                for name, p in self.providers.items()]

    def resolve(self, provider: str | None, model: str | None) -> tuple[str, str]:
        """The (provider, model) a chat uses: its own choice if configured, else the default."""
        name = provider if provider in self.providers else self.default
        if model:
            return name, model
        if name == self.default:
            return name, self.default_model
        return name, self.providers[name].default_model

    async def stream(self, provider: str, model: str, messages: list[ChatMessage],
                     params: StreamParams, meta: dict[str, Any],
                     context: Context | None = None) -> AsyncGenerator[Chunk, None]:
        """The chunks of one answer.

        Before the first chunk, a `ProviderUnavailable` is retried with backoff (honouring
        Retry-After), then the next provider of the fallback chain is tried (with the same
        retries), then, if enabled, `provider` once without streaming. Once a chunk has
        been yielded nothing is restarted: a failure raises `ProviderStreamBroken`.
        `ProviderError` is never retried. `meta` receives: provider, fallback,
        non_streaming, retries, errors. `context` is handed to custom providers (with the
        model of the attempt)."""
        meta.update(provider=provider, fallback=None, non_streaming=False, retries=0,
                    errors=[])
        if provider not in self.providers:
            raise ProviderError(f"provider {provider!r} is not configured")
        last: ProviderUnavailable | None = None
        for attempt in self._plan(provider, model):
            for retry in range(self.policy.max_retries + 1 if attempt.streaming else 1):
                if retry:
                    assert last is not None
                    await asyncio.sleep(self.policy.backoff.delay(
                        retry - 1, retry_after=last.retry_after))
                    meta["retries"] += 1
                meta.update(provider=attempt.provider, non_streaming=not attempt.streaming,
                            fallback=attempt.provider if attempt.provider != provider else None)
                flowed = False
                p = self.providers[attempt.provider]
                chunks = guarded(self._open(attempt, messages, params, context),
                                 label=getattr(p, "label", p.name),
                                 idle_timeout_s=self.policy.idle_timeout_s)
                try:
                    async for chunk in chunks:
                        if not flowed and (attempt.provider != provider
                                           or not attempt.streaming):
                            self.on_failure(provider, "fallback_used")
                        flowed = True
                        yield chunk
                    return
                except ProviderFailure as exc:
                    self.on_failure(attempt.provider, scenario(exc, flowed=flowed))
                    meta["errors"].append(f"{attempt.provider}: {exc.message}")
                    if not isinstance(exc, ProviderUnavailable):
                        raise
                    if flowed:  # cannot happen with our providers; keep the promise anyway
                        raise ProviderStreamBroken(exc.message, status=exc.status) from exc
                    last = exc
                finally:
                    await chunks.aclose()
        assert last is not None
        raise last

    async def aclose(self) -> None:
        for p in self.providers.values():
            await p.aclose()

    def _plan(self, provider: str, model: str) -> list[_Attempt]:
        """The provider itself, each fallback with its own default model, then (if enabled)
        the provider itself without streaming."""
        plan = [_Attempt(provider, model, True)]
        plan += [_Attempt(name, self.resolve(name, None)[1], True)
                 for name in self.fallback if name != provider]
        if self.policy.nonstream_fallback and isinstance(self.providers[provider], NonStreaming):
            plan.append(_Attempt(provider, model, False))
        return plan

    def _open(self, attempt: _Attempt, messages: list[ChatMessage], params: StreamParams,
              context: Context | None) -> AsyncIterator[Chunk]:
        p = self.providers[attempt.provider]
        if isinstance(p, CustomProvider) and context is not None:
            return p.answer(messages, replace(context, model=attempt.model, params=params))
        if attempt.streaming:
            return p.stream(messages, model=attempt.model, params=params)
        assert isinstance(p, NonStreaming)
        return _replay(p.complete(messages, model=attempt.model, params=params))


async def _replay(answer: Awaitable[list[Chunk]]) -> AsyncIterator[Chunk]:
    for chunk in await answer:
        yield chunk
