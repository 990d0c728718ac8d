"""A stop made while the control service is down: the data plane applies and acknowledges it
on its own, and the service shows it stopped and confirmed as soon as it is ready again, both
for a campaign it had seen before (tables recovered from their changelogs, committed offsets)
and for one it never saw."""

from __future__ import annotations

import pytest

from streams.control.stop import issue_stop, live_processes
from streams.lab.harness import WorkerProcess
from streams.models import STATE_SENDING, STATE_STOPPED
from streams.serde import Serdes
from streams.settings import Settings
from tests.controlplane.support import ControlProcess, Processes, wait_for
from tests.controlplane.test_api import start_worker
from tests.pipeline.support import announce

pytestmark = pytest.mark.broker


def test_stop_while_the_control_service_is_down_shows_stopped_and_confirmed(
        settings: Settings, serdes: Serdes, processes: Processes) -> None:
    worker_id = start_worker(processes, settings, "--role", "gate", "--role", "dispatcher")
    announce(settings, serdes, "seen-before", ["email", "push"], 10, STATE_SENDING)
    first = processes.add(ControlProcess(settings))
    assert isinstance(first, ControlProcess)
    api = first.start()
    assert api.campaigns()["seen-before"]["state"] == STATE_SENDING
    assert first.stop() == 0

    # Down: one campaign it knew, one it never saw; both stopped and confirmed by the workers.
    announce(settings, serdes, "never-seen", ["sms"], 10, STATE_SENDING)
    stops = {campaign: issue_stop(settings, serdes, campaign, "wrong audience", [], "pytest",
                                  timeout_s=60)
             for campaign in ("seen-before", "never-seen")}
    for result in stops.values():
        assert result.confirmed and worker_id in {a.process_id for a in result.acks}

    second = processes.add(ControlProcess(settings))
    assert isinstance(second, ControlProcess)
    api = second.start()
    # Ready means every record that was on the topics is in: no polling needed.
    listed = api.campaigns()
    for campaign, result in stops.items():
        assert (listed[campaign]["state"], listed[campaign]["confirmed"]) == (STATE_STOPPED, True)
        stop = api.campaign(campaign)["stop"]
        assert stop["command_id"] == result.command_id
        assert stop["confirmed"] is True
        assert worker_id in {a["process_id"] for a in stop["acks"]}
        assert stop["reason"] == "wrong audience"

    # The service records each confirmation (its own topic and table), so it holds once the
    # processes that acknowledged it are gone: a worker started now reads the stops before its
    # first request, and with ESTOP_ACK_RECENT_S=0 it acknowledges none of them (only the
    # partitions it prepares, with the whole view applied).
    def recorded() -> bool:
        return all(c["recorded"] for campaign in stops
                   for c in api.campaign(campaign)["stop"]["commands"])

    wait_for(recorded, "the confirmations to be recorded")
    workers = [p for p in processes.started if not isinstance(p, ControlProcess)]
    assert workers[0].stop() == 0
    later = processes.add(WorkerProcess(settings, extra_args=["--role", "gate"],
                                        env={"ESTOP_METRICS_PORT": "0", "ESTOP_ACK_RECENT_S": "0"}))
    later_id = later.wait_ready()
    wait_for(lambda: later_id in live_processes(settings), f"{later_id} to join its groups")
    wait_for(lambda: api.campaign("never-seen")["stop"]["live_processes"] == [later_id],
             "the control service to see only the new worker")
    # The new worker acknowledges none of these commands; it holds the partitions now and
    # acknowledges them with every command applied, so no holder is missing either.
    wait_for(lambda: all(api.campaign(c)["stop"]["commands"][0]["unacknowledged"] == []
                         for c in stops), "the new worker's partitions to be acknowledged")
    for campaign in stops:
        stop = api.campaign(campaign)["stop"]
        assert stop["confirmed"] is True
        assert later_id not in {a["process_id"] for a in stop["acks"]}
    assert b"estop_stops_unconfirmed 0.0" in api.get("/metrics").body
