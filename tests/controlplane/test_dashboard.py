"""The Grafana dashboard (deploy/grafana) against a real Prometheus scraping a running pipeline.

A worker (gates, dispatchers, sink) and the control service run as subprocesses; Prometheus
(Debian's package; missing fails the test) scrapes both every second with the project's rule
files. A short campaign is stopped through the API, one unreadable record is dead-lettered, and
then every panel's query and every annotation query, read from the dashboard JSON, must return
data through Prometheus's HTTP API; the alert rules evaluate without error and the dead-letter
alert fires."""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

import streams.metrics  # noqa: F401  (registers every metric the dashboard may name)
from streams.campaigns.launcher import launch
from streams.control.stop import live_processes
from streams.lab.harness import WorkerProcess
from streams.models import STATE_FINISHED
from streams.serde import Serdes
from streams.settings import Settings
from tests.controlplane.support import (
    DASHBOARD,
    WAIT_S,
    ControlProcess,
    Processes,
    PrometheusServer,
    produce_raw,
    ready_field,
    wait_for,
)
from tests.controlplane.test_api import control_commands
from tests.support import free_port

# Grafana's variables, as Grafana would fill them for a 1 s scrape interval.
GRAFANA_VARIABLES = {"$__rate_interval": "10s", "$__interval": "2s", "$__range": "5m"}

# Queries that must show more than zero at some point of this run, not just exist.
NONZERO = {
    ("Sent vs notSent per channel", "A"),
    ("Sent vs notSent per channel", "B"),
    ("notSent by stage", "A"),
    ("Dead-lettered records", "A"),
    ("Provider handoffs per channel", "A"),
    ("Analytics outcomes stored", "A"),
    ("annotation: Stops", "expr"),
}


@dataclass(frozen=True)
class Query:
    panel: str
    ref: str
    expr: str

    @property
    def promql(self) -> str:
        expr = self.expr
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        return expr


def dashboard_queries(dashboard: dict[str, Any]) -> list[Query]:
    queries = [Query(panel["title"], target["refId"], target["expr"])
               for panel in dashboard["panels"] for target in panel.get("targets", [])]
    queries += [Query(f"annotation: {a['name']}", "expr", a["expr"])
                for a in dashboard["annotations"]["list"] if a.get("expr")]
    return queries


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(Path(DASHBOARD).read_text())
    return dashboard


def exported_series_names() -> set[str]:
    """Every sample name the project's processes can export."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        names |= {family.name + s for s in suffixes.get(family.type, [""])}
    return names


def test_dashboard_covers_the_required_views() -> None:
    dashboard = load_dashboard()
    queries = dashboard_queries(dashboard)
    assert all(panel.get("targets") for panel in dashboard["panels"]), "a panel without a query"
    assert {"Sent vs notSent per channel", "annotation: Stops"} <= {q.panel for q in queries}
    named = {name for q in queries for name in re.findall(r"\bestop_[a-z_]+\b", q.expr)}
    for required in ("estop_sent_events_total", "estop_notsent_events_total",
                     "estop_stop_propagation_seconds_bucket", "estop_consumer_lag_records",
                     "estop_dead_lettered_records_total", "estop_stops_applied_total"):
        assert required in named, f"no panel shows {required}"
    unknown = named - exported_series_names()
    assert not unknown, f"the dashboard names metrics no process exports: {unknown}"
    assert {(q.panel, q.ref) for q in queries} >= NONZERO


def values(result: list[dict[str, Any]]) -> list[float]:
    return [float(v) for series in result for _, v in series["values"]
            if not math.isnan(float(v)) and not math.isinf(float(v))]


@pytest.mark.timeout(600)
def test_every_panel_query_returns_data_from_a_real_prometheus(
        settings: Settings, serdes: Serdes, processes: Processes, tmp_path: Path) -> None:
    worker = processes.add(WorkerProcess(settings, env={
        "ESTOP_METRICS_PORT": "0", "ESTOP_PROVIDER_RATE": "10", "ESTOP_PROVIDER_DELAY_S": "0.5"}))
    worker_id = worker.wait_ready()
    worker_port = int(ready_field(worker.lines[-1], "metrics_port"))
    control = processes.add(ControlProcess(settings))
    assert isinstance(control, ControlProcess)
    api = control.start()
    prometheus = PrometheusServer(tmp_path / "prometheus", {
        "estop-worker": f"127.0.0.1:{worker_port}",
        "estop-control": f"127.0.0.1:{control.port}",
    }, free_port())
    try:
        prometheus.wait_ready()
        prometheus.wait_targets_up(["estop-worker", "estop-control"])
        wait_for(lambda: worker_id in live_processes(settings), "the worker to join its groups")
        started = time.time() - 5

        # One unreadable record for the gate: dead-lettered, counted, and the next goes on.
        produce_raw(settings, settings.topics.send_requests("email"), [b"not an avro value"])
        campaign = "dash-stop"
        assert launch(settings, serdes, campaign, ["email", "sms"], 300).state == STATE_FINISHED
        wait_for(lambda: api.get(f"/campaigns/{campaign}").status == 200,
                 "the control service to have read the campaign")  # 404 until then
        wait_for(lambda: api.campaign(campaign)["sent"] > 0, "some messages to be sent")
        reply = api.stop(campaign, {"reason": "wrong discount code"})
        assert reply.status == 202, reply.body
        wait_for(lambda: bool(api.campaign(campaign)["stop"]["confirmed"]), "the stop to be confirmed")
        wait_for(lambda: api.campaign(campaign)["pending"] == 0, "every message to have an outcome")
        assert len(control_commands(settings, serdes)) == 1

        queries = dashboard_queries(load_dashboard())
        missing: dict[tuple[str, str], str] = {}

        def all_have_data() -> bool:
            missing.clear()
            for query in queries:
                result = prometheus.api("query_range", query=query.promql, start=started,
                                        end=time.time(), step=1)["result"]
                found = values(result)
                wanted = (query.panel, query.ref) in NONZERO
                if not found or (wanted and max(found) <= 0):
                    missing[(query.panel, query.ref)] = query.promql
            return not missing

        try:
            wait_for(all_have_data, "every dashboard query to return data", every_s=1.0)
        except AssertionError:
            raise AssertionError(f"queries without data: {json.dumps(missing, indent=1)}") from None

        # The rules load and evaluate without error against the real metrics.
        def rules_healthy() -> bool:
            rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
            return bool(rules) and all(r["health"] == "ok" for r in rules)

        wait_for(rules_healthy, "every rule to evaluate without error")

        def alerts() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = prometheus.api("alerts")["alerts"]
            return found

        dead_letter_topic = settings.topics.send_requests("email")
        wait_for(lambda: any(a["labels"]["alertname"] == "EstopRecordsDeadLettered"
                             and a["labels"].get("topic") == dead_letter_topic
                             and a["state"] == "firing" for a in alerts()),
                 "the dead-letter alert to fire", timeout_s=WAIT_S)
        names = {a["labels"]["alertname"] for a in alerts()}
        assert not names & {"EstopHandoffAfterConfirmedStop", "EstopStopNotConfirmed"}, names
    finally:
        prometheus.stop()
        print("--- prometheus log:\n" + prometheus.log.read_text()[-3000:])
