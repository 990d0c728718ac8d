"""Gate, stage ``sending``: every send request of a channel is joined against the control view.
Not stopped: forwarded as is to ``dispatch.<channel>``. Stopped: becomes a notSent event.

One Kafka transaction per consumed batch carries the outputs, the dead letters and the input
offsets together, so a record is never lost or doubled between input and output."""

from __future__ import annotations

import logging
import threading
import uuid

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from streams.control.feed import now_ms
from streams.control.view import ControlView
from streams.kafka.clients import Headers, consumer, producer, take
from streams.kafka.deadletter import MAX_RECORD_BYTES, dead_letter
from streams.kafka.lag import LagGauge
from streams.metrics import DEAD_LETTERED, GATE_REQUESTS, NOT_SENT
from streams.models import (
    HEADER_CAMPAIGN,
    HEADER_CHANNEL,
    HEADER_STAGE,
    NOT_SENT_EVENT,
    STAGE_SENDING,
)
from streams.serde import SerdeError, Serdes
from streams.settings import Settings

log = logging.getLogger(__name__)


class Gate:
    def __init__(self, settings: Settings, channel: str, view: ControlView, serdes: Serdes,
                 process_id: str) -> None:
        self.settings = settings
        self.channel = channel
        self.view = view
        self.serdes = serdes
        topics = settings.topics
        self.source = topics.send_requests(channel)
        self.target = topics.dispatch(channel)
        self.notsent = topics.notsent
        self.event = NOT_SENT_EVENT[channel]
        self.consumer = consumer(settings, **{
            "group.id": topics.gate_group(channel),
            "client.id": process_id,
            "partition.assignment.strategy": "cooperative-sticky",
        })
        self.producer = producer(settings, **{
            "transactional.id": f"{topics.gate_group(channel)}-{process_id}-{uuid.uuid4().hex[:8]}",
        })
        self.lag = LagGauge(self.consumer, f"gate.{channel}", self.source, settings)
        self.passed = 0
        self.halted = 0
        self.dead_lettered = 0

    def run(self, running: threading.Event) -> None:
        self.producer.init_transactions(self.settings.admin_timeout_s)
        self.consumer.subscribe([self.source])
        try:
            while running.is_set():
                messages = take(self.consumer, self.settings.batch_size, self.settings.poll_timeout_s)
                if messages:
                    self._process(messages)
                self.lag.maybe_update()
        finally:
            self.consumer.close()

    def _process(self, messages: list[Message]) -> None:
        produce = self.producer.produce
        view_stopped = self.view.stopped
        channel = self.channel
        self.producer.begin_transaction()
        passed = halted = dead = 0
        offsets: dict[int, int] = {}
        for message in messages:
            if message.error():
                continue
            offsets[message.partition()] = message.offset() + 1  # type: ignore[index,operator]
            value = message.value()
            if value is None or len(value) > MAX_RECORD_BYTES:
                dead_letter(self.producer, message,
                            "empty value" if value is None else f"record of {len(value)} bytes")
                dead += 1
                continue
            try:
                request = self.serdes.send_request.decode(value)
            except SerdeError as exc:
                dead_letter(self.producer, message, exc.reason)
                dead += 1
                continue
            if request["channel"] != channel:
                dead_letter(self.producer, message,
                            f"channel {request['channel']!r} on the {channel} topic")
                dead += 1
                continue
            campaign = request["campaign_id"]
            stop = view_stopped(campaign, channel)
            headers: Headers = [(HEADER_CAMPAIGN, campaign.encode()), (HEADER_CHANNEL, channel.encode())]
            if stop is None:
                produce(self.target, value=value, key=message.key(), headers=headers)
                passed += 1
                continue
            event = {
                "event": self.event,
                "message_id": request["message_id"],
                "campaign_id": campaign,
                "channel": channel,
                "recipient_id": request["recipient_id"],
                "stage": STAGE_SENDING,
                "reason": f"campaign stopped: {stop.reason}",
                "stop_command_id": stop.command_id,
                "stop_requested_at": stop.requested_at,
                "occurred_at": now_ms(),
            }
            produce(self.notsent, value=self.serdes.not_sent.encode(event),
                    key=request["message_id"].encode(),
                    headers=[*headers, (HEADER_STAGE, STAGE_SENDING.encode())])
            halted += 1
        if not self._commit([TopicPartition(self.source, p, o) for p, o in offsets.items()]):
            return
        self.passed += passed
        self.halted += halted
        self.dead_lettered += dead
        GATE_REQUESTS.labels(channel, "passed").inc(passed)
        GATE_REQUESTS.labels(channel, "halted").inc(halted)
        GATE_REQUESTS.labels(channel, "dead_lettered").inc(dead)
        NOT_SENT.labels(channel, STAGE_SENDING).inc(halted)
        if dead:
            DEAD_LETTERED.labels(self.source).inc(dead)

    def _commit(self, offsets: list[TopicPartition]) -> bool:
        """Commit the batch's transaction; False when it was aborted and will be redone."""
        try:
            self.producer.send_offsets_to_transaction(
                offsets,
                self.consumer.consumer_group_metadata(),
                self.settings.admin_timeout_s,
            )
            self.producer.commit_transaction(self.settings.admin_timeout_s)
            return True
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.txn_requires_abort():
                # Rewind to the last committed offsets and redo the batch in a new transaction.
                log.warning("gate %s aborts a transaction: %s", self.channel, error)
                self.producer.abort_transaction(self.settings.admin_timeout_s)
                self._rewind()
                return False
            raise

    def _rewind(self) -> None:
        committed = self.consumer.committed(self.consumer.assignment(),
                                            timeout=self.settings.admin_timeout_s)
        for tp in committed:
            if tp.offset >= 0:
                self.consumer.seek(tp)
