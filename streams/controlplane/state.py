"""What the control plane answers, computed from decoded records: campaign lifecycle records,
the control view, acknowledgements, confirmations, who holds which partition and the analytics
report. Pure functions, no Kafka, no Faust."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streams.campaigns.account import CampaignAccount, campaign_account
from streams.control.confirmation import Coverage, Holdings, verdict
from streams.control.stop import stoppable
from streams.control.view import ControlView, Stop
from streams.models import STAGES
from streams.models.ids import id_problem

# command id -> process id -> decoded ControlAck
AcksByCommand = Mapping[str, Mapping[str, dict[str, Any]]]
# command id -> {"confirmed_at": ms, "live": [process ids]}
Confirmations = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class Evidence:
    """What the confirmation rule reads (``streams.control.confirmation``): the
    acknowledgements (by command, and what they cover), who holds which partition now, where
    each command sits in campaign-control, and the confirmations the service recorded."""

    acks: AcksByCommand
    coverage: Coverage
    holdings: Holdings
    positions: Mapping[str, tuple[int, int]]  # command id -> (control partition, offset)
    confirmations: Confirmations


@dataclass(frozen=True)
class Confirmation:
    confirmed: bool
    confirmed_at: int | None  # when the last process it needed applied it (ms), if confirmed
    unacknowledged: list[str]  # processes holding a partition the stop is not applied on yet
    recorded: bool = False  # the service recorded the confirmation (survives its restarts)
    expected: tuple[str, ...] = ()  # the processes whose acknowledgements it waits (waited) for
    waiting_for: tuple[str, ...] = ()  # the partitions it waits for, and who holds each


def confirmation(stop: Stop, evidence: Evidence) -> Confirmation:
    """A stop is confirmed once every partition of the gate and dispatch topics of its
    channels is held by a process that acknowledged it there, the rule `estop stop` applies.
    Once seen confirmed it stays confirmed (``confirmations``): a partition that moves later is
    prepared by its new holder, which reads the stop before its first record."""
    position = evidence.positions.get(stop.command_id)
    recorded = evidence.confirmations.get(stop.command_id)
    found = verdict(evidence.holdings, evidence.coverage, stop.channels, *position) \
        if position is not None else None
    missing = found.uncovered if found is not None else []
    if recorded is not None:
        return Confirmation(True, recorded.get("confirmed_at"), missing, recorded=True,
                            expected=tuple(recorded.get("live", ())))
    if found is None or not found.confirmed:
        return Confirmation(False, None, missing, expected=tuple(found.holders if found else ()),
                            waiting_for=tuple(found.waiting_for if found else ()))
    acked = evidence.acks.get(stop.command_id, {})
    applied = [int(a["applied_at"]) for p, a in acked.items() if p in found.holders]
    return Confirmation(True, max(applied) if applied else None, [], expected=tuple(found.holders))


def stop_detail(stops: list[Stop], evidence: Evidence, now: int,
                timeout_ms: int) -> dict[str, Any] | None:
    """The stop of a campaign: every command in force (a later command may add channels), each
    with its acknowledgements; ``confirmed`` once every command is. ``timed_out``: a command is
    still unconfirmed ``timeout_ms`` after it was requested (the stop stays in force)."""
    if not stops:
        return None
    commands: list[dict[str, Any]] = []
    for stop in stops:
        state = confirmation(stop, evidence)
        acked = evidence.acks.get(stop.command_id, {})
        commands.append({
            "command_id": stop.command_id,
            "channels": sorted(stop.channels),
            "reason": stop.reason,
            "requested_by": stop.requested_by,
            "requested_at": stop.requested_at,
            "confirmed": state.confirmed,
            "confirmed_at": state.confirmed_at,
            "recorded": state.recorded,
            "acks": [_ack(a, stop) for _, a in sorted(acked.items())],
            "unacknowledged": state.unacknowledged,
            "expected": list(state.expected),
            "acknowledged": sorted(set(state.expected) - set(state.unacknowledged)),
            "waiting_for": list(state.waiting_for),
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
        "live_processes": sorted(evidence.holdings.live),
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


def channel_counts(account: CampaignAccount) -> dict[str, dict[str, Any]]:
    """Per channel: planned, sent, notSent (in total and by stage), failed and pending, as the
    API answers them (``counts``)."""
    return {c.channel: {
        "planned": c.planned,
        "sent": c.sent,
        "not_sent": c.not_sent,
        "not_sent_by_stage": {stage: c.not_sent_by_stage[stage] for stage in STAGES},
        # Of the notSent at stage provider: the provider took the stop's cancel request
        # without proving the message will not be delivered.
        "cancel_unconfirmed": c.cancel_unconfirmed,
        "failed": c.failed,
        "pending": c.pending,
    } for c in account.channels}


def campaign_detail(campaign_id: str, status: Mapping[str, Any] | None, view: ControlView,
                    evidence: Evidence, report: Mapping[str, Any] | None, now: int,
                    timeout_ms: int) -> dict[str, Any]:
    """``GET /campaigns/{id}``: the campaign's account (``streams.campaigns.account``, what
    `estop status` renders too) with its stop and whether it can be stopped."""
    account = campaign_account(campaign_id, status, view, report)
    return {
        "campaign_id": campaign_id,
        "state": account.state,
        "channels": list(status["channels"]) if status else sorted(view.channels_stopped(campaign_id)),
        "updated_at": status["updated_at"] if status else None,
        **{field: account.total(field)
           for field in ("planned", "sent", "not_sent", "cancel_unconfirmed", "failed", "pending")},
        "counts": channel_counts(account),
        "stop": stop_detail(view.stops(campaign_id), evidence, now, timeout_ms),
        "stopped_by": account.stopped_by,
        # A stop would halt more of it (whatever its status says) and its id can be stopped:
        # where the console offers the emergency stop, and what the kill switch stops.
        "stoppable": stoppable(view, campaign_id) and id_problem(campaign_id) is None,
        # From the analytics store: the stop's request to the last halted message stored.
        "stop_to_last_halted_accounted_s": account.stop_to_last_halted_accounted_s,
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
        "cancel_unconfirmed": detail["cancel_unconfirmed"],
        "failed": detail["failed"],
        "pending": detail["pending"],
        "stopped": stop is not None,
        # Who stopped it first: a person, or ``guardrail:<rule>`` (the console's badge).
        "stopped_by": detail["stopped_by"],
        "confirmed": stop["confirmed"] if stop else None,
        "stoppable": detail["stoppable"],
    }
