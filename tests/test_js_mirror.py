"""clients/js/protocol.js mirrors core/codes.py and core/protocol.py: same close codes
(with the same reconnect flags), same error codes (HTTP status, retryable), same request
types. Parsed from the JavaScript source, so no JavaScript runtime is needed."""

from __future__ import annotations

import re
from pathlib import Path

from chatcast.core import protocol
from chatcast.core.codes import CLOSE_RETRYABLE, CODES, Close, Code

JS = Path(__file__).resolve().parents[1] / "clients" / "js" / "protocol.js"


def _block(source: str, name: str) -> str:
    """The body of `export const NAME = Object.freeze({...})` or `([...])`."""
    match = re.search(rf"export const {name} = Object\.freeze\(([\[{{])(.*?)[\]}}]\);", source,
                      re.S)
    assert match, f"{name} not found in protocol.js"
    return match.group(2)


def _entries(body: str) -> list[tuple[str, str]]:
    """`KEY: value,` lines of an object literal (KEY may be `[Table.NAME]`)."""
    return re.findall(r"^\s*(\[[\w.]+\]|\w+):\s*(.+?),?\s*$", body, re.M)


def _strings(body: str) -> list[str]:
    return re.findall(r"'([^']*)'", body)


SOURCE = JS.read_text(encoding="utf-8")
JS_CLOSE = {key: int(value) for key, value in _entries(_block(SOURCE, "Close"))}
JS_CODE = {key: value.strip("'") for key, value in _entries(_block(SOURCE, "Code"))}


def _resolve(key: str, table: dict[str, int] | dict[str, str]) -> int | str:
    match = re.fullmatch(r"\[\w+\.(\w+)\]", key)
    assert match, f"entry {key!r} should be written [Table.NAME]"
    return table[match.group(1)]


def test_close_codes_match() -> None:
    assert {c.name: int(c) for c in Close} == JS_CLOSE


def test_close_retryable_flags_match() -> None:
    entries = _entries(_block(SOURCE, "CLOSE_RETRYABLE"))
    js = {_resolve(k, JS_CLOSE): v == "true" for k, v in entries}
    assert js == {int(code): flag for code, flag in CLOSE_RETRYABLE.items()}


def test_error_codes_match() -> None:
    assert {c.name: c.value for c in Code} == JS_CODE


def test_error_code_status_and_retryable_match() -> None:
    js: dict[int | str, tuple[int, bool]] = {}
    for key, value in _entries(_block(SOURCE, "CODES")):
        info = re.fullmatch(r"\{\s*httpStatus:\s*(\d+),\s*retryable:\s*(true|false)\s*\}", value)
        assert info, f"unreadable CODES entry {key}: {value}"
        js[_resolve(key, JS_CODE)] = (int(info.group(1)), info.group(2) == "true")
    assert js == {code.value: (info.http_status, info.retryable) for code, info in CODES.items()}


def test_request_types_match() -> None:
    assert tuple(_strings(_block(SOURCE, "REQUEST_TYPES"))) == protocol.REQUEST_TYPES


def test_delta_parts_match() -> None:
    assert tuple(_strings(_block(SOURCE, "PARTS"))) == protocol.PARTS
    built = (protocol.delta("c", "g", 1, "t"), protocol.reasoning_delta("c", "g", 2, "r"))
    assert tuple(e.data["part"] for e in built) == protocol.PARTS


def test_version_and_frame_limit_match() -> None:
    assert re.search(rf"export const VERSION = {protocol.VERSION};", SOURCE)
    assert re.search(r"export const MAX_FRAME_BYTES = 64 \* 1024;", SOURCE)
    assert protocol.MAX_FRAME_BYTES == 64 * 1024


def test_event_types_are_the_ones_the_server_builds() -> None:
    js = set(_strings(_block(SOURCE, "EVENT_TYPES")))
    built = {"ack", "error", "pong", "snapshot", "message", "start", "delta", "done",
             "saving"}
    assert js == built
    sample = [protocol.ack("r"), protocol.pong(), protocol.snapshot("c", [], None),
              protocol.message("c", {}), protocol.start("c", "g", "m", "p", "x"),
              protocol.delta("c", "g", 1, "t"), protocol.done("c", "g", 2, "completed", {}),
              protocol.saving("c", "g", 1, "completed", "t", "")]
    assert {e.type for e in sample} <= js
