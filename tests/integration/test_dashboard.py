"""The Grafana dashboard (docs/grafana/chatcast.json) against a real Prometheus (Debian's
`prometheus`, on a free port) scraping a real chatcast process: after a few answers of every
kind, every panel's query returns data through Prometheus' HTTP query API."""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatcast.server import metrics
from tests.conftest import ServerFactory
from tests.fakes import FakeServer, Reply, openai_fake
from tests.helpers.clients import WSClient
from tests.helpers.ports import free_port
from tests.helpers.server import ServerProcess
from tests.integration.conftest import make_user

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana" / "chatcast.json"
#: What Grafana puts in place of its variables when it runs a panel's query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}


def panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL as Grafana would send it) of every target of every panel."""
    out = []
    for panel in panels():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, (panel["title"], expr)  # no variable left unresolved
            out.append((panel["title"], expr))
    return out


def registered() -> set[str]:
    """The names of every metric family of the process, as exposed (counters with _total)."""
    names = set()
    for family in metrics.REGISTRY.collect():
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


def test_dashboard_covers_every_metric_and_names_only_real_ones() -> None:
    used = set(re.findall(r"\bchatcast_\w+", " ".join(expr for _, expr in queries())))
    used = {re.sub(r"_(bucket|count|sum)$", "", name) for name in used}
    assert used <= registered(), used - registered()
    assert registered() <= used, f"metrics without a panel: {registered() - used}"
    readme = (ROOT / "README.md").read_text()
    assert not [m for m in registered() if f"`{m}" not in readme], "README lacks metrics"
    ids = [p["id"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    assert len(ids) == len(set(ids))


def _prometheus() -> str:
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(binary).exists():
        pytest.skip("prometheus binary not installed (Debian package `prometheus`)")
    return binary


class Prometheus:
    """A private Prometheus scraping `target` every second."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.binary = _prometheus()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.config = workdir / "prometheus.yml"
        self.config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: chatcast\n    metrics_path: /metrics\n"
            f"    static_configs:\n      - targets: ['{target}']\n")
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def check_config(self, path: Path) -> None:
        """`promtool check config` (when the package ships it)."""
        promtool = Path(self.binary).with_name("promtool")
        if promtool.exists():
            check = subprocess.run([str(promtool), "check", "config", str(path)],
                                   capture_output=True, text=True, timeout=30)
            assert check.returncode == 0, check.stdout + check.stderr

    def start(self) -> None:
        self.check_config(self.config)
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={self.config}",
                 f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        async with httpx.AsyncClient(trust_env=False) as http:
            while True:
                assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
                try:
                    if (await http.get(f"{self.url}/-/ready")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                assert asyncio.get_running_loop().time() < deadline, self.log.read_text()
                await asyncio.sleep(0.1)

    async def query(self, http: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
        r = await http.get(f"{self.url}/api/v1/query", params={"query": expr})
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (expr, body)
        assert body["data"]["resultType"] == "vector", (expr, body)
        return list(body["data"]["result"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def openai_api() -> Iterator[FakeServer]:
    with FakeServer(openai_fake.app) as api:
        yield api


#: Queries whose value may rightly be 0 after this traffic: gauges read after the answers
#: ended, and what the traffic does not cause (no slow client, no bad credentials).
ZERO_OK = ("chatcast_active_generations", "chatcast_connected_clients",
           "chatcast_slow_consumer_closes_total", "chatcast_coalesced_deltas_total",
           "chatcast_auth_refused_total", "chatcast_event_loop_lag_seconds",
           # stalls over 2 ms: none on a quiet machine
           "chatcast_event_loop_longest_stall_seconds", "chatcast_event_loop_stalls_seconds",
           "chatcast_outages_total",
           "chatcast_hook_errors_total")  # (in-process hooks are set in code, not here)


def _has_data(expr: str, result: list[dict[str, Any]]) -> bool:
    """Some series with a number, above 0 unless the query may rightly be 0."""
    values = [float(s["value"][1]) for s in result]
    values = [v for v in values if not math.isnan(v)]
    if any(name in expr for name in ZERO_OK):
        return bool(values)
    return any(v > 0 for v in values)


async def _answer(tab: WSClient, chat: str, content: str) -> dict[str, Any]:
    ack = await tab.request({"type": "send", "chat": chat, "content": content})
    assert ack["type"] == "ack", ack
    return await tab.wait_done(ack["gen"])


async def _stopped_then_continued(tab: WSClient, chat: str, api: FakeServer) -> None:
    api.script(Reply(chunks=tuple(f"w{i} " for i in range(300)), delay_s=0.01))
    ack = await tab.request({"type": "send", "chat": chat, "content": "long"})
    gen = ack["gen"]
    await tab.wait_for("delta", lambda e: e.get("gen") == gen)
    await tab.request({"type": "stop", "gen": gen})
    assert (await tab.wait_done(gen))["status"] == "stopped"
    api.script(Reply.text("the ", "rest"))
    cont = await tab.request({"type": "continue", "gen": gen})
    await tab.wait_done(cont["gen"])


async def _traffic(srv: ServerProcess, api: FakeServer) -> None:
    """A few answers of every kind, two tabs watching, and what clients report."""
    async for user in make_user(srv):
        chat = await user.new_chat()
        async with await user.ws() as tab, await user.ws() as other_tab:
            await tab.subscribe(chat)
            await other_tab.subscribe(chat)
            api.script(Reply.error(503))  # retried once, then answered
            assert (await _answer(tab, chat, "first"))["status"] == "completed"
            api.script(Reply.error(503), Reply.error(503))  # the fallback (demo) answers
            assert (await _answer(tab, chat, "second"))["status"] == "completed"
            api.script(Reply.error(401))
            assert (await _answer(tab, chat, "third"))["status"] == "error"
            api.script(Reply.text("cached ", "answer"))
            for _ in range(2):  # the second is answered from the cache
                other = await user.new_chat()
                await tab.subscribe(other)
                done = await _answer(tab, other, "same")
                assert done["message"]["content"] == "cached answer"
            await _stopped_then_continued(tab, chat, api)
            api.script(Reply.text("another ", "one"))
            regen = await tab.request({"type": "regenerate", "chat": chat})
            await tab.wait_done(regen["gen"])
        reports = [("/api/client-errors", {"kind": "render_error", "message": "boom"}),
                   ("/api/client-events", {"event": "copy"}),
                   ("/api/client-events", {"event": "transport_fallback", "transport": "sse"}),
                   ("/api/client-errors", {"kind": "render_error", "message": "over"})]
        statuses = [(await user.http.post(path, json=body)).status_code
                    for path, body in reports]
        assert statuses == [202, 202, 202, 429], statuses  # 3 a minute here


async def _scraped(prometheus: Prometheus, http: httpx.AsyncClient,
                   timeout: float = 30.0) -> None:
    """Until Prometheus has scraped the server once."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await prometheus.query(http, 'up{job="chatcast"} == 1'):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"Prometheus did not scrape chatcast:\n{prometheus.log.read_text()}")


async def test_every_panel_returns_data_from_a_real_prometheus(
        server: ServerFactory, openai_api: FakeServer, tmp_path: Path) -> None:
    _prometheus()
    srv = await server(env={
        "CHATCAST_PROVIDER": "openai", "CHATCAST_MODEL": "gpt-fake",
        "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": f"{openai_api.url}/v1",
        "CHATCAST_FALLBACK": "demo", "CHATCAST_DEMO_TOKENS_PER_S": "500",
        "CHATCAST_DEMO_MAX_TOKENS": "6", "CHATCAST_PROVIDER_MAX_RETRIES": "1",
        "CHATCAST_PROVIDER_RETRY_BASE_S": "0.01", "CHATCAST_CACHE": "true",
        "CHATCAST_TEMPERATURE": "0", "CHATCAST_CLIENT_REPORTS_PER_MINUTE": "3",
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        # A webhook receiver that is never up: failed attempts, then deliveries given up.
        "CHATCAST_WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/hook",
        "CHATCAST_WEBHOOK_SECRET": "dashboard-test", "CHATCAST_WEBHOOK_MAX_ATTEMPTS": "2",
        "CHATCAST_WEBHOOK_RETRY_BASE_S": "0.05",
    })
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{srv.port}")
    # The README's scrape configuration is a valid one.
    readme = (ROOT / "README.md").read_text()
    [sample] = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    (tmp_path / "readme.yml").write_text(textwrap.dedent(sample))
    prometheus.check_config(tmp_path / "readme.yml")
    prometheus.start()
    try:
        await prometheus.wait_ready()
        async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
            # Scraped before the traffic, so every rate has a sample on both sides of it.
            await _scraped(prometheus, http)
            await _traffic(srv, openai_api)
            missing: list[tuple[str, str]] = []
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                missing = [(title, expr) for title, expr in queries()
                           if not _has_data(expr, await prometheus.query(http, expr))]
                if not missing or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert not missing, "panels without data:\n" + "\n".join(
                f"  {title}: {expr}" for title, expr in missing)
            # The figures are the traffic's, not just present.
            [ratio] = await prometheus.query(http, queries()[0][1])
            assert 0 < float(ratio["value"][1]) < 1, ratio  # one error, one stop among them
            scenarios = {s["metric"]["scenario"] for s in await prometheus.query(
                http, "chatcast_provider_failures_total > 0")}
            assert scenarios == {"before_first_token", "fallback_used"}
    finally:
        prometheus.stop()
