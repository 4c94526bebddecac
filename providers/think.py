"""Reasoning written inline in the answer, between `<think>` and `</think>` (DeepSeek-R1,
Qwen3 and their distills on a server without a reasoning parser), split out of the text as it
streams. Pure: no I/O, fed one piece of model output at a time."""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_TAGS = "<think> </think>"


@dataclass(frozen=True, slots=True)
class ThinkTags:
    open: str = "<think>"
    close: str = "</think>"

    @classmethod
    def parse(cls, setting: str) -> ThinkTags | None:
        """`"<think> </think>"` (opening and closing tag, space-separated); `""` or `off`:
        no parsing. Raises ValueError for anything else."""
        value = setting.strip()
        if value.lower() in ("", "off", "false", "none"):
            return None
        parts = value.split()
        if len(parts) != 2 or parts[0] == parts[1]:
            raise ValueError(f"think tags must be two different tags, e.g. {DEFAULT_TAGS!r}; "
                             f"got {setting!r}")
        return cls(parts[0], parts[1])


class ThinkSplitter:
    """Splits one answer's output into (reasoning, text).

    Reasoning opens only with the opening tag at the very start of the answer (after
    whitespace), or, with `starts_open`, is open from the start (chat templates that put the
    opening tag in the prompt, so the model only ever writes the closing one). A tag split
    across pieces is recognised: the few characters that might begin one are held back until
    the next piece (or `flush`). Once the answer text has begun, a later opening tag is text.

    Without `starts_open`, a closing tag that comes without an opening one is removed (it is
    never answer text) and recorded in `lone_close`: what came before it had already been
    streamed as text, which is what `starts_open` is for."""

    __slots__ = ("_held", "_state", "close", "lone_close", "open", "starts_open")

    def __init__(self, tags: ThinkTags, *, starts_open: bool = False) -> None:
        self.open, self.close = tags.open, tags.close
        self.starts_open = starts_open
        self.lone_close = False
        self._state = "start"  # start | lead | think | after | watch | text
        self._held = ""

    def feed(self, piece: str) -> tuple[str, str]:
        """The reasoning and the text `piece` completes (either may be empty)."""
        reasoning, text = [], []
        data, self._held = self._held + piece, ""
        while data:
            state = self._state
            if state == "start":
                lead = data.lstrip()
                if len(lead) < len(self.open) and self.open.startswith(lead):
                    self._held = data  # whitespace, or maybe the opening tag's beginning
                    break
                if lead.startswith(self.open):
                    data, self._state = lead[len(self.open):], "lead"
                elif self.starts_open:
                    data, self._state = lead, "think"
                else:
                    self._state = "watch"
            elif state == "lead":  # the blank lines between the opening tag and the reasoning
                data = data.lstrip()
                if data:
                    self._state = "think"
            elif state == "think":
                found = data.find(self.close)
                if found >= 0:
                    reasoning.append(data[:found])
                    data, self._state = data[found + len(self.close):], "after"
                else:
                    keep = _partial_suffix(data, self.close)
                    reasoning.append(data[:len(data) - keep])
                    self._held = data[len(data) - keep:]
                    break
            elif state == "after":  # the blank lines between the closing tag and the answer
                data = data.lstrip()
                if data:
                    self._state = "text"
            elif state == "watch":
                found = data.find(self.close)
                if found >= 0:
                    self.lone_close = True
                    text.append(data[:found])
                    data, self._state = data[found + len(self.close):], "text"
                else:
                    keep = _partial_suffix(data, self.close)
                    text.append(data[:len(data) - keep])
                    self._held = data[len(data) - keep:]
                    break
            else:
                text.append(data)
                break
        return "".join(reasoning), "".join(text)

    def flush(self) -> tuple[str, str]:
        """The end of the answer: what was held back, as the part it belongs to. An opening
        tag never closed leaves everything after it as reasoning."""
        held, self._held = self._held, ""
        if self._state == "think" or (self._state == "start" and self.starts_open):
            return held if self._state == "think" else held.lstrip(), ""
        if self._state in ("lead", "after"):
            return "", ""
        return "", held


def _partial_suffix(data: str, tag: str) -> int:
    """Length of the longest end of `data` that is the beginning of `tag` (shorter than it)."""
    for n in range(min(len(tag) - 1, len(data)), 0, -1):
        if data.endswith(tag[:n]):
            return n
    return 0


def model_starts_open(pattern: str, model: str) -> bool:
    """Whether CHATCAST_THINK_OPEN_MODELS (a regular expression; empty: none) names `model`."""
    return bool(pattern) and re.search(pattern, model) is not None
