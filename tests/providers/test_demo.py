"""The offline demo model: deterministic, markdown-rich, echo mode, continue, cancellable."""

from __future__ import annotations

import asyncio

from chatcast.providers.base import ChatMessage, StreamParams
from chatcast.providers.demo import DemoProvider, compose_reply


async def collect(provider: DemoProvider, messages: list[ChatMessage]) -> tuple[str, int]:
    text, usage_out = "", -1
    async for chunk in provider.stream(messages, model="demo-1", params=StreamParams()):
        text += chunk.text
        if chunk.usage is not None:
            usage_out = chunk.usage.output_tokens
    return text, usage_out


def test_same_prompt_same_markdown_reply() -> None:
    a, b = "".join(compose_reply("hello")), "".join(compose_reply("hello"))
    assert a == b and a != "".join(compose_reply("something else"))
    for markdown in ("## ", "- ", "```", "| step |", "**", "[a link](https://"):
        assert markdown in a
    assert "<script>" in a  # inline HTML the client must show as text


async def test_stream_usage_echo_and_limit() -> None:
    demo = DemoProvider(tokens_per_s=10_000)
    text, out = await collect(demo, [ChatMessage("user", "hi")])
    assert text == "".join(compose_reply("hi")) and out == len(compose_reply("hi"))
    echo, _ = await collect(demo, [ChatMessage("user", "echo: <img src=x onerror=alert(1)>")])
    assert echo == "<img src=x onerror=alert(1)>"
    short, n = await collect(DemoProvider(10_000, max_tokens=5), [ChatMessage("user", "hi")])
    assert n == 5 and short == "".join(compose_reply("hi")[:5])


async def test_continue_streams_only_the_missing_part() -> None:
    demo = DemoProvider(tokens_per_s=10_000)
    full = "".join(compose_reply("go on"))
    partial = full[:57]
    rest, _ = await collect(demo, [ChatMessage("user", "go on"),
                                   ChatMessage("assistant", partial)])
    assert partial + rest == full


async def test_cancel_mid_stream_ends_promptly() -> None:
    demo = DemoProvider(tokens_per_s=20)
    got: list[str] = []
    two = asyncio.Event()

    async def consume() -> None:
        async for chunk in demo.stream([ChatMessage("user", "hi")], model="demo-1",
                                       params=StreamParams()):
            got.append(chunk.text)
            if len(got) == 2:
                two.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(two.wait(), 5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled() and 2 <= len(got) < len(compose_reply("hi"))


async def test_count_prompt_at_its_own_pace() -> None:
    """`pace:<R> count:<N> <tag>`: N known words, paced at R whatever the provider's rate
    (the benchmark's answers of many lengths and speeds through one server)."""
    demo = DemoProvider(tokens_per_s=0.001)  # would take hours per token at its own rate
    text, out = await asyncio.wait_for(
        collect(demo, [ChatMessage("user", "pace:100000 count:4 c7")]), 30)
    assert text == "c7w0 c7w1 c7w2 c7w3" and out == 4
    assert "".join(compose_reply("count:x y")) != ""  # not a count: an ordinary reply
