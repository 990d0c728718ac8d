"""The confirmation rule and the campaign answers of the control service, without Kafka."""

from __future__ import annotations

from typing import Any

from streams.control.confirmation import Coverage, GroupHolding, Holdings
from streams.control.view import ControlView
from streams.controlplane import state
from streams.models import STATE_FINISHED, STATE_STOPPED


def command(command_id: str, channels: list[str], at: int) -> dict[str, Any]:
    return {"command_id": command_id, "campaign_id": "c", "action": "stop", "channels": channels,
            "reason": "oops", "requested_by": "ops", "requested_at": at}


def ack(command_id: str, process_id: str, applied_at: int, partitions: list[str],
        through: int) -> dict[str, Any]:
    return {"process_id": process_id, "roles": ["gate.email"], "command_id": command_id,
            "campaign_id": "c", "command_requested_at": 1000, "applied_at": applied_at, "halted": 2,
            "partitions": partitions, "control_offsets": [through]}


def holding(gate: dict[int, str], dispatcher: dict[int, str]) -> Holdings:
    """Email's gate and dispatcher topics, two partitions each, held as given; the other
    channels never ran."""
    groups = [GroupHolding("gate.email", "send-requests.email", 2, True, gate, frozenset(gate.values())),
              GroupHolding("dispatcher.email", "dispatch.email", 2, True, dispatcher,
                           frozenset(dispatcher.values()))]
    groups += [GroupHolding(f"{role}.{c}", f"{c}-topic", 2, False, {}, frozenset())
               for c in ("sms", "push", "webpush") for role in ("gate", "dispatcher")]
    return Holdings(groups)


EMAIL = ["send-requests.email:0", "send-requests.email:1", "dispatch.email:0", "dispatch.email:1"]


def evidence(acks: list[dict[str, Any]], held: Holdings,
             confirmations: dict[str, Any] | None = None) -> state.Evidence:
    coverage = Coverage()
    by_command: dict[str, dict[str, dict[str, Any]]] = {}
    for a in acks:
        coverage.add(a)
        if a["command_id"]:
            by_command.setdefault(a["command_id"], {})[a["process_id"]] = a
    return state.Evidence(by_command, coverage, held, {"k1": (0, 5), "k2": (0, 9)},
                          confirmations or {})


def test_confirmed_once_every_partition_is_held_by_a_process_that_applied_it() -> None:
    view = ControlView()
    view.apply(command("k1", [], 1000))
    stop = view.stops("c")[0]
    held = holding({0: "w1", 1: "w2"}, {0: "w1", 1: "w1"})
    acks = [ack("k1", "w1", 1010, ["send-requests.email:0", "dispatch.email:0", "dispatch.email:1"], 6)]
    waiting = state.confirmation(stop, evidence(acks, held))
    assert (waiting.confirmed, waiting.unacknowledged) == (False, ["w2"])
    assert waiting.waiting_for == ("send-requests.email:1 (held by w2)",)
    # w2 acknowledges the partition assigned to it, with the control topic applied past k1.
    acks.append(ack("", "w2", 1030, ["send-requests.email:1"], 6))
    done = state.confirmation(stop, evidence(acks, held))
    assert (done.confirmed, done.confirmed_at, done.recorded) == (True, 1010, False)
    # An acknowledgement that does not reach the command's offset does not cover it.
    short = [ack("k1", "w1", 1010, EMAIL, 5)]
    assert not state.confirmation(stop, evidence(short, holding({0: "w1", 1: "w1"},
                                                                 {0: "w1", 1: "w1"}))).confirmed
    # A partition in transit (revoked, not assigned yet) is held by nobody: not confirmed.
    transit = state.confirmation(stop, evidence(acks, holding({0: "w1", 1: "w2"}, {0: "w1"})))
    assert transit.waiting_for == ("dispatch.email:1 (in transit: no process holds it)",)
    # Nothing ever ran for any channel: confirmed (every later worker reads it first).
    assert state.confirmation(stop, evidence([], Holdings([]))).confirmed


def test_a_recorded_confirmation_holds_after_the_acknowledging_processes_left() -> None:
    view = ControlView()
    view.apply(command("k1", ["sms"], 1000))
    stop = view.stops("c")[0]
    later = state.confirmation(stop, evidence([], holding({0: "w9"}, {}),
                                              {"k1": {"confirmed_at": 1010, "live": ["w1"]}}))
    assert (later.confirmed, later.recorded, later.expected) == (True, True, ("w1",))


def test_detail_combines_lifecycle_stop_and_store_counts() -> None:
    view = ControlView()
    view.apply(command("k1", ["email"], 1000))
    view.apply(command("k2", ["email", "sms"], 2000))  # adds sms: a second command in force
    status = {"campaign_id": "c", "state": STATE_FINISHED, "channels": ["email", "sms"],
              "planned": {"email": 10, "sms": 5}, "queued": {}, "updated_at": 900, "stop": None}
    report = {"by_channel": {"email": {"sent": 4, "not_sent": 6,
                                       "not_sent_by_stage": {"sending": 1, "provider": 5}}}}
    # w1 runs email and sms and applied the topic up to k1 (k2 adds sms, not applied yet).
    held = holding({0: "w1", 1: "w1"}, {0: "w1", 1: "w1"})
    held.groups[2:4] = [GroupHolding(f"{role}.sms", f"{topic}.sms", 1, True, {0: "w1"},
                                     frozenset({"w1"}))
                        for role, topic in (("gate", "send-requests"), ("dispatcher", "dispatch"))]
    sms = ["send-requests.sms:0", "dispatch.sms:0"]
    proof = evidence([ack("k1", "w1", 1010, EMAIL + sms, 6)], held)
    detail = state.campaign_detail("c", status, view, proof, report, now=2500, timeout_ms=1000)
    assert detail["state"] == STATE_STOPPED
    assert detail["counts"]["email"] == {"planned": 10, "sent": 4, "not_sent": 6,
                                         "not_sent_by_stage": {"sending": 1, "provider": 5},
                                         "failed": 0, "pending": 0, "cancel_unconfirmed": 0}
    assert detail["counts"]["sms"]["pending"] == 5
    stop = detail["stop"]
    assert stop["channels"] == ["email", "sms"] and stop["command_id"] == "k1"
    assert [c["confirmed"] for c in stop["commands"]] == [True, False]
    assert stop["confirmed"] is False and stop["confirmed_at"] is None
    # The page follows the latest command: w1 is expected and has not acknowledged k2; k1 is
    # 1.5 s old but confirmed, k2 is 0.5 s old: neither has timed out (1 s).
    assert (stop["expected"], stop["acknowledged"], stop["timed_out"]) == (["w1"], [], False)
    late = state.campaign_detail("c", status, view, proof, report, now=3001, timeout_ms=1000)
    assert late["stop"]["timed_out"] is True and late["stop"]["propagation_ms"] is None
    summary = state.campaign_summary(detail)
    assert (summary["stopped"], summary["confirmed"], summary["pending"]) == (True, False, 5)
