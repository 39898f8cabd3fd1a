"""Prometheus metrics (DESIGN §4.5). Names come from the plan so its PromQL works unchanged.

Call sites use the small functions below, never the metric objects, so the storage
behind them (in-process registry or multiprocess files that survive short-lived runs)
can change without touching them.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CDC_EVENTS = Counter("cdc_events", "CDC events received", ["channel", "change_type"])
CDC_LAG = Gauge("cdc_lag_seconds", "Seconds between now and the newest commit seen", ["channel"])
DECISIONS = Counter("decisions", "Workload decisions", ["workload", "outcome", "policy_version"])
FIRST_RESPONSE_LATENCY = Histogram(
    "first_response_latency_seconds",
    "Lead creation to first response",
    buckets=(60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 604800),
)
ASSIGNMENT_LATENCY = Histogram(
    "assignment_latency_seconds",
    "Lead creation to first user owner",
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600),
)
ERRORS = Counter("errors", "Errors by area", ["area"])
AUTH_REQUESTS = Counter("auth_requests", "Salesforce auth requests", ["result"])
AUTH_LATENCY = Histogram("auth_latency_seconds", "Salesforce token request latency")


def record_cdc_event(channel: str, change_type: str, count: int = 1) -> None:
    CDC_EVENTS.labels(channel=channel, change_type=change_type).inc(count)


def set_cdc_lag(channel: str, seconds: float) -> None:
    CDC_LAG.labels(channel=channel).set(seconds)


def record_decision(workload: str, outcome: str, policy_version: str) -> None:
    DECISIONS.labels(workload=workload, outcome=outcome, policy_version=policy_version).inc()


def observe_first_response(seconds: float) -> None:
    FIRST_RESPONSE_LATENCY.observe(seconds)


def observe_assignment(seconds: float) -> None:
    ASSIGNMENT_LATENCY.observe(seconds)


def record_error(area: str) -> None:
    ERRORS.labels(area=area).inc()


def record_auth(result: str, latency_seconds: float | None = None) -> None:
    """result: 'hit' (cached token), 'success' (fetched), 'failure'."""
    AUTH_REQUESTS.labels(result=result).inc()
    if latency_seconds is not None:
        AUTH_LATENCY.observe(latency_seconds)
