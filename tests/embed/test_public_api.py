"""`import chatcast` is the documented entry point: every public name resolves, is
documented, and importing chatcast (or `chatcast.core.codes`) loads no web stack."""

from __future__ import annotations

import subprocess
import sys

import chatcast


def test_every_public_name_resolves_and_has_a_docstring() -> None:
    for name in chatcast.__all__:
        value = getattr(chatcast, name)
        if name in ("__version__", "Output", "AnswerFunction", "Authenticate", "AnswerHook"):
            continue  # a string, or type aliases
        assert (value.__doc__ or "").strip(), f"chatcast.{name} has no docstring"
    assert set(dir(chatcast)) >= set(chatcast.__all__)


def test_unknown_names_raise_attribute_error() -> None:
    try:
        chatcast.nothing_here  # noqa: B018
    except AttributeError as exc:
        assert "nothing_here" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("no AttributeError")


def test_import_stays_light() -> None:
    code = ("import sys, chatcast, chatcast.core.codes, chatcast.webhooks\n"
            "heavy = [m for m in ('starlette', 'sqlalchemy', 'sqlmodel', 'openai', 'uvicorn')"
            " if m in sys.modules]\n"
            "print(','.join(heavy))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == ""


def test_create_app_takes_setting_overrides_and_refuses_unknown_ones() -> None:
    app = chatcast.create_app(provider="demo", demo_tokens_per_s=5.0)
    assert app.settings.provider == "demo" and app.settings.demo_tokens_per_s == 5.0
    again = chatcast.create_app(app.settings, max_message_chars=10)
    assert again.settings.max_message_chars == 10 and again.settings.provider == "demo"
    try:
        chatcast.create_app(no_such_setting=1)
    except TypeError as exc:
        assert "no_such_setting" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("no TypeError")
