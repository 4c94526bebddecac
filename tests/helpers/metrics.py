"""Reading a server's /metrics in tests."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(http: httpx.AsyncClient, base_url: str = "") -> Samples:
    """Every sample of `GET /metrics`, keyed by (sample name, labels)."""
    r = await http.get(f"{base_url}/metrics")
    assert r.status_code == 200, r.text
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


async def sample(http: httpx.AsyncClient, name: str, base_url: str = "",
                 **labels: str) -> float:
    """One sample of `GET /metrics` (0 when the series does not exist yet)."""
    return (await scrape(http, base_url)).get((name, frozenset(labels.items())), 0.0)
