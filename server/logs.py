"""Logs: JSON lines when stderr is not a terminal (production, log collectors), a readable
console line when it is; the same fields either way, with chat and generation ids when
known."""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any, Literal

import orjson

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message",
                                                                             "asctime"}
#: Fields of other libraries' records that repeat the message (uvicorn's ANSI-coloured
#: copy of it) and are no field of ours.
_DROPPED = {"color_message"}

#: Credentials that may travel in a URL (uvicorn logs WebSocket paths with their query).
_URL_SECRET = re.compile(r"((?:ticket|token|access_token)=)[^&\s\"']+", re.IGNORECASE)

LogFormat = Literal["auto", "json", "console"]


def redact(text: str) -> str:
    return _URL_SECRET.sub(r"\1***", text)


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """What one record says, as the ordered fields both formats print."""
    out: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": redact(record.getMessage()),
    }
    for key, value in record.__dict__.items():
        if key not in _STANDARD and key not in _DROPPED and not key.startswith("_"):
            out[key] = redact(value) if isinstance(value, str) else value
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = fields(record)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


_LEVEL_COLOURS = {"debug": "2", "info": "32", "warning": "33", "error": "31", "critical": "1;31"}


class ConsoleFormatter(logging.Formatter):
    """`21:04:05.123 INFO  chatcast.runner  generation ended  gen=… chat=… status=completed`
    (the time is UTC, like the JSON `ts`); levels coloured unless `colour=False`."""

    def __init__(self, colour: bool = True) -> None:
        super().__init__()
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        out = fields(record)
        level = out.pop("level")
        ts, logger, msg = out.pop("ts"), out.pop("logger"), out.pop("msg")
        shown = f"{level.upper():<7}"
        if self.colour:
            shown = f"\x1b[{_LEVEL_COLOURS.get(level, '0')}m{shown}\x1b[0m"
        extras = " ".join(f"{key}={_value(value)}" for key, value in out.items())
        line = f"{ts[11:23]} {shown} {logger:<18} {msg}"
        if extras:
            line += f"  {extras}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _value(value: object) -> str:
    if isinstance(value, str):
        return value if value and not any(c in value for c in ' ="\n') else \
            orjson.dumps(value).decode()
    return orjson.dumps(value, default=str).decode()


def resolve_format(fmt: LogFormat, stream: Any = None) -> Literal["json", "console"]:
    """`auto`: console on a terminal, JSON otherwise."""
    if fmt != "auto":
        return fmt
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "console" if isatty is not None and isatty() else "json"


def log_config(level: str = "INFO", fmt: LogFormat = "auto") -> dict[str, Any]:
    """A dictConfig for our loggers and uvicorn's, all on stderr in one format."""
    chosen = resolve_format(fmt)
    formatter: dict[str, Any] = {"()": JsonFormatter} if chosen == "json" else \
        {"()": ConsoleFormatter, "colour": fmt == "auto"}
    # By name, not the object: `serve --workers N` pickles this config into each worker
    # process (multiprocessing spawn), and an open stream cannot be pickled.
    handler = {"class": "logging.StreamHandler", "formatter": "chatcast",
               "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"chatcast": formatter},
        "handlers": {"default": handler},
        "loggers": {
            "chatcast": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["default"], "level": "WARNING",
                               "propagate": False},
        },
        "root": {"handlers": ["default"], "level": "WARNING"},
    }
