"""The README's "Embed chatcast in your app" samples are one app: its Python blocks, in
order, are written to a module and served by uvicorn, and do what the README says (the
provider answers with reasoning and sources, the identity hook decides, on_done and the
webhook receiver hear of the answer)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import httpx

from tests.helpers.clients import WSClient
from tests.helpers.server import REPO_ROOT, ServerProcess

SECRET = "readme-webhook-secret"


def section() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    return readme.split("## Embed chatcast in your app", 1)[1].split("\n## ", 1)[0]


def test_the_section_has_its_parts() -> None:
    headings = re.findall(r"^### (.+)$", section(), re.M)
    assert headings[:6] == ["Your own provider", "Your own identity", "Hooks", "Mount it",
                            "Webhook", "Python client"]


async def test_the_samples_run_as_one_app(tmp_path: Path) -> None:
    # The server-side samples; the Python client's own section has samples of its own.
    server_side = section().split("### Python client", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", server_side, re.S)
    assert len(blocks) == 5
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "readme_app.py").write_text("\n\n".join(blocks))
    srv = ServerProcess(
        tmp_path / "data", migrate=False,
        command=[sys.executable, "-m", "uvicorn", "readme_app:app", "--app-dir", str(app_dir),
                 "--host", "127.0.0.1", "--port", "{port}"])
    srv.extra_env.update({"CHATCAST_WEBHOOK_URL": f"{srv.url}/webhooks/chatcast",
                          "CHATCAST_WEBHOOK_SECRET": SECRET})
    srv.health_path = "/chat/healthz"
    await srv.start()
    try:
        async with httpx.AsyncClient(base_url=srv.url + "/chat", timeout=30,
                                     trust_env=False) as http:
            assert (await http.get("/api/chats")).status_code == 401
            http.cookies.set("session", "s3cr3t-session")
            chat = (await http.post("/api/chats", json={})).json()["id"]
            ws_url = srv.ws_url.replace("/ws", "/chat/ws")
            async with await WSClient.connect(ws_url, cookie="session=s3cr3t-session") as tab:
                await tab.subscribe(chat)
                ack = await tab.request({"type": "send", "chat": chat,
                                         "content": "What about returns?"})
                done = await tab.wait_done(ack["gen"])
        message = done["message"]
        assert done["status"] == "completed"
        assert message["content"] == "Returns are accepted within 30 days. "
        assert message["reasoning"] == "Found 1 documents. "
        assert message["metadata"] == {"sources": ["returns"]}
        await srv.wait_log(f"answer {ack['gen']} done: 37 characters", timeout=30)
        await srv.wait_log("webhook answer.completed Returns are accepted", timeout=30)
    finally:
        await srv.stop()
