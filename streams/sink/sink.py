"""Analytics sink: consumes ``sent`` and ``notsent`` (and, for the report, the campaign status,
stop commands and their acks) and stores exactly one outcome per message id.

Offsets are committed only after the store committed the batch, and every write is idempotent,
so a redelivered or replayed event changes nothing. The committed offset is the consumer's
position, which moves past the commit markers of the gates' transactions: a caught-up sink shows
a lag of 0."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from confluent_kafka import KafkaException, Message, Producer, TopicPartition

from streams.control.records import refusal
from streams.faults import crash_point
from streams.kafka.clients import consumer, producer, take
from streams.kafka.deadletter import MAX_RECORD_BYTES, dead_letter
from streams.kafka.lag import LagGauge
from streams.metrics import (
    DEAD_LETTERED,
    HANDOFFS_AFTER_CONFIRMED_STOP,
    SINK_CONFLICTS,
    SINK_OUTCOMES,
    SINK_RECEIPTS_OVER_CANCEL,
    SINK_STORE_SECONDS,
)
from streams.models import ACTION_STOP, CHANNELS
from streams.models.ids import MESSAGE_ID_MAX, id_problem
from streams.serde import SerdeError, Serdes
from streams.serde.fastevents import FlatDecoder
from streams.settings import Settings
from streams.sink.store import FAILED, NOT_SENT, SENT, Batch, OutcomeRow, OutcomeStore

log = logging.getLogger(__name__)

LEAK_CHECK_S = 5.0
IDLE_COMMIT_S = 1.0  # when idle, commit positions that moved past transaction markers


class Sink:
    def __init__(self, settings: Settings, serdes: Serdes, store: OutcomeStore,
                 process_id: str) -> None:
        self.settings = settings
        self.serdes = serdes
        # A stop brings them by the hundred thousand, and a stop's events end alike.
        self._not_sent = FlatDecoder(serdes.not_sent, shared_from="stage")
        self.store = store
        topics = settings.topics
        self.topics = [topics.sent, topics.notsent, topics.failed, topics.status, topics.control,
                       topics.acks, topics.audit]
        self.compacted = {topics.status, topics.control}
        self.consumer = consumer(settings, **{
            "group.id": topics.sink_group,
            "client.id": process_id,
            "partition.assignment.strategy": "cooperative-sticky",
        })
        self.producer: Producer = producer(settings)
        self.lag = LagGauge(self.consumer, "sink", [topics.sent, topics.notsent, topics.failed],
                            settings)
        self._committed: dict[tuple[str, int], int] = {}
        self.stored = 0
        self.conflicts = 0
        self.dead_lettered = 0
        self.last_pass = time.monotonic()  # the loop's heartbeat, for the worker's /health

    def run(self, running: threading.Event) -> None:
        self.consumer.subscribe(self.topics)
        self.lag.start()
        next_leak_check = next_idle_commit = 0.0
        try:
            while running.is_set():
                self.last_pass = time.monotonic()
                messages = take(self.consumer, self.settings.batch_size * 5,
                                self.settings.poll_timeout_s)
                if messages:
                    self.process(messages)
                    next_idle_commit = time.monotonic() + IDLE_COMMIT_S
                elif time.monotonic() >= next_idle_commit:
                    next_idle_commit = time.monotonic() + IDLE_COMMIT_S
                    self._commit({})
                if time.monotonic() >= next_leak_check:
                    next_leak_check = time.monotonic() + LEAK_CHECK_S
                    leaks = self.store.handoffs_after_confirmation()
                    for channel in CHANNELS:
                        HANDOFFS_AFTER_CONFIRMED_STOP.labels(channel).set(leaks.get(channel, 0))
        finally:
            self.lag.close()
            self.consumer.close()

    def process(self, messages: list[Message]) -> None:
        batch = Batch([], [], [], [], [])
        offsets: dict[tuple[str, int], int] = {}
        dead = 0
        notsent, outcomes, not_sent = self.settings.topics.notsent, batch.outcomes, self._not_sent.decode
        for message in messages:
            if message.error():
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            assert topic is not None and partition is not None and offset is not None
            offsets[(topic, partition)] = offset + 1
            value = message.value()
            if value is None and topic in self.compacted:
                continue  # tombstones on the compacted topics carry nothing to store
            try:
                if value is None:
                    raise SerdeError("empty value")  # no event: unreadable, not a tombstone
                if len(value) > MAX_RECORD_BYTES:
                    raise SerdeError(f"record of {len(value)} bytes")
                if topic == notsent:  # what a stop brings by the hundred thousand
                    outcomes.append(_row(not_sent(value), NOT_SENT))
                else:
                    self._collect(topic, message, batch)
            except (SerdeError, KeyError, ValueError) as exc:
                reason = exc.reason if isinstance(exc, SerdeError) else f"invalid record: {exc}"
                dead_letter(self.producer, message, reason)
                DEAD_LETTERED.labels(topic).inc()
                dead += 1
        started = time.monotonic()
        result = self.store.write(batch)
        SINK_STORE_SECONDS.observe(time.monotonic() - started)
        if dead:
            # Committing before Kafka has them would lose these records: wait (a broker away
            # comes back; the librdkafka producer retries on its own).
            while remaining := self.producer.flush(30):
                log.warning("%d dead-letter records not acknowledged by Kafka yet; waiting", remaining)
            self.dead_lettered += dead
        crash_point(self.settings, "sink-stored")
        self._commit(offsets)
        self.stored += result.inserted
        self.conflicts += result.conflicts
        if result.conflicts:
            SINK_CONFLICTS.inc(result.conflicts)
            log.warning("%d messages had both sent and notSent; kept sent", result.conflicts)
        if result.receipts_over_cancel:
            SINK_RECEIPTS_OVER_CANCEL.inc(result.receipts_over_cancel)
            log.info("%d messages a stop's cancel counted notSent were delivered after all: kept sent",
                     result.receipts_over_cancel)
        SINK_OUTCOMES.labels(SENT).inc(result.inserted_sent)
        SINK_OUTCOMES.labels(NOT_SENT).inc(result.inserted_not_sent)
        SINK_OUTCOMES.labels(FAILED).inc(result.inserted_failed)

    def _commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """Commit what is stored: each partition's position (every record before it was handed
        to this process and stored), at least the offsets after the batch's last records."""
        try:
            positions = self.consumer.position(self.consumer.assignment())
        except KafkaException:
            positions = []  # a rebalance in progress: the batch's own offsets still count
        for tp in positions:
            key = (tp.topic, tp.partition)
            if tp.offset >= 0 and tp.offset > offsets.get(key, -1):
                offsets[key] = tp.offset
        changed = {k: o for k, o in offsets.items() if o > self._committed.get(k, -1)}
        if not changed:
            return
        try:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in changed.items()],
                                 asynchronous=False)
        except KafkaException as exc:
            # E.g. a rebalance: the records are redelivered and the store ignores them.
            log.warning("sink commit failed (%s); the records will be redelivered", exc)
            return
        self._committed.update(changed)

    def _collect(self, topic: str, message: Message, batch: Batch) -> None:
        """Every record but a notSent event (``process`` reads those itself)."""
        topics = self.settings.topics
        value = message.value()
        if topic == topics.sent:
            event = self.serdes.sent.decode(value)
            batch.outcomes.append(_row(event, SENT))
        elif topic == topics.failed:
            event = self.serdes.failed.decode(value)
            batch.outcomes.append(_row({**event, "reason": event["error"]}, FAILED))
        elif topic == topics.status:
            status = _status(self.serdes.campaign_status.decode(value))
            if message.key() != status["campaign_id"].encode():
                # Compacted, it would be the key's only status: it is neither campaign's.
                raise ValueError(f"its key is not its campaign id {status['campaign_id']!r}")
            batch.campaigns.append(status)
        elif topic == topics.control:
            command = self.serdes.control_command.decode(value)
            refused = refusal(message.key(), command)  # what every reader of the topic refuses
            if refused is not None:
                raise ValueError(refused)
            # As the control view applies it: unknown channels are ignored (the workers count
            # them as control anomalies), and a stop of none of the known channels is no stop.
            known = [c for c in command["channels"] if c in CHANNELS]
            if command["action"] == ACTION_STOP and (known or not command["channels"]):
                batch.stops.append({**command, "channels": known})
        elif topic == topics.acks:
            ack = _ack(self.serdes.control_ack.decode(value))
            if ack["command_id"]:  # not a process acknowledging partitions assigned to it
                batch.acks.append(ack)
        elif topic == topics.audit:
            entry = self.serdes.audit.decode(value)
            if not entry["audit_id"] or not entry["actor"]:
                raise ValueError("an audit event needs an id and an actor")
            batch.audit.append(entry)


def _known_channels(channels: Any) -> None:
    for channel in channels:
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}")


def _status(status: dict[str, Any]) -> dict[str, Any]:
    if not status["campaign_id"]:
        raise ValueError("empty campaign_id")
    problem = id_problem(status["campaign_id"])
    if problem is not None:
        raise ValueError(problem)
    _known_channels([*status["channels"], *status["planned"], *status["queued"]])
    return status


def _ack(ack: dict[str, Any]) -> dict[str, Any]:
    if not ack["process_id"]:
        raise ValueError("empty process_id")
    if not ack["command_id"] and not ack["partitions"]:
        raise ValueError("empty command_id")
    # Roles are "<stage>.<channel>": gate.email, dispatcher.sms.
    _known_channels(role.partition(".")[2] for role in ack["roles"])
    return ack


def _row(event: dict[str, Any], outcome: str) -> OutcomeRow:
    if event["channel"] not in CHANNELS:
        raise ValueError(f"unknown channel {event['channel']!r}")
    for name in ("message_id", "campaign_id"):
        if not event[name]:
            raise ValueError(f"empty {name}")
    problem = id_problem(event["message_id"], "message id", MESSAGE_ID_MAX) or id_problem(
        event["campaign_id"])
    if problem is not None:
        raise ValueError(problem)
    return OutcomeRow(
        message_id=event["message_id"],
        campaign_id=event["campaign_id"],
        channel=event["channel"],
        recipient_id=event["recipient_id"],
        outcome=outcome,
        event=event["event"],
        stage=event.get("stage"),
        reason=event.get("reason"),
        stop_command_id=event.get("stop_command_id"),
        handed_at=event.get("handed_at"),
        occurred_at=event["occurred_at"],
    )
