"""The confirmation rule and the campaign answers of the control service, without Kafka."""

from __future__ import annotations

from typing import Any

from streams.control.view import ControlView
from streams.controlplane import state
from streams.models import STATE_FINISHED, STATE_STOPPED


def command(command_id: str, channels: list[str], at: int) -> dict[str, Any]:
    return {"command_id": command_id, "campaign_id": "c", "action": "stop", "channels": channels,
            "reason": "oops", "requested_by": "ops", "requested_at": at}


def ack(command_id: str, process_id: str, applied_at: int) -> dict[str, Any]:
    return {"process_id": process_id, "roles": ["gate.email"], "command_id": command_id,
            "campaign_id": "c", "command_requested_at": 1000, "applied_at": applied_at, "halted": 2}


def test_confirmed_once_every_live_process_acknowledged() -> None:
    view = ControlView()
    view.apply(command("k1", [], 1000))
    stop = view.stops("c")[0]
    acks = {"k1": {"w1": ack("k1", "w1", 1010)}}
    waiting = state.confirmation(stop, acks, {}, {"w1", "w2"})
    assert (waiting.confirmed, waiting.unacknowledged) == (False, ["w2"])
    acks["k1"]["w2"] = ack("k1", "w2", 1030)
    done = state.confirmation(stop, acks, {}, {"w1", "w2"})
    assert (done.confirmed, done.confirmed_at, done.recorded) == (True, 1030, False)
    # Nobody live: confirmed, as `estop stop` says (every later worker reads it first).
    assert state.confirmation(stop, {}, {}, set()).confirmed


def test_a_recorded_confirmation_holds_after_the_acknowledging_processes_left() -> None:
    view = ControlView()
    view.apply(command("k1", ["sms"], 1000))
    stop = view.stops("c")[0]
    later = state.confirmation(stop, {"k1": {"w1": ack("k1", "w1", 1010)}},
                               {"k1": {"confirmed_at": 1010}}, {"w9"})
    assert (later.confirmed, later.recorded, later.unacknowledged) == (True, True, ["w9"])


def test_detail_combines_lifecycle_stop_and_store_counts() -> None:
    view = ControlView()
    view.apply(command("k1", ["email"], 1000))
    view.apply(command("k2", ["email", "sms"], 2000))  # adds sms: a second command in force
    status = {"campaign_id": "c", "state": STATE_FINISHED, "channels": ["email", "sms"],
              "planned": {"email": 10, "sms": 5}, "queued": {}, "updated_at": 900, "stop": None}
    report = {"by_channel": {"email": {"sent": 4, "not_sent": 6,
                                       "not_sent_by_stage": {"sending": 1, "provider": 5}}}}
    acks = {"k1": {"w1": ack("k1", "w1", 1010)}, "k2": {}}
    detail = state.campaign_detail("c", status, view, acks, {}, {"w1"}, report, now=2500,
                                   timeout_ms=1000)
    assert detail["state"] == STATE_STOPPED
    assert detail["counts"]["email"] == {"planned": 10, "sent": 4, "not_sent": 6,
                                         "not_sent_by_stage": {"sending": 1, "provider": 5},
                                         "failed": 0, "pending": 0}
    assert detail["counts"]["sms"]["pending"] == 5
    stop = detail["stop"]
    assert stop["channels"] == ["email", "sms"] and stop["command_id"] == "k1"
    assert [c["confirmed"] for c in stop["commands"]] == [True, False]
    assert stop["confirmed"] is False and stop["confirmed_at"] is None
    # The page follows the latest command: w1 is expected and has not acknowledged k2; k1 is
    # 1.5 s old but confirmed, k2 is 0.5 s old: neither has timed out (1 s).
    assert (stop["expected"], stop["acknowledged"], stop["timed_out"]) == (["w1"], [], False)
    late = state.campaign_detail("c", status, view, acks, {}, {"w1"}, report, now=3001,
                                 timeout_ms=1000)
    assert late["stop"]["timed_out"] is True and late["stop"]["propagation_ms"] is None
    summary = state.campaign_summary(detail)
    assert (summary["stopped"], summary["confirmed"], summary["pending"]) == (True, False, 5)
