"""The inline think-tag splitter and the reasoning fields of OpenAI-compatible deltas: pure
functions, fed every way a stream can cut them."""

from __future__ import annotations

import pytest

from chatcast.providers.openai import delta_reasoning
from chatcast.providers.think import ThinkSplitter, ThinkTags, model_starts_open


def split(pieces: list[str], *, tags: ThinkTags | None = None,
          starts_open: bool = False) -> tuple[str, str, ThinkSplitter]:
    splitter = ThinkSplitter(tags or ThinkTags(), starts_open=starts_open)
    reasoning, text = "", ""
    for piece in pieces:
        r, t = splitter.feed(piece)
        reasoning, text = reasoning + r, text + t
    r, t = splitter.flush()
    return reasoning + r, text + t, splitter


def every_cut(whole: str) -> list[list[str]]:
    """`whole` as one piece, as single characters, and cut in two at every position."""
    return [[whole], list(whole)] + [[whole[:i], whole[i:]] for i in range(1, len(whole))]


R1 = "<think>\nThe user greets me.\nI greet back.\n</think>\n\nHello! How can I help?"


@pytest.mark.parametrize("pieces", every_cut(R1))
def test_tags_straddling_any_boundary_split_the_same(pieces: list[str]) -> None:
    reasoning, text, _ = split(pieces)
    assert reasoning == "The user greets me.\nI greet back.\n"
    assert text == "Hello! How can I help?"


@pytest.mark.parametrize("pieces", every_cut("Okay, 2 + 2.\n</think>\n\nIt is 4."))
def test_only_a_closing_tag_with_starts_open(pieces: list[str]) -> None:
    reasoning, text, splitter = split(pieces, starts_open=True)
    assert (reasoning, text) == ("Okay, 2 + 2.\n", "It is 4.")
    assert not splitter.lone_close


def test_only_a_closing_tag_without_starts_open_keeps_every_word_and_drops_the_tag() -> None:
    reasoning, text, splitter = split(["Okay, 2 + 2.", "</thi", "nk>It is 4."])
    assert (reasoning, text) == ("", "Okay, 2 + 2.It is 4.")
    assert splitter.lone_close


def test_starts_open_still_takes_an_explicit_opening_tag() -> None:
    assert split(["<think>hm</think>yes"], starts_open=True)[:2] == ("hm", "yes")


@pytest.mark.parametrize("pieces", every_cut("<think>Let me see. Maybe 4"))
def test_an_unclosed_think_keeps_everything_as_reasoning(pieces: list[str]) -> None:
    assert split(pieces)[:2] == ("Let me see. Maybe 4", "")


def test_an_unclosed_held_partial_tag_is_not_lost() -> None:
    assert split(["<think>a </th"])[:2] == ("a </th", "")
    assert split(["<thi"])[:2] == ("", "<thi")
    assert split(["x <"])[:2] == ("", "x <")


def test_no_tags_is_plain_text_and_a_later_opening_tag_is_text() -> None:
    assert split(["Use ", "<think>", " tags."])[:2] == ("", "Use <think> tags.")
    assert split(["Plain answer."])[:2] == ("", "Plain answer.")
    assert split(["  \n", "Indented"])[:2] == ("", "  \nIndented")


def test_only_reasoning_then_empty_answer() -> None:
    assert split(["<think>all thought</think>", "\n\n"])[:2] == ("all thought", "")


def test_custom_tags_and_off() -> None:
    tags = ThinkTags.parse("<reasoning> </reasoning>")
    assert tags == ThinkTags("<reasoning>", "</reasoning>")
    assert split(["<reason", "ing>why</reasoning>what"], tags=tags)[:2] == ("why", "what")
    assert ThinkTags.parse("off") is None and ThinkTags.parse("") is None


@pytest.mark.parametrize("bad", ["<think>", "<a> <a>", "<a> <b> <c>"])
def test_bad_tag_settings_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="two different tags"):
        ThinkTags.parse(bad)


def test_models_that_start_open() -> None:
    assert model_starts_open(r"(?i)thinking|r1", "Qwen/Qwen3-30B-A3B-Thinking-2507")
    assert not model_starts_open(r"(?i)thinking", "qwen3:8b")
    assert not model_starts_open("", "anything")


@pytest.mark.parametrize(("extra", "expected"), [
    ({"reasoning": "a"}, "a"),
    ({"reasoning_content": "b"}, "b"),
    ({"reasoning": "same", "reasoning_content": "same"}, "same"),  # mirrored: never twice
    ({"reasoning": "r", "reasoning_details": [{"type": "reasoning.text", "text": "r"}]}, "r"),
    ({"reasoning_details": [{"type": "reasoning.text", "text": "t"},
                            {"type": "reasoning.summary", "summary": "s"},
                            {"type": "reasoning.encrypted", "data": "xyz"}]}, "ts"),
    ({"reasoning_details": [{"type": "reasoning.future", "text": "?"}, "junk", 3]}, ""),
    ({"reasoning": "", "reasoning_content": ""}, ""),
    ({"reasoning": None, "reasoning_content": "c"}, "c"),
    ({"reasoning": {"not": "text"}}, ""),
    (None, ""),
])
def test_reasoning_fields_one_per_chunk(extra: dict[str, object] | None,
                                        expected: str) -> None:
    assert delta_reasoning(extra) == expected
