"""Dispatcher, stage ``provider``: drains ``dispatch.<channel>`` into the channel's provider at
the provider's rate, re-checking the control view right before every handoff, and turns the
provider's fate of each message (delivered, cancelled, held back) into sent/notSent events.

The provider ledger is the source of truth for this stage: the check and the handoff happen
under the view's lock in one ledger transaction, offsets are committed only after it, and
events are published from the ledger and marked published once Kafka acknowledged them."""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import Message, TopicPartition

from streams import metrics
from streams.control.view import Applied, ControlView
from streams.dispatch.provider import CANCELLED, DELIVERED, Handoff, Outcome, SimulatedProvider
from streams.kafka.clients import Headers, consumer, producer, take
from streams.kafka.deadletter import MAX_RECORD_BYTES, dead_letter
from streams.kafka.lag import LagGauge
from streams.models import (
    HEADER_CAMPAIGN,
    HEADER_CHANNEL,
    HEADER_STAGE,
    NOT_SENT_EVENT,
    SENT_EVENT,
    STAGE_PROVIDER,
)
from streams.serde import SerdeError, Serdes
from streams.settings import Settings

log = logging.getLogger(__name__)

REPORT_EVERY_S = 0.1
PACE_SLICE_S = 0.01  # handoffs are paced in slices of 10 ms worth of the provider's rate


class Dispatcher:
    def __init__(self, settings: Settings, channel: str, view: ControlView, serdes: Serdes,
                 process_id: str, provider: SimulatedProvider, rate: float) -> None:
        self.settings = settings
        self.channel = channel
        self.view = view
        self.serdes = serdes
        self.provider = provider
        self.rate = rate
        topics = settings.topics
        self.source = topics.dispatch(channel)
        self.consumer = consumer(settings, **{
            "group.id": topics.dispatcher_group(channel),
            "client.id": process_id,
            "partition.assignment.strategy": "cooperative-sticky",
            # A slow provider may keep one batch in hand for a while.
            "max.poll.interval.ms": 600000,
        })
        self.producer = producer(settings)
        self.lag = LagGauge(self.consumer, f"dispatcher.{channel}", self.source, settings)
        self._slice = max(1, int(rate * PACE_SLICE_S))
        self._next_slot = time.monotonic()
        self._last_report = 0.0
        self.handed = 0
        self.halted = 0
        self.dead_lettered = 0

    # -- stop hook (control feed thread) -------------------------------------------------------

    def on_stop(self, applied: Applied) -> int:
        if self.channel not in applied.newly_halted:
            return 0
        stop = self.view.stopped(applied.campaign_id, self.channel)
        if stop is None:
            return 0
        cancelled = self.provider.cancel(applied.campaign_id, stop.command_id, stop.requested_at,
                                         stop.reason)
        metrics.CANCELLED.labels(self.channel).inc(cancelled)
        return cancelled

    # -- main loop -----------------------------------------------------------------------------

    def run(self, running: threading.Event) -> None:
        self.consumer.subscribe([self.source])
        try:
            while running.is_set():
                messages = take(self.consumer, self.settings.batch_size, self.settings.poll_timeout_s)
                if messages:
                    self._process(messages, running)
                self._report()
                self.lag.maybe_update()
        finally:
            self.consumer.close()
            self._report()
            self.producer.flush(10)

    def _process(self, messages: list[Message], running: threading.Event) -> None:
        pending: list[Handoff] = []
        offsets: dict[int, int] = {}
        dead = 0
        for message in messages:
            if message.error():
                continue
            offsets[message.partition()] = message.offset() + 1  # type: ignore[index,operator]
            value = message.value()
            try:
                if value is None or len(value) > MAX_RECORD_BYTES:
                    raise SerdeError("empty value" if value is None else f"record of {len(value)} bytes")
                request = self.serdes.send_request.decode(value)
            except SerdeError as exc:
                dead_letter(self.producer, message, exc.reason)
                dead += 1
                continue
            if request["channel"] != self.channel:
                dead_letter(self.producer, message,
                            f"channel {request['channel']!r} on the {self.channel} topic")
                dead += 1
                continue
            pending.append(Handoff(request["message_id"], request["campaign_id"],
                                   request["recipient_id"]))
        start = 0
        while start < len(pending):
            start = self._handoff_slice(pending, start)
            if time.monotonic() - self._last_report > REPORT_EVERY_S:
                self._report()
            if not running.is_set():
                return  # offsets stay uncommitted; the ledger makes the redo idempotent
        if dead:
            self.producer.flush(30)
            self.dead_lettered += dead
            metrics.DEAD_LETTERED.labels(self.source).inc(dead)
        self.consumer.commit(offsets=[TopicPartition(self.source, p, o) for p, o in offsets.items()],
                             asynchronous=False)

    def _handoff_slice(self, pending: list[Handoff], start: int) -> int:
        """Check and hand over up to one slice of messages atomically with respect to stops;
        held-back messages cost no provider capacity, so they do not count against the slice."""
        handoffs: list[Handoff] = []
        halted: list[Handoff] = []
        stop_ids: dict[str, tuple[str, int, str]] = {}
        index = start
        stopped = self.view.stopped
        with self.view.lock:
            while index < len(pending) and len(handoffs) < self._slice:
                item = pending[index]
                stop = stopped(item.campaign_id, self.channel)
                if stop is None:
                    handoffs.append(item)
                else:
                    halted.append(item)
                    stop_ids[item.campaign_id] = (stop.command_id, stop.requested_at, stop.reason)
                index += 1
            self.provider.submit(handoffs, halted, stop_ids)
        self.handed += len(handoffs)
        self.halted += len(halted)
        metrics.HANDOFFS.labels(self.channel).inc(len(handoffs))
        if handoffs:
            self._pace(len(handoffs))
        return index

    def _pace(self, count: int) -> None:
        now = time.monotonic()
        self._next_slot = max(self._next_slot, now - PACE_SLICE_S) + count / self.rate
        if self._next_slot > now:
            time.sleep(self._next_slot - now)

    # -- events --------------------------------------------------------------------------------

    def _report(self) -> None:
        self._last_report = time.monotonic()
        while True:
            outcomes = self.provider.outcomes(self.settings.batch_size * 5)
            if not outcomes:
                return
            for outcome in outcomes:
                self._publish(outcome)
            remaining = self.producer.flush(30)
            if remaining:
                log.warning("dispatcher %s: %d events not acknowledged; will retry", self.channel,
                            remaining)
                return
            self.provider.published([o.message_id for o in outcomes])

    def _publish(self, outcome: Outcome) -> None:
        topics = self.settings.topics
        headers: Headers = [(HEADER_CAMPAIGN, outcome.campaign_id.encode()),
                   (HEADER_CHANNEL, self.channel.encode())]
        if outcome.state == DELIVERED:
            value = self.serdes.sent.encode({
                "event": SENT_EVENT[self.channel],
                "message_id": outcome.message_id,
                "campaign_id": outcome.campaign_id,
                "channel": self.channel,
                "recipient_id": outcome.recipient_id,
                "handed_at": outcome.handed_at or outcome.occurred_at,
                "occurred_at": outcome.occurred_at,
            })
            self.producer.produce(topics.sent, key=outcome.message_id.encode(), value=value,
                                  headers=headers)
            metrics.SENT.labels(self.channel).inc()
            return
        where = "cancelled at the provider" if outcome.state == CANCELLED else "held before handoff"
        value = self.serdes.not_sent.encode({
            "event": NOT_SENT_EVENT[self.channel],
            "message_id": outcome.message_id,
            "campaign_id": outcome.campaign_id,
            "channel": self.channel,
            "recipient_id": outcome.recipient_id,
            "stage": STAGE_PROVIDER,
            "reason": f"{where}: campaign stopped: {outcome.reason}",
            "stop_command_id": outcome.stop_command_id,
            "stop_requested_at": outcome.stop_requested_at,
            "occurred_at": outcome.occurred_at,
        })
        self.producer.produce(topics.notsent, key=outcome.message_id.encode(), value=value,
                              headers=[*headers, (HEADER_STAGE, STAGE_PROVIDER.encode())])
        metrics.NOT_SENT.labels(self.channel, STAGE_PROVIDER).inc()
