"""Analytics sink: consumes ``sent`` and ``notsent`` (and, for the report, the campaign status,
stop commands and their acks) and stores exactly one outcome per message id.

Offsets are committed only after the store committed the batch, and every write is idempotent,
so a redelivered or replayed event changes nothing."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from confluent_kafka import Message, Producer, TopicPartition

from streams.kafka.clients import consumer, producer, take
from streams.kafka.deadletter import dead_letter
from streams.metrics import (
    DEAD_LETTERED,
    HANDOFFS_AFTER_CONFIRMED_STOP,
    SINK_CONFLICTS,
    SINK_OUTCOMES,
    SINK_STORE_SECONDS,
)
from streams.models import ACTION_STOP, CHANNELS
from streams.serde import SerdeError, Serdes
from streams.settings import Settings
from streams.sink.store import NOT_SENT, SENT, Batch, OutcomeRow, OutcomeStore

log = logging.getLogger(__name__)

LEAK_CHECK_S = 5.0


class Sink:
    def __init__(self, settings: Settings, serdes: Serdes, store: OutcomeStore,
                 process_id: str) -> None:
        self.settings = settings
        self.serdes = serdes
        self.store = store
        topics = settings.topics
        self.topics = [topics.sent, topics.notsent, topics.status, topics.control, topics.acks]
        self.consumer = consumer(settings, **{
            "group.id": topics.sink_group,
            "client.id": process_id,
            "partition.assignment.strategy": "cooperative-sticky",
        })
        self.producer: Producer = producer(settings)
        self.stored = 0
        self.conflicts = 0
        self.dead_lettered = 0

    def run(self, running: threading.Event) -> None:
        self.consumer.subscribe(self.topics)
        next_leak_check = 0.0
        try:
            while running.is_set():
                messages = take(self.consumer, self.settings.batch_size * 5,
                                self.settings.poll_timeout_s)
                if messages:
                    self.process(messages)
                if time.monotonic() >= next_leak_check:
                    next_leak_check = time.monotonic() + LEAK_CHECK_S
                    leaks = self.store.handoffs_after_confirmation()
                    for channel in CHANNELS:
                        HANDOFFS_AFTER_CONFIRMED_STOP.labels(channel).set(leaks.get(channel, 0))
        finally:
            self.consumer.close()

    def process(self, messages: list[Message]) -> None:
        batch = Batch([], [], [], [])
        offsets: dict[tuple[str, int], int] = {}
        dead = 0
        for message in messages:
            if message.error():
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            assert topic is not None and partition is not None and offset is not None
            offsets[(topic, partition)] = offset + 1
            if message.value() is None:
                continue  # tombstones on the compacted topics carry nothing to store
            try:
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
            self.producer.flush(30)
            self.dead_lettered += dead
        self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                             asynchronous=False)
        self.stored += result.inserted
        self.conflicts += result.conflicts
        if result.conflicts:
            SINK_CONFLICTS.inc(result.conflicts)
            log.warning("%d messages had both sent and notSent; kept sent", result.conflicts)
        SINK_OUTCOMES.labels(SENT).inc(result.inserted_sent)
        SINK_OUTCOMES.labels(NOT_SENT).inc(result.inserted_not_sent)

    def _collect(self, topic: str, message: Message, batch: Batch) -> None:
        topics = self.settings.topics
        value = message.value()
        if topic == topics.sent:
            event = self.serdes.sent.decode(value)
            batch.outcomes.append(_row(event, SENT))
        elif topic == topics.notsent:
            event = self.serdes.not_sent.decode(value)
            batch.outcomes.append(_row(event, NOT_SENT))
        elif topic == topics.status:
            batch.campaigns.append(self.serdes.campaign_status.decode(value))
        elif topic == topics.control:
            command = self.serdes.control_command.decode(value)
            if command["action"] == ACTION_STOP:
                batch.stops.append(command)
        elif topic == topics.acks:
            batch.acks.append(self.serdes.control_ack.decode(value))


def _row(event: dict[str, Any], outcome: str) -> OutcomeRow:
    if event["channel"] not in CHANNELS:
        raise ValueError(f"unknown channel {event['channel']!r}")
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
