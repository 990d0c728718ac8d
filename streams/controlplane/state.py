"""What the control plane answers, computed from decoded records: campaign lifecycle records,
the control view, acknowledgements, confirmations, the live processes and the analytics report.
Pure functions, no Kafka, no Faust."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streams.campaigns.lifecycle import effective_state
from streams.control.stop import stoppable
from streams.control.view import ControlView, Stop
from streams.models import STAGES
from streams.models.ids import id_problem

# command id -> process id -> decoded ControlAck
AcksByCommand = Mapping[str, Mapping[str, dict[str, Any]]]
# command id -> {"confirmed_at": ms, "live": [process ids]}
Confirmations = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class Confirmation:
    confirmed: bool
    confirmed_at: int | None  # when the last live process applied it (ms), if confirmed
    unacknowledged: list[str]  # live processes that have not acknowledged it
    recorded: bool = False  # the service recorded the confirmation (survives its restarts)
    expected: tuple[str, ...] = ()  # the processes whose acknowledgements it waits (waited) for


def confirmation(stop: Stop, acks: AcksByCommand, confirmations: Confirmations,
                 live: set[str]) -> Confirmation:
    """A stop is confirmed once every live gate and dispatcher process acknowledged it, the
    rule `estop stop` applies. Once seen confirmed it stays confirmed (``confirmations``): a
    process that starts later reads the stop before its first request."""
    acked = acks.get(stop.command_id, {})
    missing = sorted(live - acked.keys())
    recorded = confirmations.get(stop.command_id)
    if recorded is not None:
        return Confirmation(True, recorded.get("confirmed_at"), missing, recorded=True,
                            expected=tuple(recorded.get("live", ())))
    if missing:
        return Confirmation(False, None, missing, expected=tuple(sorted(live)))
    applied = [int(a["applied_at"]) for p, a in acked.items() if p in live]
    return Confirmation(True, max(applied) if applied else None, [], expected=tuple(sorted(live)))


def stop_detail(stops: list[Stop], acks: AcksByCommand, confirmations: Confirmations,
                live: set[str], now: int, timeout_ms: int) -> dict[str, Any] | None:
    """The stop of a campaign: every command in force (a later command may add channels), each
    with its acknowledgements; ``confirmed`` once every command is. ``timed_out``: a command is
    still unconfirmed ``timeout_ms`` after it was requested (the stop stays in force)."""
    if not stops:
        return None
    commands: list[dict[str, Any]] = []
    for stop in stops:
        state = confirmation(stop, acks, confirmations, live)
        acked = acks.get(stop.command_id, {})
        commands.append({
            "command_id": stop.command_id,
            "channels": sorted(stop.channels),
            "reason": stop.reason,
            "requested_by": stop.requested_by,
            "requested_at": stop.requested_at,
            "confirmed": state.confirmed,
            "confirmed_at": state.confirmed_at,
            "recorded": state.recorded,
            "acks": [_ack(a, stop) for _, a in sorted(acks.get(stop.command_id, {}).items())],
            "unacknowledged": state.unacknowledged,
            "expected": list(state.expected),
            "acknowledged": sorted(set(state.expected) & acked.keys()),
            "timed_out": not state.confirmed and now - stop.requested_at > timeout_ms,
        })
    first, latest = commands[0], commands[-1]
    confirmed = all(c["confirmed"] for c in commands)
    confirmed_at = [int(c["confirmed_at"]) for c in commands if c["confirmed_at"] is not None]
    last_confirmed = max(confirmed_at) if confirmed and confirmed_at else None
    return {
        "command_id": first["command_id"],
        "reason": first["reason"],
        "requested_by": first["requested_by"],
        "requested_at": first["requested_at"],
        "channels": sorted({c for s in stops for c in s.channels}),
        "confirmed": confirmed,
        "confirmed_at": last_confirmed,
        # The latest command: what the operator who just stopped is waiting for.
        "expected": latest["expected"],
        "acknowledged": latest["acknowledged"],
        "propagation_ms": (max(last_confirmed - latest["requested_at"], 0)
                           if last_confirmed is not None else None),
        "timed_out": any(c["timed_out"] for c in commands),
        "live_processes": sorted(live),
        "acks": [dict(a, command_id=c["command_id"]) for c in commands for a in c["acks"]],
        "commands": commands,
    }


def _ack(ack: Mapping[str, Any], stop: Stop) -> dict[str, Any]:
    return {
        "process_id": ack["process_id"],
        "roles": list(ack["roles"]),
        "applied_at": ack["applied_at"],
        "applied_after_ms": max(int(ack["applied_at"]) - stop.requested_at, 0),
        "halted": ack["halted"],
    }


def channel_counts(status: Mapping[str, Any] | None,
                   report: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Per channel: planned (from the lifecycle record), sent, notSent by stage, failed and
    pending (from the analytics store; zero until the sink stored something)."""
    planned: dict[str, int] = dict(status["planned"]) if status else {}
    channels = list(status["channels"]) if status else []
    by_channel = dict(report["by_channel"]) if report else {}
    channels += sorted(set(by_channel) - set(channels))
    counts: dict[str, dict[str, Any]] = {}
    for channel in channels:
        stored = by_channel.get(channel, {})
        sent = int(stored.get("sent", 0))
        not_sent = int(stored.get("not_sent", 0))
        failed = int(stored.get("failed", 0))
        by_stage = {stage: int(stored.get("not_sent_by_stage", {}).get(stage, 0)) for stage in STAGES}
        total = int(planned.get(channel, stored.get("planned", 0)))
        counts[channel] = {
            "planned": total,
            "sent": sent,
            "not_sent": not_sent,
            "not_sent_by_stage": by_stage,
            "failed": failed,
            # Failed messages (the provider never accepted them) are accounted, not pending.
            "pending": max(total - sent - not_sent - failed, 0),
        }
    return counts


def campaign_detail(campaign_id: str, status: Mapping[str, Any] | None, view: ControlView,
                    acks: AcksByCommand, confirmations: Confirmations, live: set[str],
                    report: Mapping[str, Any] | None, now: int, timeout_ms: int) -> dict[str, Any]:
    counts = channel_counts(status, report)
    return {
        "campaign_id": campaign_id,
        "state": effective_state(dict(status) if status else None, view, campaign_id),
        "channels": list(status["channels"]) if status else sorted(view.channels_stopped(campaign_id)),
        "updated_at": status["updated_at"] if status else None,
        "planned": sum(c["planned"] for c in counts.values()),
        "sent": sum(c["sent"] for c in counts.values()),
        "not_sent": sum(c["not_sent"] for c in counts.values()),
        "failed": sum(c["failed"] for c in counts.values()),
        "pending": sum(c["pending"] for c in counts.values()),
        "counts": counts,
        "stop": stop_detail(view.stops(campaign_id), acks, confirmations, live, now, timeout_ms),
        # A stop would halt more of it (whatever its status says) and its id can be stopped:
        # where the console offers the emergency stop, and what the kill switch stops.
        "stoppable": stoppable(view, campaign_id) and id_problem(campaign_id) is None,
        # From the analytics store: the stop's request to the last halted message stored.
        "stop_to_last_halted_accounted_s": report.get("stop_to_last_halted_accounted_s") if report else None,
    }


def campaign_summary(detail: Mapping[str, Any]) -> dict[str, Any]:
    """One entry of ``GET /campaigns``."""
    stop = detail["stop"]
    return {
        "campaign_id": detail["campaign_id"],
        "state": detail["state"],
        "channels": detail["channels"],
        "planned": detail["planned"],
        "sent": detail["sent"],
        "not_sent": detail["not_sent"],
        "failed": detail["failed"],
        "pending": detail["pending"],
        "stopped": stop is not None,
        "confirmed": stop["confirmed"] if stop else None,
        "stoppable": detail["stoppable"],
    }
