"""One Settings object, read from the environment or a `.env` file."""

from __future__ import annotations

import logging
import re
import secrets
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from chatcast.providers.think import ThinkTags
from chatcast.store.db import normalize_url, sqlite_url

log = logging.getLogger("chatcast")


def _env(name: str) -> AliasChoices:
    """Accept both the documented bare name (e.g. DATABASE_URL) and CHATCAST_ prefixed."""
    return AliasChoices(name, f"CHATCAST_{name}")


class Settings(BaseSettings):
    """Every setting of chatcast: from the environment (`CHATCAST_<NAME>`, a few bare names
    such as `DATABASE_URL`), a `.env` file, or keyword arguments (by field name). The README's
    configuration table documents each."""

    model_config = SettingsConfigDict(env_prefix="CHATCAST_", env_file=".env", extra="ignore",
                                      populate_by_name=True)

    # Components
    database_url: str | None = Field(default=None, validation_alias=_env("DATABASE_URL"))
    redis_url: str | None = Field(default=None, validation_alias=_env("REDIS_URL"))
    # REDIS_URL names Redis Cluster seed nodes (comma-separated): the bus and the limits
    # shard by chat (server/bus/redis_cluster.py).
    redis_cluster: bool = False
    data_dir: Path = Path("data")

    # Identity
    auth: Literal["anonymous", "token", "jwt"] = "anonymous"
    secret_key: str | None = None
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_jwks_file: Path | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    ticket_ttl_s: float = 60.0

    # Providers
    provider: str | None = None
    # The application's own providers: "name=module:attribute,..." (see providers/custom.py)
    providers: str = ""
    model: str | None = None
    fallback: str = ""
    demo_tokens_per_s: float = 40.0
    demo_max_tokens: int | None = None
    demo_timestamps: bool = False  # benchmarks: deltas carry `ts`, when the provider emitted
    openai_api_key: str | None = Field(default=None, validation_alias=_env("OPENAI_API_KEY"))
    openai_base_url: str | None = Field(default=None, validation_alias=_env("OPENAI_BASE_URL"))
    gemini_api_key: str | None = Field(default=None, validation_alias=_env("GEMINI_API_KEY"))
    gemini_base_url: str | None = Field(default=None, validation_alias=_env("GEMINI_BASE_URL"))
    system_prompt: str | None = None
    temperature: float | None = Field(default=None, ge=0)  # None: the provider's default
    history_max_chars: int = 48_000
    provider_max_retries: int = 2
    provider_retry_base_s: float = 0.5
    provider_retry_max_s: float = 20.0
    provider_connect_timeout_s: float = 10.0
    provider_idle_timeout_s: float = 60.0
    provider_nonstream_fallback: bool = False
    # Reasoning. Inline tags in answer text (OpenAI-compatible servers without a reasoning
    # parser): "<open> <close>", or "off"; models (a regular expression) whose chat template
    # opens the reasoning in the prompt, so they only ever write the closing tag.
    think_tags: str = "<think> </think>"
    think_open_models: str = ""
    openai_wire: Literal["chat", "responses"] = "chat"
    openai_reasoning_summary: str = "auto"  # Responses API: reasoning={"summary": ...}; "" off
    openai_reasoning_effort: str | None = None
    gemini_include_thoughts: bool = True
    gemini_thinking_budget: int | None = None  # tokens; 0 off, -1 dynamic; unset: the model's
    # Response cache (server/cache.py)
    cache: bool = False
    cache_last_fallback: bool = False
    cache_ttl_s: float = Field(default=3600.0, gt=0)
    cache_max_entries: int = Field(default=1000, ge=1)
    cache_shared: bool = False  # one user's cached answer may answer another user
    cache_tokens_per_s: float = Field(default=0.0, ge=0)  # pace of a cached answer (0: at once)
    # Adaptive coalescing: the most an overloaded process holds a delta back (0: never).
    coalesce_max_ms: float = 40.0

    # Limits
    max_message_chars: int = 32_000
    history_page_size: int = 50
    outbox_max_frames: int = 256
    outbox_max_bytes: int = 1 << 20
    max_subscriptions_per_socket: int = 100
    messages_per_minute: float = 30.0
    max_generations_per_user: int = 3
    max_sockets_per_user: int = 20
    client_reports_per_minute: float = 30.0  # POST /api/client-errors and client-events
    ws_frames_per_s: float = 20.0
    ws_frame_burst: int = 100
    ws_idle_timeout_s: float = 300.0

    # Timing
    checkpoint_interval_s: float = 1.0
    lease_ttl_s: float = 10.0
    log_retention_s: float = 900.0
    ws_ping_interval_s: float = 20.0
    # permessage-deflate keeps ~43 KiB of zlib state per socket (measured: 69 vs 26 KiB per
    # subscribed socket) and compresses every frame for each socket separately; deltas are
    # tens of bytes. Off unless asked for.
    ws_compression: bool = False
    redis_max_connections: int = 64  # command connections per process (pub/sub: one more)
    sse_heartbeat_s: float = 15.0
    poll_max_wait_s: float = 30.0
    shutdown_grace_s: float = 10.0
    #: How long an idle HTTP keep-alive connection stays open. Longer than any load
    #: balancer in front keeps its idle connections (AWS ALB: 60 s), or the balancer reuses
    #: one the server is closing and its client sees a 502; and far from the 5 s after
    #: which httpx (and others) stop reusing one, or a request sent at 4.99 s meets the
    #: close ("Server disconnected without sending a response").
    http_keepalive_s: float = 75.0
    generation_timeout_s: float = 600.0

    # Outgoing webhook (server/webhooks.py): every ended answer, signed with the secret
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_retry_base_s: float = Field(default=1.0, ge=0)
    webhook_retry_max_s: float = Field(default=60.0, ge=0)
    webhook_timeout_s: float = Field(default=10.0, gt=0)

    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
        return value

    @field_validator("think_tags")
    @classmethod
    def _check_think_tags(cls, value: str) -> str:
        ThinkTags.parse(value)  # a ValueError names the problem
        return value

    @field_validator("think_open_models")
    @classmethod
    def _check_pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @property
    def db_url(self) -> str:
        if self.database_url:
            return normalize_url(self.database_url)
        return sqlite_url(self.data_dir.resolve())

    @property
    def bus_url(self) -> str:
        return self.redis_url or "memory://"

    def signing_key(self) -> str:
        """CHATCAST_SECRET_KEY, else a key generated once and kept in the data folder."""
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret_key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
            log.info("generated a new signing key (set CHATCAST_SECRET_KEY to choose one)",
                     extra={"path": str(path.resolve())})
        return path.read_text().strip()
