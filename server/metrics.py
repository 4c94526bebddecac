"""Prometheus metrics of one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

ACTIVE_GENERATIONS = Gauge("chatcast_active_generations",
                           "Generations this process is running", registry=REGISTRY)
CLIENTS = Gauge("chatcast_connected_clients", "Connected clients by transport",
                ["transport"], registry=REGISTRY)
TTFT = Histogram("chatcast_time_to_first_token_seconds",
                 "From generation start to its first delta (text or reasoning), by provider",
                 ["provider"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
                 registry=REGISTRY)
TTFA = Histogram("chatcast_time_to_first_answer_token_seconds",
                 "From a generation's start (the user's request accepted) to its first answer "
                 "text (after any reasoning), by provider", ["provider"],
                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120), registry=REGISTRY)


class _PlainCounter(Collector):
    """A counter bumped on the hot path (every frame written): a plain integer per label,
    read only when /metrics is scraped. (A prometheus_client Counter takes a lock per
    increment, which cost ~7 % of the CPU of a busy fan-out.)"""

    def __init__(self, name: str, documentation: str, label: str) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.values: dict[str, int] = {}

    def labels(self, value: str) -> _Child:
        return _Child(self.values, value)

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, labels=[self.label])]

    def collect(self) -> list[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, n in sorted(self.values.items()):
            family.add_metric([value], n)
        return [family]


class _Child:
    __slots__ = ("key", "values")

    def __init__(self, values: dict[str, int], key: str) -> None:
        self.values, self.key = values, key
        values.setdefault(key, 0)

    def inc(self, n: int = 1) -> None:
        self.values[self.key] += n


FRAMES_SENT = _PlainCounter("chatcast_frames_sent", "Frames written to clients, by transport",
                            "transport")
REGISTRY.register(FRAMES_SENT)
for _transport in ("ws", "sse", "poll"):  # at 0 from the start: rate() sees the first frames
    FRAMES_SENT.labels(_transport)
COALESCED = Counter("chatcast_coalesced_deltas_total",
                    "Deltas merged into an earlier queued delta for a busy client",
                    registry=REGISTRY)
LOOP_LAG = Gauge("chatcast_event_loop_lag_seconds",
                 "Median lateness of the event loop's timers over the last second",
                 registry=REGISTRY)
LOOP_STALLS = Histogram(
    "chatcast_event_loop_stalls_seconds",
    "Event loop stalls: how late a timer due every 5 ms ran, for each one late by more "
    "than 2 ms", buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY)
LOOP_LONGEST_STALL = Gauge("chatcast_event_loop_longest_stall_seconds",
                           "The longest event loop stall since the process started",
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
PROVIDER_FAILURES = Counter(
    "chatcast_provider_failures_total",
    "Provider failures by scenario (before_first_token, mid_stream, idle_timeout, "
    "wall_clock_limit) and answers that needed a fallback (fallback_used), by the provider "
    "asked", ["provider", "scenario"], registry=REGISTRY)
GENERATION_DURATION = Histogram(
    "chatcast_generation_duration_seconds",
    "From a generation's start to its terminal state, by status", ["status"],
    buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600), registry=REGISTRY)
TOKENS_PER_S = Histogram(
    "chatcast_output_tokens_per_second",
    "Output tokens per second of completed answers from a provider (first token to the end)",
    ["provider"], buckets=(1, 2, 5, 10, 20, 40, 80, 160, 320, 640, 1280), registry=REGISTRY)
STOP_LATENCY = Histogram(
    "chatcast_stop_latency_seconds",
    "From a stop reaching the generation's process to its done being published",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=REGISTRY)
USER_ACTIONS = Counter(
    "chatcast_user_actions_total",
    "What users do: send, stop, regenerate, continue (seen by the server); copy, reconnect, "
    "transport_fallback (reported by clients)", ["action"], registry=REGISTRY)
CLIENT_ERRORS = Counter("chatcast_client_errors_total", "Errors reported by clients, by kind",
                        ["kind"], registry=REGISTRY)
CACHE_LOOKUPS = Counter(
    "chatcast_cache_lookups_total",
    "Response cache lookups: for an answer (use=answer) or as the last fallback "
    "(use=last_fallback), by result (hit = the answer was served from the cache)",
    ["use", "result"], registry=REGISTRY)
CACHE_STORES = Counter("chatcast_cache_stores_total", "Answers written to the response cache",
                       registry=REGISTRY)
AUTH_REFUSED = Counter("chatcast_auth_refused_total",
                       "Requests and handshakes refused for missing or invalid credentials",
                       registry=REGISTRY)
HOOK_ERRORS = Counter("chatcast_hook_errors_total",
                      "In-process answer hooks (on_done, on_stopped, on_error) that raised",
                      registry=REGISTRY)
WEBHOOK_DELIVERIES = Counter(
    "chatcast_webhook_deliveries_total",
    "Webhook deliveries by outcome: delivered, gave_up (retries exhausted), refused (a 4xx), "
    "dropped (the queue was full), lost (still queued at shutdown)", ["outcome"],
    registry=REGISTRY)
WEBHOOK_FAILURES = Counter(
    "chatcast_webhook_failed_attempts_total",
    "Webhook attempts that failed, by reason (unreachable, timeout, status_5xx, status_4xx, "
    "status_<4xx code>)", ["reason"], registry=REGISTRY)

OUTAGES = Counter("chatcast_outages_total",
                  "Outages this process saw, by component (store = the database, bus = Redis)",
                  ["component"], registry=REGISTRY)
COMPONENT_UP = Gauge("chatcast_component_up",
                     "Whether the component answered this process's last call (1) or not (0)",
                     ["component"], registry=REGISTRY)


STATUSES = ("completed", "stopped", "error", "interrupted")
SCENARIOS = ("before_first_token", "mid_stream", "idle_timeout", "wall_clock_limit",
             "fallback_used")
ACTIONS = ("send", "stop", "regenerate", "continue", "copy", "reconnect",
           "transport_fallback")
COMPONENTS = ("store", "bus")
LIMITS = ("messages", "generations", "frames", "sockets", "client_reports")


def _init() -> None:
    """Every series whose labels are known up front starts at 0: a series born at 1 has no
    increase for `rate()`, so the first error of a kind would never show on a dashboard."""
    for status in STATUSES:
        GENERATIONS.labels(status)
        GENERATION_DURATION.labels(status)
    for action in ACTIONS:
        USER_ACTIONS.labels(action)
    for limit in LIMITS:
        RATE_LIMITED.labels(limit)
    for component in COMPONENTS:
        OUTAGES.labels(component)
        COMPONENT_UP.labels(component).set(1)
    for outcome in ("delivered", "gave_up", "refused", "dropped", "lost"):
        WEBHOOK_DELIVERIES.labels(outcome)
    for reason in ("unreachable", "timeout", "status_5xx"):
        WEBHOOK_FAILURES.labels(reason)
    for use in ("answer", "last_fallback"):
        for result in ("hit", "miss"):
            CACHE_LOOKUPS.labels(use, result)


def init_providers(providers: list[str]) -> None:
    """The per-provider series of the configured providers, at 0 (see `_init`)."""
    for provider in providers:
        for scenario in SCENARIOS:
            PROVIDER_FAILURES.labels(provider, scenario)
        for code in ("provider_error", "provider_unavailable"):
            PROVIDER_ERRORS.labels(provider, code)
        PROVIDER_RETRIES.labels(provider)
        TTFT.labels(provider)
        TTFA.labels(provider)
        TOKENS_PER_S.labels(provider)
    TTFA.labels("cache")


_init()


def loop_stall(late_s: float, longest_s: float) -> None:
    LOOP_STALLS.observe(late_s)
    LOOP_LONGEST_STALL.set(longest_s)


def provider_failure(provider: str, scenario: str) -> None:
    PROVIDER_FAILURES.labels(provider, scenario).inc()


def render() -> bytes:
    return generate_latest(REGISTRY)
