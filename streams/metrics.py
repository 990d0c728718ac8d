"""Every Prometheus metric of the project, defined once. Labels are bounded sets (channel, stage,
result, role, topic); never a campaign, message or recipient id (see docs/metrics.md)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

log = logging.getLogger(__name__)

GATE_REQUESTS = Counter(
    "estop_gate_requests_total", "Send requests through the gate, by channel and result",
    ["channel", "result"],  # passed | halted | dead_lettered
)
NOT_SENT = Counter(
    "estop_notsent_events_total", "notSent events published, by channel and stage",
    ["channel", "stage"],
)
SENT = Counter("estop_sent_events_total", "sent events published (provider receipts)", ["channel"])
FAILED = Counter(
    "estop_failed_events_total",
    "failed events published: messages the provider never accepted within the retry budget",
    ["channel"],
)
PROVIDER_RETRIES = Counter(
    "estop_provider_retries_total", "Handoffs tried again after a provider error or timeout",
    ["channel", "error"],  # error | timeout
)
HANDOFFS = Counter("estop_provider_handoffs_total", "Messages handed to a provider", ["channel"])
CANCELLED = Counter(
    "estop_provider_cancelled_total", "Messages a provider still held and cancelled on a stop",
    ["channel"],
)
LEDGER_RESTORE_SECONDS = Histogram(
    "estop_ledger_restore_seconds",
    "Time a dispatcher took to restore the ledger of partitions assigned to it (from the changelog)",
    ["channel"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
LEDGER_ENTRIES = Gauge(
    "estop_ledger_entries", "Handoff ledger entries a dispatcher holds in memory", ["channel"],
)
CANCEL_UNCONFIRMED = Counter(
    "estop_provider_cancel_unconfirmed_total",
    "Messages whose cancel a provider took on a stop without proving they will not be delivered",
    ["channel"],
)
DEAD_LETTERED = Counter(
    "estop_dead_lettered_records_total", "Unreadable records sent to a dead-letter topic",
    ["topic"],
)
UNREADABLE = Counter(
    "estop_unreadable_records_total",
    "Unreadable records a reader without a dead-letter topic skipped (each one logged)",
    ["topic"],
)
CONTROL_ANOMALIES = Counter(
    "estop_control_anomalies_total",
    "Control records ignored: tombstones for a stopped campaign, unknown actions, unreadable",
)
STOPS_APPLIED = Counter("estop_stops_applied_total", "Stop commands applied by this process")
STOP_PROPAGATION = Histogram(
    "estop_stop_propagation_seconds",
    "From the stop record's timestamp to this process having applied it (hooks included)",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
)
CONSUMER_LAG = Gauge(
    "estop_consumer_lag_records", "Records behind the end of the input topic", ["role", "topic"],
)
HANDOFFS_AFTER_CONFIRMED_STOP = Gauge(
    "estop_handoffs_after_confirmed_stop",
    "Messages handed to a provider after the stop covering them was confirmed (must stay 0)",
    ["channel"],
)
SINK_OUTCOMES = Counter(
    "estop_sink_outcomes_total", "Outcomes newly stored by the analytics sink", ["outcome"],
)
SINK_CONFLICTS = Counter(
    "estop_sink_conflicts_total", "Messages seen with both sent and notSent (sent wins)",
)
SINK_RECEIPTS_OVER_CANCEL = Counter(
    "estop_sink_receipts_over_cancel_total",
    "Messages a stop's cancel at the provider counted notSent whose delivery receipt came after "
    "all the same: counted sent",
)
SINK_STORE_SECONDS = Histogram(
    "estop_sink_store_seconds", "Time to write one consumed batch to the analytics store",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
UP = Gauge("estop_role_up", "1 while a role runs in this process", ["role"])

# Control plane (`estop control`): stop confirmation as the control service follows it.
STOPS_UNCONFIRMED = Gauge(
    "estop_stops_unconfirmed",
    "Stops in force that not every live gate and dispatcher process has acknowledged yet",
)
STOP_UNCONFIRMED_SECONDS = Gauge(
    "estop_stop_unconfirmed_seconds",
    "Age of the oldest stop not confirmed yet; 0 while every stop is confirmed",
)
LIVE_PROCESSES = Gauge(
    "estop_live_processes", "Live gate and dispatcher processes (members of their consumer groups)",
)
CAMPAIGNS = Gauge("estop_campaigns", "Campaigns the control service knows, by lifecycle state",
                  ["state"])


def init_labels(channels: tuple[str, ...] | list[str], topics: list[str]) -> None:
    """Create the labelled series a process will count in at 0, before anything happens: a
    series born at its first increment makes rate()/increase() miss that increment (dashboards
    and the dead-letter alert depend on seeing it)."""
    from streams.models import STAGES

    for channel in channels:
        SENT.labels(channel)
        FAILED.labels(channel)
        for error in ("error", "timeout"):
            PROVIDER_RETRIES.labels(channel, error)
        HANDOFFS.labels(channel)
        CANCELLED.labels(channel)
        LEDGER_ENTRIES.labels(channel)
        CANCEL_UNCONFIRMED.labels(channel)
        for stage in STAGES:
            NOT_SENT.labels(channel, stage)
        for result in ("passed", "halted", "dead_lettered"):
            GATE_REQUESTS.labels(channel, result)
    for outcome in ("sent", "not_sent", "failed"):
        SINK_OUTCOMES.labels(outcome)
    for topic in topics:
        DEAD_LETTERED.labels(topic)


HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]


class _QuietHandler(WSGIRequestHandler):
    """Probes and scrapes every few seconds would drown the worker's log."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _app(health: HealthCheck) -> Callable[..., Iterable[bytes]]:
    """``/health``: 200 or 503 with what the process checked, as JSON; anything else: metrics."""
    metrics = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/health":
            return metrics(environ, start_response)
        healthy, details = health()
        body = json.dumps({"healthy": healthy, **details}).encode()
        start_response("200 OK" if healthy else "503 Service Unavailable",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return app


def serve_metrics(port: int, health: HealthCheck) -> int:
    """Serve /metrics and /health on ``port``, or on a free port if it is 0 or taken; returns the
    port used. The free port is the one the server bound (no probe-then-bind race between
    processes)."""
    app = _app(health)
    try:
        server = make_server("", port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    except OSError:
        if not port:
            raise
        log.warning("metrics port %d is taken; serving metrics on a free port instead", port)
        server = make_server("", 0, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return int(server.server_port)

# Guardrails (`estop worker --role guardrail`): labels are the rule's name and the channel.
GUARDRAIL_VALUE = Gauge(
    "estop_guardrail_rule_value",
    "A guardrail rule's rate now (bounces, complaints, ... per outcome in its window), highest "
    "against its threshold over the campaigns this process holds that reached the rule's "
    "minimum sample",
    ["rule", "channel"],
)
GUARDRAIL_THRESHOLD = Gauge(
    "estop_guardrail_rule_threshold",
    "The threshold of the campaign whose rate estop_guardrail_rule_value shows",
    ["rule", "channel"],
)
GUARDRAIL_TRIPS = Counter(
    "estop_guardrail_trips_total", "Guardrail rules that tripped (one per campaign)",
    ["rule", "channel"],
)
GUARDRAIL_STOPS = Counter(
    "estop_guardrail_stops_total", "Stop commands a guardrail wrote", ["rule"],
)
