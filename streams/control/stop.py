"""Issuing a stop and waiting until it is confirmed.

Validate first and write nothing on error; produce the ControlCommand with acks=all on an
idempotent producer; then wait until every partition of the gate and dispatch topics of the
channels it halts is held by a process that acknowledged it there
(``streams.control.confirmation``)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaException, Message, Producer, TopicPartition
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
from streams.control.view import ALL_CHANNELS, ControlView, Stop
from streams.exceptions import EstopError, UsageError
from streams.kafka.clients import admin, consumer, producer, take, wait_for_broker
from streams.kafka.deadletter import skip_unreadable_message
from streams.kafka.exceptions import KafkaUnavailableError
from streams.kafka.reader import high_watermark
from streams.models import ACTION_STOP, CHANNELS, STATE_STOPPED, STOPPABLE_STATES, check_channels
from streams.models.ids import id_problem
from streams.security import audit
from streams.security.exceptions import AccessDeniedError
from streams.security.refusals import fatal_cause, refused
from streams.serde import SerdeError, Serdes
from streams.settings import Settings

log = logging.getLogger(__name__)

# Called once the broker acknowledged a stop command: (campaign id, command id, channels).
OnWritten = Callable[[str, str, list[str]], None]
# A stop's reason travels in its command, its status, its audit event and every notSent event it
# makes: long enough for any explanation, far below any record limit.
REASON_MAX = 1000


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
    error: str | None = None  # the kill switch: why this campaign could not be stopped

    @property
    def halted(self) -> int:
        return sum(a.halted for a in self.acks)

    def lines(self) -> list[str]:
        """What `estop stop` prints: the outcome, each acknowledgement, who still holds a
        partition that has not acknowledged it, and what was halted."""
        if self.error is not None:
            return [f"{self.campaign_id!r} could NOT be stopped: {self.error}"]
        if self.already_stopped:
            return [f"{self.campaign_id} is already stopped on {', '.join(self.channels)} "
                    f"(command {self.command_id}); nothing written"]
        state = "confirmed" if self.confirmed else "NOT confirmed"
        lines = [f"stop {self.command_id} for {self.campaign_id} ({', '.join(self.channels)}): "
                 f"{state} after {self.confirm_s:.3f}s"]
        for ack in self.acks:
            lines.append(f"  {ack.process_id:<40} applied after {ack.propagation_ms:>5} ms, "
                         f"halted {ack.halted:,} at its provider")
        held: dict[str, list[str]] = {}
        for partition, holder in self.waiting:
            held.setdefault(holder or "", []).append(partition)
        for holder, partitions in sorted(held.items()):
            if holder:
                lines.append(f"  {holder:<40} has not acknowledged it on {', '.join(partitions)}")
            else:
                lines.append(f"  {'(nobody)':<40} holds {', '.join(partitions)}: in transit, or "
                             "every process of that role is down")
        if self.not_running:
            lines.append(f"  never ran here: {', '.join(self.not_running)}; a process that starts "
                         "reads the stop before its first request")
        lines.append(f"  halted at providers so far: {self.halted:,}")
        return lines

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
            "error": self.error,
        }


def validate(reason: str, channels: list[str]) -> tuple[str, tuple[str, ...]]:
    reason = reason.strip()
    if not reason:
        raise InvalidStopError("a stop needs a reason (--reason TEXT)")
    if len(reason) > REASON_MAX:
        raise InvalidStopError(f"the reason is {len(reason):,} characters long; a stop's reason "
                               f"may have at most {REASON_MAX:,}")
    try:
        return reason, check_channels(channels)
    except ValueError as exc:
        raise InvalidStopError(str(exc)) from exc


def check_campaign(campaign_id: str) -> str:
    """The campaign id exactly as given, when it is a valid id (never stripped or rewritten:
    a stop halts the campaign it names, or nothing)."""
    problem = id_problem(campaign_id)
    if problem is not None:
        raise InvalidStopError(problem)
    return campaign_id


def live_processes(settings: Settings, client: AdminClient | None = None) -> set[str]:
    """client.id of every member of the gate and dispatcher groups right now; raises when a
    group cannot be described (unknown members are not "no members")."""
    if client is None:
        with admin(settings) as own:
            return live_processes(settings, own)
    return holdings(settings, client).live


def audited_stop(settings: Settings, serdes: Serdes, actor: audit.Actor, campaign_id: str,
                 reason: str, channels: list[str], timeout_s: float,
                 force: bool = False, trail: audit.AuditWriter | None = None,
                 command_id: str | None = None, on_written: OnWritten | None = None) -> StopResult:
    """``issue_stop`` as ``actor`` (the stop's ``requested_by``), audited whatever the outcome
    (through ``trail``, else a writer of its own); ``on_written`` is told after the audit."""

    def written(campaign: str, command: str, stopped: list[str], audited: OnWritten) -> None:
        audited(campaign, command, stopped)
        if on_written is not None:
            on_written(campaign, command, stopped)

    return _audited(settings, serdes, actor, audit.STOP, campaign_id, reason, channels, trail,
                    lambda audited: [issue_stop(
                        settings, serdes, campaign_id, reason, channels, actor.name, timeout_s,
                        force, lambda c, i, s: written(c, i, s, audited), command_id)])[0]


def audited_stop_all(settings: Settings, serdes: Serdes, actor: audit.Actor, reason: str,
                     timeout_s: float, trail: audit.AuditWriter | None = None) -> list[StopResult]:
    """The kill switch (``stop_all``) as ``actor``, audited: one event per campaign it stops."""
    return _audited(settings, serdes, actor, audit.KILL_SWITCH, "", reason, [], trail,
                    lambda written: stop_all(settings, serdes, reason, actor.name, timeout_s, written))


def _audited(settings: Settings, serdes: Serdes, actor: audit.Actor, action: str, campaign_id: str,
             reason: str, channels: list[str], trail: audit.AuditWriter | None,
             run: Callable[[OnWritten], list[StopResult]]) -> list[StopResult]:
    """Run a stop and put its outcome in the audit trail: accepted (written as soon as the broker
    acknowledged each command, before anything else can fail), already stopped, rejected (bad
    input), refused (an ACL) or failed."""
    problems: list[str | None] = []
    writer = trail or audit.AuditWriter(settings, serdes)

    def note(outcome: str, campaign: str, detail: str = "", command_id: str | None = None,
             stopped: list[str] | None = None) -> None:
        entry = audit.event(settings, actor, action, outcome, campaign, command_id=command_id,
                            reason=reason, channels=channels if stopped is None else stopped,
                            detail=detail)
        problems.append(writer.write(entry))

    try:
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
                note(audit.ALREADY_STOPPED, result.campaign_id, "", result.command_id,
                     result.channels)
            elif result.error is not None:
                note(audit.FAILED, result.campaign_id, result.error, stopped=[])
        if not results:
            note(audit.ACCEPTED, campaign_id, "every campaign is stopped already: nothing to stop")
    finally:
        if trail is None:
            writer.close()
    problem = next((p for p in problems if p), None)
    for result in results:
        result.audit_problem = problem
    return results


def issue_stop(settings: Settings, serdes: Serdes, campaign_id: str, reason: str,
               channels: list[str], by: str, timeout_s: float, force: bool = False,
               on_written: OnWritten | None = None, command_id: str | None = None) -> StopResult:
    """``command_id``: the command's id when the caller derives it (a guardrail's trip: a
    second write of the same trip is the same command); else a fresh one."""
    return issue_stops(settings, serdes, [campaign_id], reason, channels, by, timeout_s, force,
                       on_written, command_id=command_id)[0]


def stoppable(view: ControlView, campaign_id: str) -> bool:
    """Whether a stop of every channel would halt more of the campaign: a command has not
    stopped all of its channels. ("Stopped" comes from campaign-control alone: whatever
    campaign-status says.)"""
    return view.channels_stopped(campaign_id) != ALL_CHANNELS


def stop_all(settings: Settings, serdes: Serdes, reason: str, by: str,
             timeout_s: float, on_written: OnWritten | None = None) -> list[StopResult]:
    """The kill switch: one stop record, every channel, per campaign known on campaign-status or
    campaign-control that no command has stopped on every channel, whatever its status says; all
    written before their confirmations are awaited together. It stops everything it can: a
    campaign it cannot stop (an id that breaks the id rule, a write Kafka refused) is in the
    results with its ``error``, the others are stopped all the same."""
    validate(reason, [])
    wait_for_broker(settings)
    view = read_control(settings, serdes)
    known = set(read_campaigns(settings, serdes)) | view.campaigns()
    targets = sorted(c for c in known if stoppable(view, c))
    invalid = [StopResult(c, None, [], already_stopped=False, confirmed=False,
                          error=f"{problem}; the gate dead-letters its requests")
               for c in targets if (problem := id_problem(c)) is not None]
    valid = [c for c in targets if id_problem(c) is None]
    stopped = issue_stops(settings, serdes, valid, reason, [], by, timeout_s, force=True,
                          on_written=on_written, keep_going=True) if valid else []
    return sorted([*stopped, *invalid], key=lambda r: r.campaign_id)


def issue_stops(settings: Settings, serdes: Serdes, campaign_ids: list[str], reason: str,
                channels: list[str], by: str, timeout_s: float,
                force: bool = False, on_written: OnWritten | None = None,
                keep_going: bool = False, command_id: str | None = None) -> list[StopResult]:
    """Validate every stop before writing any (nothing is written when one is invalid), write
    them, then wait until every live process confirmed each of them or ``timeout_s`` passed.
    ``keep_going`` (the kill switch): a stop that cannot be written is reported in its result's
    ``error`` and the others are written all the same. ``command_id``: see ``issue_stop`` (with
    one campaign only)."""
    reason, wanted = validate(reason, channels)
    if command_id is not None and len(campaign_ids) != 1:
        raise InvalidStopError("a command id is given for one campaign's stop only")
    campaign_ids = list(dict.fromkeys(check_campaign(c) for c in campaign_ids))
    if not campaign_ids:
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
        state = effective_state(status, view, campaign_id)
        if not already and not force and state not in STOPPABLE_STATES:
            seen = f"it is {state}" if status else "it has not been seen on campaign-status"
            raise CampaignNotStoppableError(
                f"campaign {campaign_id!r} is not Sending or Finished ({seen}); "
                "use --force to stop it anyway", state)
        to_write.append((campaign_id, already, status))

    acks_from = _acks_end(settings)
    started = time.monotonic()
    written = []
    for campaign_id, already, status in to_write:
        try:
            written.append(_write_stop(send, settings, serdes, campaign_id, reason, wanted,
                                       already, status, by, on_written, command_id))
        except EstopError as exc:
            if not keep_going:
                raise
            results[campaign_id] = StopResult(campaign_id, None, [], already_stopped=False,
                                              confirmed=False, error=str(exc))
    send.flush(settings.admin_timeout_s)
    results.update((r.campaign_id, r) for r in written)
    if written:
        _await_confirmation(settings, serdes, written, acks_from, started, timeout_s)
    return [results[c] for c in campaign_ids]


def _write_stop(send: Producer, settings: Settings, serdes: Serdes, campaign_id: str, reason: str,
                wanted: tuple[str, ...], already: frozenset[str], status: Status | None,
                by: str, on_written: OnWritten | None, command_id: str | None = None) -> StopResult:
    """Produce the ControlCommand (acks=all); once the broker acknowledged it, tell
    ``on_written`` (the audit: before anything else can fail) and publish the campaign's Stopped
    status (for display: a stop is in force from its command alone)."""
    requested = frozenset(wanted) or frozenset(CHANNELS)
    command_id = command_id or uuid.uuid4().hex
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
    channels = sorted(already | requested)
    if on_written is not None:
        on_written(campaign_id, command_id, channels)
    stop = Stop(command_id, campaign_id, requested - already, int(command["requested_at"]), by, reason)
    planned = status["planned"] if status else {}
    try:
        publish_status(send, settings, serdes, campaign_id, STATE_STOPPED,
                       status["channels"] if status else sorted(requested), planned,
                       status["queued"] if status else {}, stop)
    except (KafkaException, BufferError) as exc:
        log.warning("the stop of %r is in force; its Stopped status was not published: %s",
                    campaign_id, exc)
    partition, offset = delivered["position"]
    return StopResult(campaign_id, command_id, channels, already_stopped=False, confirmed=False,
                      broker_ack_ms=delivered["at"], control_partition=partition,
                      control_offset=offset)


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
                    if message.error():
                        continue
                    ack = read_ack(serdes, message)
                    if ack is None:
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


def read_ack(serdes: Serdes, message: Message) -> dict[str, Any] | None:
    """The acknowledgement a record of the acks topic carries; None for an unreadable one,
    counted and logged (no stage here to dead-letter it)."""
    value = message.value()
    try:
        if value is None:
            raise SerdeError("empty value")
        ack: dict[str, Any] = serdes.control_ack.decode(value)
    except SerdeError as exc:
        skip_unreadable_message(message, exc.reason)
        return None
    return ack


def _verdict(held: Holdings, coverage: Coverage, result: StopResult) -> Verdict:
    return verdict(held, coverage, result.channels, result.control_partition, result.control_offset)
