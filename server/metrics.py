"""Prometheus metrics of one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

ACTIVE_GENERATIONS = Gauge("chatcast_active_generations",
                           "Generations this process is running", registry=REGISTRY)
CLIENTS = Gauge("chatcast_connected_clients", "Connected clients by transport",
                ["transport"], registry=REGISTRY)
TTFT = Histogram("chatcast_time_to_first_token_seconds",
                 "From generation start to its first delta, by provider", ["provider"],
                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30), registry=REGISTRY)
FRAMES_SENT = Counter("chatcast_frames_sent_total", "Frames written to clients, by transport",
                      ["transport"], registry=REGISTRY)
COALESCED = Counter("chatcast_coalesced_deltas_total",
                    "Deltas merged into an earlier queued delta for a busy client",
                    registry=REGISTRY)
SLOW_CLOSES = Counter("chatcast_slow_consumer_closes_total",
                      "Clients closed because their outbox overflowed", registry=REGISTRY)
GENERATIONS = Counter("chatcast_generations_total", "Finished generations by status",
                      ["status"], registry=REGISTRY)
PROVIDER_ERRORS = Counter("chatcast_provider_errors_total", "Provider failures",
                          ["provider", "code"], registry=REGISTRY)
PROVIDER_RETRIES = Counter("chatcast_provider_retries_total", "Retries before the first token",
                           ["provider"], registry=REGISTRY)
RATE_LIMITED = Counter("chatcast_limited_total",
                       "Requests refused by a limit (frames, messages, generations, sockets)",
                       ["limit"], registry=REGISTRY)
AUTH_REFUSED = Counter("chatcast_auth_refused_total",
                       "Requests and handshakes refused for missing or invalid credentials",
                       registry=REGISTRY)


def render() -> bytes:
    return generate_latest(REGISTRY)
