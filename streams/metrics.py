"""Every Prometheus metric of the project, defined once. Labels are bounded sets (channel, stage,
result, role, topic); never a campaign, message or recipient id (see docs/metrics.md)."""

from __future__ import annotations

import logging
import socket

from prometheus_client import Counter, Gauge, Histogram, start_http_server

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
HANDOFFS = Counter("estop_provider_handoffs_total", "Messages handed to a provider", ["channel"])
CANCELLED = Counter(
    "estop_provider_cancelled_total", "Messages a provider still held and cancelled on a stop",
    ["channel"],
)
DEAD_LETTERED = Counter(
    "estop_dead_lettered_records_total", "Unreadable records sent to a dead-letter topic",
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
SINK_STORE_SECONDS = Histogram(
    "estop_sink_store_seconds", "Time to write one consumed batch to the analytics store",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
UP = Gauge("estop_role_up", "1 while a role runs in this process", ["role"])


def serve_metrics(port: int) -> int:
    """Serve /metrics on ``port``, or on a free port if it is taken; returns the port used."""
    if port:
        try:
            start_http_server(port)
            return port
        except OSError:
            log.warning("metrics port %d is taken; serving metrics on a free port instead", port)
    with socket.socket() as probe:
        probe.bind(("", 0))
        free = int(probe.getsockname()[1])
    start_http_server(free)
    return free
