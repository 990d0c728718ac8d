"""The control service's HTTP API against the real broker, with real worker processes.

`estop worker` (gates, dispatchers, analytics sink) and `estop control` run as subprocesses; a
campaign is launched the way the campaign engine would, stopped with ``POST
/campaigns/{id}/stop`` and followed with ``GET /campaigns/{id}`` until confirmed and counted."""

from __future__ import annotations

from typing import Any

import pytest

from streams.campaigns.launcher import launch
from streams.control.stop import live_processes
from streams.lab.harness import WorkerProcess
from streams.models import CHANNELS, STATE_FINISHED, STATE_SENDING, STATE_STOPPED
from streams.serde import Serdes
from streams.settings import Settings
from streams.sink.report import campaign_report
from streams.sink.store import open_store
from tests.controlplane.support import Api, ControlProcess, Processes, control_commands, wait_for
from tests.pipeline.support import announce

pytestmark = pytest.mark.broker

REASON = "wrong discount code"


def start_worker(processes: Processes, settings: Settings, *args: str) -> str:
    """`estop worker ARGS` with slow simulated providers (10 messages/s per channel: 300 take
    30 s), so a stop made seconds after the launch finds messages to halt; returns once the
    worker is in the live set a stop waits for."""
    worker = processes.add(WorkerProcess(settings, extra_args=list(args), env={
        "ESTOP_METRICS_PORT": "0", "ESTOP_PROVIDER_RATE": "10", "ESTOP_PROVIDER_DELAY_S": "0.5"}))
    worker_id = worker.wait_ready()
    wait_for(lambda: worker_id in live_processes(settings), f"{worker_id} to join its groups")
    return worker_id


def start_control(processes: Processes, settings: Settings,
                  command: tuple[str, ...] = ("control",)) -> Api:
    control = processes.add(ControlProcess(settings, command))
    assert isinstance(control, ControlProcess)
    return control.start()


def test_stop_through_the_api_is_confirmed_and_counted(settings: Settings, serdes: Serdes,
                                                        processes: Processes) -> None:
    worker_id = start_worker(processes, settings)  # every gate and dispatcher, and the sink
    campaign = "api-stop"
    launched = launch(settings, serdes, campaign, ["email", "sms"], 300)
    assert launched.state == STATE_FINISHED
    api = start_control(processes, settings)

    # Ready means caught up: the campaign is listed at once, Finished, nothing stopped.
    listed = api.campaigns()[campaign]
    assert listed["state"] == STATE_FINISHED
    assert listed["planned"] == 600
    assert listed["stopped"] is False and listed["confirmed"] is None

    reply = api.stop(campaign, {"reason": REASON})
    assert reply.status == 202, reply.body
    accepted = reply.json()
    command_id = accepted["command_id"]
    assert accepted["campaign_id"] == campaign and accepted["already_stopped"] is False
    assert accepted["channels"] == sorted(CHANNELS)

    # Exactly one command, written as `estop stop` writes it.
    commands = control_commands(settings, serdes)
    assert [(c["command_id"], c["campaign_id"], c["reason"], c["requested_by"], c["channels"])
            for c in commands] == [(command_id, campaign, REASON, "anonymous", [])]

    def confirmed() -> bool:
        stop = api.campaign(campaign)["stop"]
        return bool(stop and stop["confirmed"])

    wait_for(confirmed, "the stop to show confirmed")
    detail = api.campaign(campaign)
    assert detail["state"] == STATE_STOPPED
    stop = detail["stop"]
    assert stop["command_id"] == command_id
    assert stop["reason"] == REASON and stop["requested_by"] == "anonymous"
    assert stop["channels"] == sorted(CHANNELS)
    assert worker_id in stop["live_processes"]
    assert worker_id in {a["process_id"] for a in stop["acks"]}
    assert all(not c["unacknowledged"] for c in stop["commands"])

    # Counts come from the analytics store: once every message has its outcome, the API shows
    # exactly the store's split, and the stop halted messages on both channels.
    wait_for(lambda: api.campaign(campaign)["pending"] == 0, "every message to have an outcome")
    detail = api.campaign(campaign)
    store = open_store(settings)
    try:
        report = campaign_report(store, campaign)
    finally:
        store.close()
    for channel in ("email", "sms"):
        counts, stored = detail["counts"][channel], report["by_channel"][channel]
        assert counts["planned"] == 300
        assert counts["sent"] + counts["not_sent"] == 300
        assert (counts["sent"], counts["not_sent"]) == (stored["sent"], stored["not_sent"])
        assert counts["not_sent_by_stage"] == stored["not_sent_by_stage"]
        assert counts["not_sent"] > 0
    assert detail["sent"] + detail["not_sent"] == 600

    listed = api.campaigns()[campaign]
    assert (listed["state"], listed["stopped"], listed["confirmed"]) == (STATE_STOPPED, True, True)
    assert (listed["sent"], listed["not_sent"]) == (detail["sent"], detail["not_sent"])

    # Stopping again writes nothing and names the stop in force.
    again = api.stop(campaign, {"reason": "twice"})
    assert again.status == 200, again.body
    assert again.json()["already_stopped"] is True and again.json()["command_id"] == command_id
    assert len(control_commands(settings, serdes)) == 1


BAD_REQUESTS: list[tuple[str, bytes | dict[str, Any], int, str]] = [
    ("api-sending", b"{not json", 400, "not valid JSON"),
    ("api-sending", b"", 400, "JSON object"),
    ("api-sending", b'["stop"]', 400, "JSON object"),
    ("api-sending", {"channels": []}, 400, "reason"),
    ("api-sending", {"reason": REASON, "by": "someone else"}, 400, "authenticated identity"),
    ("api-sending", {"reason": "   "}, 400, "reason"),
    ("api-sending", {"reason": 42}, 400, "reason"),
    ("api-sending", {"reason": REASON, "channels": ["email", "fax"]}, 400, "fax"),
    ("api-sending", {"reason": REASON, "channels": "email"}, 400, "channels"),
    ("api-sending", {"reason": REASON, "reasn": "typo"}, 400, "reasn"),
    ("api-sending", {"reason": REASON, "force": "yes"}, 400, "force"),
    ("api-unknown", {"reason": REASON}, 404, "unknown campaign"),
    ("api-draft", {"reason": REASON}, 409, "Draft"),
]


def test_bad_requests_answer_4xx_naming_the_problem_and_write_nothing(
        settings: Settings, serdes: Serdes, processes: Processes) -> None:
    announce(settings, serdes, "api-sending", ["email"], 10, STATE_SENDING)
    # A lifecycle state the stop does not know: refused without --force.
    announce(settings, serdes, "api-draft", ["email"], 10, "Draft")
    api = start_control(processes, settings, ("worker", "--role", "control"))

    health = api.get("/health")
    assert health.status == 200 and health.json()["ready"] is True
    metrics = api.get("/metrics")
    assert metrics.status == 200 and metrics.content_type.startswith("text/plain")
    assert b'estop_role_up{role="control"} 1.0' in metrics.body
    assert b"estop_stops_unconfirmed 0.0" in metrics.body

    failures = []
    for campaign, body, status, words in BAD_REQUESTS:
        reply = api.stop(campaign, body)
        error = reply.json().get("error", "") if reply.content_type.startswith("application/json") else ""
        if reply.status != status or words not in error:
            failures.append((campaign, body, reply.status, reply.body))
    assert failures == []
    unknown = api.get("/campaigns/api-unknown")
    assert unknown.status == 404 and "unknown campaign" in unknown.json()["error"]
    assert control_commands(settings, serdes) == [], "a rejected stop wrote to campaign-control"
    assert api.campaigns()["api-sending"]["stopped"] is False

    # The same endpoint does write once the request is valid: "force" stops a campaign not seen.
    forced = api.stop("api-unknown", {"reason": REASON, "channels": ["sms"], "force": True})
    assert forced.status == 202, forced.body
    commands = control_commands(settings, serdes)
    assert [(c["command_id"], c["campaign_id"], c["channels"]) for c in commands] == [
        (forced.json()["command_id"], "api-unknown", ["sms"])]
    # No gate or dispatcher runs: nobody to wait for, the stop is confirmed as `estop stop` says.
    wait_for(lambda: bool(api.get("/campaigns/api-unknown").status == 200
                          and api.campaign("api-unknown")["stop"]["confirmed"]),
             "the forced stop to show")
    assert api.campaign("api-unknown")["state"] == STATE_STOPPED
