"""The README's AI SDK sample is the example app's own code (which the Chromium test builds
and drives): every line of it, in order, is in examples/aisdk-react/src/App.jsx."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_sample_is_the_example_code() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Use with the AI SDK", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```jsx\n(.*?)```", section, re.DOTALL)
    assert match, "the AI SDK section has no jsx sample"
    app = (ROOT / "examples" / "aisdk-react" / "src" / "App.jsx").read_text().splitlines()
    at = 0
    for line in match.group(1).splitlines():
        if not line.strip() or line.strip() == "// …":
            continue
        found = next((i for i in range(at, len(app)) if app[i] == line), None)
        assert found is not None, f"README line not in App.jsx (in order): {line!r}"
        at = found + 1
    assert "(docs/aisdk.md)" in section
    assert (ROOT / "docs" / "aisdk.md").exists()
