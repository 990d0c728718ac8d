"""Issuing a stop and waiting until it is confirmed.

Validate first and write nothing on error; produce the ControlCommand with acks=all on an
idempotent producer; then wait until every partition of the gate and dispatch topics of the
channels it halts is held by a process that acknowledged it there
(``streams.control.confirmation``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.campaigns.lifecycle import (
    Status,
    effective_state,
    publish_status,
    read_campaigns,
    read_control,
)
from streams.clock import now_ms
from streams.control.confirmation import (
    Coverage,
    Holdings,
    Verdict,
    describe_waiting,
    holdings,
    verdict,
)
from streams.control.exceptions import CampaignNotStoppableError, InvalidStopError
from streams.control.view import ControlView, Stop
from streams.exceptions import EstopError, UsageError
from streams.kafka.clients import admin, consumer, producer, take, wait_for_broker
from streams.kafka.exceptions import KafkaUnavailableError
from streams.kafka.reader import high_watermark
from streams.models import ACTION_STOP, CHANNELS, STATE_STOPPED, STOPPABLE_STATES, check_channels
from streams.security import audit
from streams.security.exceptions import AccessDeniedError
from streams.security.refusals import fatal_cause, refused
from streams.serde import SerdeError, Serdes
from streams.settings import Settings

# Called once the broker acknowledged a stop command: (campaign id, command id, channels).
OnWritten = Callable[[str, str, list[str]], None]


@dataclass
class ProcessAck:
    process_id: str
    roles: list[str]
    propagation_ms: int
    halted: int


@dataclass
class StopResult:
    campaign_id: str
    command_id: str | None
    channels: list[str]
    already_stopped: bool
    confirmed: bool
    broker_ack_ms: int | None = None
    confirmed_at_ms: int | None = None
    confirm_s: float | None = None
    live: list[str] = field(default_factory=list)
    acks: list[ProcessAck] = field(default_factory=list)
    audit_problem: str | None = None  # why the audit event could not be written, if it could not
    control_partition: int = 0  # where the command sits in campaign-control
    control_offset: int = -1
    # Partitions not covered yet: (topic:partition, the process holding it, or None in transit).
    waiting: list[tuple[str, str | None]] = field(default_factory=list)
    not_running: list[str] = field(default_factory=list)  # roles that never ran for its channels

    @property
    def halted(self) -> int:
        return sum(a.halted for a in self.acks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign_id": self.campaign_id,
            "command_id": self.command_id,
            "channels": self.channels,
            "already_stopped": self.already_stopped,
            "confirmed": self.confirmed,
            "confirm_s": self.confirm_s,
            "broker_ack_ms": self.broker_ack_ms,
            "live_processes": self.live,
            "acks": [a.__dict__ for a in self.acks],
            "halted_at_provider": self.halted,
            "waiting_for": describe_waiting(self.waiting),
            "not_running": self.not_running,
        }


def validate(reason: str, channels: list[str]) -> tuple[str, tuple[str, ...]]:
    reason = reason.strip()
    if not reason:
        raise InvalidStopError("a stop needs a reason (--reason TEXT)")
    try:
        return reason, check_channels(channels)
    except ValueError as exc:
        raise InvalidStopError(str(exc)) from exc


def live_processes(settings: Settings, client: AdminClient | None = None) -> set[str]:
    """client.id of every member of the gate and dispatcher groups right now; raises when a
    group cannot be described (unknown members are not "no members")."""
    if client is None:
        with admin(settings) as own:
            return live_processes(settings, own)
    return holdings(settings, client).live


def audited_stop(settings: Settings, serdes: Serdes, actor: audit.Actor, campaign_id: str,
                 reason: str, channels: list[str], timeout_s: float,
                 force: bool = False) -> StopResult:
    """``issue_stop`` as ``actor`` (the stop's ``requested_by``), audited whatever the outcome."""
    return _audited(settings, serdes, actor, audit.STOP, campaign_id.strip(), reason, channels,
                    lambda written: [issue_stop(settings, serdes, campaign_id, reason, channels,
                                                actor.name, timeout_s, force, written)])[0]


def audited_stop_all(settings: Settings, serdes: Serdes, actor: audit.Actor, reason: str,
                     timeout_s: float) -> list[StopResult]:
    """The kill switch (``stop_all``) as ``actor``, audited: one event per campaign it stops."""
    return _audited(settings, serdes, actor, audit.KILL_SWITCH, "", reason, [],
                    lambda written: stop_all(settings, serdes, reason, actor.name, timeout_s, written))


def _audited(settings: Settings, serdes: Serdes, actor: audit.Actor, action: str, campaign_id: str,
             reason: str, channels: list[str],
             run: Callable[[OnWritten], list[StopResult]]) -> list[StopResult]:
    """Run a stop and put its outcome in the audit trail: accepted (written as soon as the broker
    acknowledged each command, before confirmation is awaited), already stopped, rejected (bad
    input), refused (an ACL) or failed."""
    problems: list[str | None] = []

    def note(outcome: str, campaign: str, detail: str = "", command_id: str | None = None,
             stopped: list[str] | None = None) -> None:
        entry = audit.event(settings, actor, action, outcome, campaign, command_id=command_id,
                            reason=reason, channels=channels if stopped is None else stopped,
                            detail=detail)
        problems.append(audit.record(settings, serdes, entry))

    try:
        results = run(lambda campaign, command_id, stopped: note(
            audit.ACCEPTED, campaign, "", command_id, stopped))
    except AccessDeniedError as exc:
        note(audit.REFUSED, campaign_id, str(exc))
        raise
    except UsageError as exc:
        note(audit.REJECTED, campaign_id, str(exc))
        raise
    except EstopError as exc:
        if not problems:  # nothing written (a failure after a write was audited already)
            note(audit.FAILED, campaign_id, str(exc))
        raise
    for result in results:
        if result.already_stopped:
            note(audit.ALREADY_STOPPED, result.campaign_id, "", result.command_id, result.channels)
    if not results:
        note(audit.ACCEPTED, campaign_id, "nothing was Sending or Finished: nothing to stop")
    problem = next((p for p in problems if p), None)
    for result in results:
        result.audit_problem = problem
    return results


def issue_stop(settings: Settings, serdes: Serdes, campaign_id: str, reason: str,
               channels: list[str], by: str, timeout_s: float, force: bool = False,
               on_written: OnWritten | None = None) -> StopResult:
    return issue_stops(settings, serdes, [campaign_id], reason, channels, by, timeout_s, force,
                       on_written)[0]


def stoppable(statuses: dict[str, Status], view: ControlView) -> list[str]:
    """Campaigns a stop applies to right now: Sending or Finished, and not stopped."""
    return sorted(c for c, status in statuses.items()
                  if effective_state(status, view, c) in STOPPABLE_STATES)


def stop_all(settings: Settings, serdes: Serdes, reason: str, by: str,
             timeout_s: float, on_written: OnWritten | None = None) -> list[StopResult]:
    """The kill switch: one stop record per campaign that is Sending or Finished now, every
    channel, all written before waiting for their confirmations together."""
    validate(reason, [])
    wait_for_broker(settings)
    targets = stoppable(read_campaigns(settings, serdes), read_control(settings, serdes))
    return issue_stops(settings, serdes, targets, reason, [], by, timeout_s,
                       on_written=on_written) if targets else []


def issue_stops(settings: Settings, serdes: Serdes, campaign_ids: list[str], reason: str,
                channels: list[str], by: str, timeout_s: float,
                force: bool = False, on_written: OnWritten | None = None) -> list[StopResult]:
    """Validate every stop before writing any (nothing is written when one is invalid), write
    them, then wait until every live process confirmed each of them or ``timeout_s`` passed."""
    reason, wanted = validate(reason, channels)
    campaign_ids = list(dict.fromkeys(c.strip() for c in campaign_ids))
    if not campaign_ids or not all(campaign_ids):
        raise InvalidStopError("a stop needs a campaign id")
    wait_for_broker(settings)
    # Created first: an idempotent producer spends its first few hundred ms getting a producer
    # id, which the validation reads below hide from the stop's latency.
    send = producer(settings, **{"linger.ms": 0})
    view = read_control(settings, serdes)
    campaigns = read_campaigns(settings, serdes)
    requested = frozenset(wanted) or frozenset(CHANNELS)
    results: dict[str, StopResult] = {}
    to_write: list[tuple[str, frozenset[str], Status | None]] = []
    for campaign_id in campaign_ids:
        already = view.channels_stopped(campaign_id)
        if already and requested <= already:
            results[campaign_id] = StopResult(
                campaign_id, view.stopped(campaign_id, next(iter(requested))).command_id,  # type: ignore[union-attr]
                sorted(already), already_stopped=True, confirmed=True)
            continue
        status = campaigns.get(campaign_id)
        if not already and not force and (status is None or status["state"] not in STOPPABLE_STATES):
            seen = f"it is {status['state']}" if status else "it has not been seen on campaign-status"
            raise CampaignNotStoppableError(
                f"campaign {campaign_id!r} is not Sending or Finished ({seen}); "
                "use --force to stop it anyway",
                status["state"] if status else None,
            )
        to_write.append((campaign_id, already, status))

    acks_from = _acks_end(settings)
    started = time.monotonic()
    written = []
    for campaign_id, already, status in to_write:
        written.append(_write_stop(send, settings, serdes, campaign_id, reason, wanted, already,
                                   status, by))
        if on_written is not None:
            on_written(campaign_id, written[-1].command_id or "", written[-1].channels)
    send.flush(settings.admin_timeout_s)
    results.update((r.campaign_id, r) for r in written)
    if written:
        _await_confirmation(settings, serdes, written, acks_from, started, timeout_s)
    return [results[c] for c in campaign_ids]


def _write_stop(send: Producer, settings: Settings, serdes: Serdes, campaign_id: str, reason: str,
                wanted: tuple[str, ...], already: frozenset[str], status: Status | None,
                by: str) -> StopResult:
    """Produce the ControlCommand (acks=all) and, once the broker acknowledged it, the
    campaign's Stopped status."""
    requested = frozenset(wanted) or frozenset(CHANNELS)
    command_id = uuid.uuid4().hex
    command: dict[str, Any] = {
        "command_id": command_id,
        "campaign_id": campaign_id,
        "action": ACTION_STOP,
        "channels": sorted(already | requested) if wanted else [],
        "reason": reason,
        "requested_by": by,
        "requested_at": now_ms(),
    }
    delivered: dict[str, Any] = {}

    def on_delivery(err: Any, message: Any) -> None:
        delivered["error"] = err
        delivered["at"] = now_ms()  # the broker acknowledged the stop: propagation starts here
        delivered["position"] = (message.partition(), message.offset())

    right = f"write {settings.topics.control}"
    try:
        send.produce(settings.topics.control, key=campaign_id.encode(),
                     value=serdes.control_command.encode(command), on_delivery=on_delivery)
        unsent = send.flush(settings.admin_timeout_s)
    except (KafkaException, SystemError) as exc:
        # A producer Kafka refused a producer id fails fatally; a callback running meanwhile
        # surfaces it as SystemError, its cause the KafkaException.
        cause = fatal_cause(send, exc)
        raise (refused(settings, cause, right) or KafkaUnavailableError(
            f"the stop command was not acknowledged by Kafka: {cause.__cause__ or cause}")) from exc
    if unsent or delivered.get("error"):
        raise refused(settings, delivered.get("error"), right) or KafkaUnavailableError(
            f"the stop command was not acknowledged by Kafka: {delivered.get('error')}"
        )
    stop = Stop(command_id, campaign_id, requested - already, int(command["requested_at"]), by, reason)
    planned = status["planned"] if status else {}
    publish_status(send, settings, serdes, campaign_id, STATE_STOPPED,
                   status["channels"] if status else sorted(requested), planned,
                   status["queued"] if status else {}, stop)
    partition, offset = delivered["position"]
    return StopResult(campaign_id, command_id, sorted(already | requested),
                      already_stopped=False, confirmed=False, broker_ack_ms=delivered["at"],
                      control_partition=partition, control_offset=offset)


def _acks_end(settings: Settings) -> dict[int, int]:
    reader = consumer(settings)
    try:
        metadata = reader.list_topics(settings.topics.acks, timeout=settings.admin_timeout_s)
        ends = {}
        for partition in metadata.topics[settings.topics.acks].partitions:
            ends[partition] = high_watermark(reader, TopicPartition(settings.topics.acks, partition),
                                             settings.admin_timeout_s)
        return ends
    finally:
        reader.close()


def await_confirmation(settings: Settings, serdes: Serdes, result: StopResult,
                       timeout_s: float) -> StopResult:
    """Wait again for the confirmation of a stop written earlier (e.g. one that timed out while
    a dispatcher was down); every acknowledgement still on the topic counts."""
    start = dict.fromkeys(_acks_end(settings), OFFSET_BEGINNING)
    result.confirmed, result.confirm_s = False, None
    _await_confirmation(settings, serdes, [result], start, time.monotonic(), timeout_s)
    return result


def _await_confirmation(settings: Settings, serdes: Serdes, results: list[StopResult],
                        acks_from: dict[int, int], started: float, timeout_s: float) -> None:
    """Read acknowledgements until every command is confirmed (``streams.control.confirmation``)
    or ``timeout_s`` passed; who holds which partition is asked again at least twice a second,
    and once more before a command counts as confirmed (a holder may have changed meanwhile)."""
    deadline = started + timeout_s
    by_command = {r.command_id: r for r in results}
    waiting = set(by_command)
    acked: dict[str | None, dict[str, ProcessAck]] = {c: {} for c in by_command}
    coverage = Coverage()
    channels = sorted({c for r in results for c in r.channels})
    reader = consumer(settings)
    reader.assign([TopicPartition(settings.topics.acks, p, o) for p, o in acks_from.items()])
    held: Holdings | None = None
    with admin(settings) as client:
        next_check = 0.0
        try:
            while waiting:
                for message in take(reader, 500, 0.05):
                    if message.error() or message.value() is None:
                        continue
                    try:
                        ack = serdes.control_ack.decode(message.value())
                    except SerdeError:
                        continue
                    coverage.add(ack)
                    result = by_command.get(ack["command_id"])
                    if result is not None:
                        acked[result.command_id][ack["process_id"]] = ProcessAck(
                            ack["process_id"], ack["roles"],
                            ack["applied_at"] - (result.broker_ack_ms or 0), ack["halted"])
                now = time.monotonic()
                try:
                    if now >= next_check or held is None:
                        held = holdings(settings, client, channels)
                        next_check = now + 0.5
                    done = [c for c in waiting if _verdict(held, coverage, by_command[c]).confirmed]
                    if done:
                        held = holdings(settings, client, channels)
                        for command_id in done:
                            result = by_command[command_id]
                            if _verdict(held, coverage, result).confirmed:
                                result.confirmed = True
                                result.confirmed_at_ms = now_ms()
                                result.confirm_s = time.monotonic() - started
                                waiting.discard(command_id)
                except (KafkaException, TimeoutError):
                    next_check = 0.0  # unknown is not "nobody holds it": never confirm on it
                if now > deadline:
                    break
        finally:
            reader.close()
    for result in results:
        result.acks = sorted(acked[result.command_id].values(), key=lambda a: a.process_id)
        if held is not None:
            final = _verdict(held, coverage, result)
            result.live = sorted(held.live)
            result.waiting = [] if result.confirmed else final.waiting
            result.not_running = final.not_running
        if result.confirm_s is None:
            result.confirm_s = time.monotonic() - started


def _verdict(held: Holdings, coverage: Coverage, result: StopResult) -> Verdict:
    return verdict(held, coverage, result.channels, result.control_partition, result.control_offset)
