"""The README documents every setting, and the one-line deploy files stay right."""

from __future__ import annotations

from pathlib import Path

from chatcast.server.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
BARE = {"database_url": "DATABASE_URL", "redis_url": "REDIS_URL",
        "openai_api_key": "OPENAI_API_KEY", "openai_base_url": "OPENAI_BASE_URL",
        "gemini_api_key": "GEMINI_API_KEY", "gemini_base_url": "GEMINI_BASE_URL"}


def test_readme_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = []
    for name in Settings.model_fields:
        env = BARE.get(name, f"CHATCAST_{name.upper()}")
        if f"`{env}`" not in readme:
            missing.append(env)
    assert not missing, f"README configuration table lacks {missing}"


def test_procfile_and_ci() -> None:
    assert (ROOT / "Procfile").read_text().strip() == \
        "web: chatcast serve --host 0.0.0.0 --port $PORT"
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()
