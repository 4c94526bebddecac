"""Providers written by the application that embeds chatcast: its own model logic (retrieval,
tools, agents, guardrails, its own prompts) between the user and the model.

A custom provider is one of:

- an async generator function `answer(messages, context)`: `messages` is the chat's history
  (`ChatMessage`: role and content), `context` a `Context` (chat, user, model, params);
- an object with such an `answer` method (and optionally `aclose()`, called at shutdown);
- an object with the built-in providers' `stream(messages, *, model, params)` method.

It yields `str` (answer text) or chunks: `Text`, `Reasoning`, `Usage`, `Metadata` (stored on
the answer message's metadata, e.g. sources), or a `Chunk`. `CustomProvider` wraps it so that
it is held to the same contract as the built-in ones, whatever it does: a stop cancels it and
closes it (its own upstream connections with it); an output that is not text or a chunk, an
exception that is not a `ProviderFailure`, or anything yielded after it was cancelled, ends
the answer with a safe error code and a message naming the provider (never the exception's
text, which may hold a key or an upstream body: that goes to the log).

Configuration (`CHATCAST_PROVIDERS`) names them `name=module:attribute`, comma-separated;
the attribute is a provider, or a callable (a class, a factory) that returns one. A bare
`name` is the installed entry point of that name in the `chatcast.providers` group: only
named plugins are loaded, never every installed one.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, TypeAlias

import httpx

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
from chatcast.providers.upstream import status_failure, transport_failure

log = logging.getLogger("chatcast.providers")

#: The setting custom providers are configured by (named in start-up errors).
SETTING = "CHATCAST_PROVIDERS"
ENTRY_POINT_GROUP = "chatcast.providers"


@dataclass(frozen=True, slots=True)
class Text:
    """Answer text (a plain `str` yielded means the same)."""

    text: str


@dataclass(frozen=True, slots=True)
class Reasoning:
    """The model's visible thinking, shown apart from the answer (before it, as a rule)."""

    text: str


@dataclass(frozen=True, slots=True)
class Metadata:
    """Values stored on the answer message's `metadata` (merged key by key, the later value
    winning) and sent to clients with the finished message: sources, citations, tool calls.
    Must be JSON-serialisable."""

    values: Mapping[str, Any]


#: What a custom provider may yield.
Output: TypeAlias = str | Text | Reasoning | Usage | Metadata | Chunk


@dataclass(frozen=True, slots=True)
class Context:
    """What a custom provider knows of the answer it is asked for."""

    chat_id: str
    user_id: str
    generation_id: str
    message_id: str  # the answer message being written
    model: str  # the model chosen for the chat (or the default)
    params: StreamParams = field(default_factory=StreamParams)
    #: The generation's request metadata (e.g. `regenerates`: the message a regenerate
    #: answers again; `continues`: a continue of an interrupted answer).
    metadata: Mapping[str, Any] = field(default_factory=dict)


AnswerFunction: TypeAlias = Callable[[list[ChatMessage], Context], AsyncIterator[Output]]


class ProviderConfigError(ValueError):
    """A custom provider that cannot be used: the message names the setting and the entry."""


class CustomProvider:
    """A host's provider, held to the built-in providers' contract (see the module doc)."""

    def __init__(self, name: str, *, answer: AnswerFunction | None = None,
                 inner: Any = None, default_model: str | None = None) -> None:
        if (answer is None) == (inner is None):
            raise TypeError("give exactly one of answer= or inner=")
        self.name = name
        self.label = name
        self._answer = answer
        self._inner = inner
        model = getattr(inner, "default_model", None) if inner is not None else None
        self.default_model: str = default_model or model or name

    def stream(self, messages: list[ChatMessage], *, model: str,
               params: StreamParams) -> AsyncIterator[Chunk]:
        """The built-in providers' call, for code that has no context (tests, tools)."""
        return self.answer(messages, Context("", "", "", "", model, params))

    async def answer(self, messages: list[ChatMessage],
                     context: Context) -> AsyncGenerator[Chunk, None]:
        """The provider's output as chunks; see the module doc for what is refused."""
        source = self._open(messages, context)
        flowed = False
        try:
            async for item in source:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # It caught the cancellation and went on: drop what it yielded.
                    log.warning("custom provider yielded after it was cancelled",
                                extra={"provider": self.name})
                    raise asyncio.CancelledError
                chunk = self._chunk(item)
                flowed = flowed or chunk.output
                yield chunk
        except ProviderFailure as exc:
            if flowed and isinstance(exc, ProviderUnavailable):
                raise ProviderStreamBroken(exc.message, status=exc.status) from exc
            raise
        except Exception as exc:
            raise self._failure(exc, flowed=flowed) from exc
        finally:
            await _close(source, self.name)

    async def aclose(self) -> None:
        closer = getattr(self._inner if self._inner is not None else self._answer,
                         "aclose", None)
        owner = getattr(self._answer, "__self__", None)
        if closer is None and owner is not None:  # an `answer` method: its object's aclose
            closer = getattr(owner, "aclose", None)
        if closer is None:
            return
        try:
            result = closer()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("custom provider failed to close", extra={"provider": self.name})

    def _open(self, messages: list[ChatMessage], context: Context) -> AsyncIterator[Any]:
        if self._answer is not None:
            source: Any = self._answer(list(messages), context)
        else:
            source = self._inner.stream(list(messages), model=context.model,
                                        params=context.params)
        if not isinstance(source, AsyncIterator):
            raise ProviderError(f"provider {self.name!r} did not return an async iterator "
                                f"(got {type(source).__name__})")
        return source

    def _chunk(self, item: object) -> Chunk:
        if isinstance(item, str):
            return Chunk(text=item)
        if isinstance(item, Chunk):
            return item
        if isinstance(item, Text):
            return Chunk(text=item.text)
        if isinstance(item, Reasoning):
            return Chunk(reasoning=item.text)
        if isinstance(item, Usage):
            return Chunk(usage=item)
        if isinstance(item, Metadata):
            return Chunk(metadata=dict(item.values))
        log.error("custom provider yielded an unsupported value",
                  extra={"provider": self.name, "type": type(item).__name__})
        raise ProviderError(f"provider {self.name!r} yielded a {type(item).__name__}, "
                            "not text or a chunk")

    def _failure(self, exc: Exception, *, flowed: bool) -> ProviderFailure:
        """A safe failure for an exception of the host's code: the HTTP ones like the
        built-in providers' (so a connect error or a 503 is retried and falls back), any
        other as a provider error; the exception itself goes to the log only."""
        if isinstance(exc, httpx.HTTPStatusError):
            status = exc.response.status_code
            log.warning("custom provider: upstream returned %s", status,
                        extra={"provider": self.name})
            return status_failure(self.name, status, flowed=flowed)
        if isinstance(exc, httpx.TransportError | TimeoutError | ConnectionError):
            log.warning("custom provider: upstream unreachable (%s)", type(exc).__name__,
                        extra={"provider": self.name})
            return transport_failure(self.name, flowed=flowed,
                                     timeout=isinstance(exc, TimeoutError
                                                        | httpx.TimeoutException))
        log.error("custom provider raised", exc_info=exc, extra={"provider": self.name})
        message = f"provider {self.name!r} failed"
        return ProviderStreamBroken(message) if flowed else ProviderError(message)


async def _close(source: AsyncIterator[Any], name: str) -> None:
    """Close the provider's generator now (not when collected), so its own upstream
    connection closes with it; one that refuses to end is logged, not hung on."""
    aclose = getattr(source, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except RuntimeError:  # "async generator ignored GeneratorExit": it yielded again
        log.warning("custom provider yielded after it was closed", extra={"provider": name})
    except Exception:
        log.exception("custom provider failed while closing", extra={"provider": name})


def as_provider(name: str, obj: object, *, setting: str | None = None) -> Provider:
    """`obj` as a provider named `name`, or ProviderConfigError (naming `setting`, where it
    came from configuration)."""
    where = f"{setting}: " if setting else ""
    if isinstance(obj, CustomProvider):
        obj.name = obj.label = name
        return obj
    if inspect.isasyncgenfunction(obj):
        return CustomProvider(name, answer=obj)
    answer = getattr(obj, "answer", None)
    if answer is not None and inspect.isasyncgenfunction(answer):
        return CustomProvider(name, answer=answer,
                              default_model=getattr(obj, "default_model", None))
    if callable(getattr(obj, "stream", None)) and not isinstance(obj, type):
        return CustomProvider(name, inner=obj)
    raise ProviderConfigError(
        f"{where}{name!r} is not a provider ({_describe(obj)}): give an async generator "
        "function answer(messages, context), an object with such an answer method, or an "
        "object with stream(messages, *, model, params)")


def load(spec: str) -> dict[str, Provider]:
    """The providers of a `CHATCAST_PROVIDERS` value (`name=module:attribute,...`, or a bare
    `name` for an entry point); ProviderConfigError names the setting and the entry."""
    out: dict[str, Provider] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, sep, target = (s.strip() for s in item.partition("="))
        if not name or (sep and not target):
            raise ProviderConfigError(f"{SETTING}: {item!r} is not name=module:attribute")
        if name in out:
            raise ProviderConfigError(f"{SETTING}: {name!r} is configured twice")
        obj = _import(name, target) if sep else _entry_point(name)
        if callable(obj) and not (inspect.isasyncgenfunction(obj) or _is_provider(obj)
                                  or inspect.iscoroutinefunction(obj)):
            try:
                obj = obj()  # a class or a factory
            except Exception as exc:
                raise ProviderConfigError(
                    f"{SETTING}: {name}={target or name} failed to make its provider "
                    f"({type(exc).__name__}: {exc})") from exc
        out[name] = as_provider(name, obj, setting=SETTING)
    return out


def _is_provider(obj: object) -> bool:
    if isinstance(obj, type):
        return False
    answer = getattr(obj, "answer", None)
    return isinstance(obj, CustomProvider) or (answer is not None and
                                                inspect.isasyncgenfunction(answer)) \
        or callable(getattr(obj, "stream", None))


def _import(name: str, target: str) -> object:
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ProviderConfigError(f"{SETTING}: {name}={target} is not module:attribute")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ProviderConfigError(f"{SETTING}: {name}={target}: cannot import "
                                  f"{module_name!r} ({exc})") from exc
    obj: object = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ProviderConfigError(f"{SETTING}: {name}={target}: {module_name!r} has no "
                                      f"{attribute!r}") from None
    return obj


def _entry_point(name: str) -> object:
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        raise ProviderConfigError(f"{SETTING}: no installed entry point {name!r} in the "
                                  f"{ENTRY_POINT_GROUP!r} group (or write {name}=module:"
                                  "attribute)")
    try:
        obj: object = found[0].load()
    except Exception as exc:
        raise ProviderConfigError(f"{SETTING}: entry point {name!r} failed to load "
                                  f"({type(exc).__name__}: {exc})") from exc
    return obj


def _describe(obj: object) -> str:
    if inspect.iscoroutinefunction(obj):
        return "an async function that is not a generator: use yield"
    return f"a {type(obj).__name__}"
