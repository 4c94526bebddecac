"""chatcast: a streaming chat server for LLM applications, and the streaming layer an
application embeds.

The public API is what this module exports (`__all__`) and the modules `chatcast.webhooks`
(receiving the webhook) and `chatcast.client` (the async Python client); it is typed,
documented and kept stable:

- `create_app(...)`: the ASGI app (with no arguments, the one `chatcast serve` runs,
  configured from the environment); run it, or mount it in a Starlette or FastAPI app.
- `Settings`: every setting (`CHATCAST_*` in the environment, or keyword arguments of
  `create_app`).
- The provider role and what a provider yields: `Provider` (the built-in providers' role),
  `AnswerFunction` (`async def answer(messages, context)`), `ChatMessage`, `Context`,
  `StreamParams`, and the outputs `Text`, `Reasoning`, `Usage`, `Metadata`, `Chunk` (`Output`
  is any of them, or a `str`); the errors a provider may raise, `ProviderUnavailable`
  (retried, then fallback), `ProviderError`, `ProviderStreamBroken`, `ProviderFailure`.
- The identity hook type `Authenticate`, and the lifecycle hooks: `AnswerHook` gets an
  `AnswerEnded`.

Everything else (`chatcast.server`, `chatcast.store`, `chatcast.providers`, `chatcast.core`,
`chatcast.clients` and their modules) is internal and may change in any release.

Names are imported when first used, so `import chatcast` (and `import chatcast.core.codes`)
stays light: the web stack, the database and the SDKs load only with what needs them.

The code lives in the repository's top-level packages (`server/`, `store/`, `providers/`,
`core/`, `clients/`); it is installed, imported and type-checked as `chatcast.server`,
`chatcast.store`, … so an application that has its own `server`, `store` or `providers`
module can install and embed chatcast without a name clash.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the internal module that defines it.
_EXPORTS: dict[str, str] = {
    "create_app": "chatcast.server.app",
    "ChatcastApp": "chatcast.server.embedding",
    "Settings": "chatcast.server.settings",
    "Provider": "chatcast.providers.base",
    "ChatMessage": "chatcast.providers.base",
    "Chunk": "chatcast.providers.base",
    "Usage": "chatcast.providers.base",
    "StreamParams": "chatcast.providers.base",
    "ProviderFailure": "chatcast.providers.base",
    "ProviderError": "chatcast.providers.base",
    "ProviderUnavailable": "chatcast.providers.base",
    "ProviderStreamBroken": "chatcast.providers.base",
    "Context": "chatcast.providers.custom",
    "Text": "chatcast.providers.custom",
    "Reasoning": "chatcast.providers.custom",
    "Metadata": "chatcast.providers.custom",
    "Output": "chatcast.providers.custom",
    "AnswerFunction": "chatcast.providers.custom",
    "Authenticate": "chatcast.server.auth",
    "AnswerEnded": "chatcast.server.hooks",
    "AnswerHook": "chatcast.server.hooks",
}

__all__ = ["AnswerEnded", "AnswerFunction", "AnswerHook", "Authenticate", "ChatMessage",
           "ChatcastApp", "Chunk", "Context", "Metadata", "Output", "Provider",
           "ProviderError", "ProviderFailure", "ProviderStreamBroken", "ProviderUnavailable",
           "Reasoning", "Settings", "StreamParams", "Text", "Usage", "__version__",
           "create_app"]

if TYPE_CHECKING:
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
    from chatcast.providers.custom import (
        AnswerFunction,
        Context,
        Metadata,
        Output,
        Reasoning,
        Text,
    )
    from chatcast.server.app import create_app
    from chatcast.server.auth import Authenticate
    from chatcast.server.embedding import ChatcastApp
    from chatcast.server.hooks import AnswerEnded, AnswerHook
    from chatcast.server.settings import Settings


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562) and keep it."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'chatcast' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
