"""Provider registry: which providers are configured, which one a chat uses, and the stream
that the runner consumes (retry before the first token and fallback live here, nowhere else)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from providers.base import (
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
from providers.demo import DemoProvider

__all__ = ["ChatMessage", "Chunk", "Provider", "ProviderError", "ProviderFailure",
           "ProviderStreamBroken", "ProviderUnavailable", "Registry", "StreamParams", "Usage"]


class Registry:
    """The configured providers, built once per process."""

    def __init__(self, providers: dict[str, Provider], default: str,
                 default_model: str | None = None, fallback: list[str] | None = None) -> None:
        if default not in providers:
            raise ValueError(f"provider {default!r} is not configured")
        self.providers = providers
        self.default = default
        self.default_model = default_model or providers[default].default_model
        self.fallback = [p for p in (fallback or []) if p in providers and p != default]

    @classmethod
    def from_settings(cls, settings: Any) -> Registry:
        providers: dict[str, Provider] = {
            "demo": DemoProvider(settings.demo_tokens_per_s, settings.demo_max_tokens),
        }
        default = settings.provider or "demo"
        fallback = [p.strip() for p in settings.fallback.split(",") if p.strip()]
        return cls(providers, default, settings.model, fallback)

    def models(self) -> list[dict[str, Any]]:
        return [{"provider": name, "model": p.default_model, "default": name == self.default}
                for name, p in self.providers.items()]

    def resolve(self, provider: str | None, model: str | None) -> tuple[str, str]:
        """The (provider, model) a chat uses: its own choice if configured, else the default."""
        name = provider if provider in self.providers else self.default
        if model:
            return name, model
        if name == self.default:
            return name, self.default_model
        return name, self.providers[name].default_model

    def stream(self, provider: str, model: str, messages: list[ChatMessage],
               params: StreamParams, meta: dict[str, Any]) -> AsyncIterator[Chunk]:
        """The chunks of one answer. `meta` receives retries / fallback details."""
        meta.setdefault("retries", 0)
        return self.providers[provider].stream(messages, model=model, params=params)

    async def aclose(self) -> None:
        for p in self.providers.values():
            await p.aclose()
