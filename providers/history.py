"""Fitting a chat's history into a provider's context: the system prompt plus the newest turns."""

from __future__ import annotations

from chatcast.providers.base import ChatMessage


def trim_history(messages: list[ChatMessage], max_chars: int, *,
                 system_prompt: str | None = None) -> list[ChatMessage]:
    """The messages to send: the system messages (with `system_prompt` first when given and
    not already there), then the newest other messages whose total length fits `max_chars`.

    The last message is always kept, even alone over budget: it is what is being answered.
    A history never starts with an assistant turn, which some APIs reject."""
    system = [m for m in messages if m.role == "system"]
    if system_prompt and not any(m.content == system_prompt for m in system):
        system.insert(0, ChatMessage("system", system_prompt))
    turns = [m for m in messages if m.role != "system"]
    budget = max_chars - sum(len(m.content) for m in system)
    kept: list[ChatMessage] = []
    for message in reversed(turns):
        if kept and len(message.content) > budget:
            break
        kept.append(message)
        budget -= len(message.content)
    kept.reverse()
    while len(kept) > 1 and kept[0].role == "assistant":
        kept.pop(0)
    return system + kept
