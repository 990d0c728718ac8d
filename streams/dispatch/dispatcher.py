"""Dispatcher, stage ``provider``: drains ``dispatch.<channel>`` into the channel's provider at
the provider's rate, re-checking the control view right before every handoff, and turns each
message's fate (delivered, cancelled at the provider, held back, failed) into one event.

Every path is exactly once:
* held back (the campaign is stopped) and failed (the provider refused every attempt): the
  events, the dead letters and the batch's input offsets are committed in one Kafka transaction;
  a message the provider ledger already holds (handed over before a crash, or accepted on an
  attempt whose answer was lost) is left to the ledger, so it never gets a second outcome;
* handed over: the check and the handoff happen under the view's lock in one ledger
  transaction; delivery receipts and cancellations are published from the ledger in numbered
  batches, exactly once across crashes (``streams.dispatch.receipts``).

A handoff the provider answers with an error or a timeout is retried with exponential backoff,
re-checking the control view each time, at most ``ESTOP_PROVIDER_MAX_RETRIES`` times."""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections import deque
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from streams import metrics
from streams.control.feed import now_ms
from streams.control.view import Applied, ControlView, Stop
from streams.dispatch.provider import DELIVERED, Handoff, Outcome, SimulatedProvider
from streams.dispatch.receipts import ReceiptPublisher
from streams.faults import crash_point
from streams.kafka import transactions
from streams.kafka.clients import Headers, consumer, routing, take
from streams.kafka.deadletter import MAX_RECORD_BYTES, dead_letter
from streams.kafka.lag import LagGauge
from streams.models import (
    CHANNELS,
    FAILED_EVENT,
    HEADER_CAMPAIGN,
    HEADER_CHANNEL,
    HEADER_OUTCOME,
    HEADER_STAGE,
    NOT_SENT_EVENT,
    OUTCOME_FAILED,
    SENT_EVENT,
    STAGE_PROVIDER,
)
from streams.serde import SerdeError, Serdes
from streams.serde.fastevents import HeldBackEvents
from streams.settings import Settings

log = logging.getLogger(__name__)

REPORT_EVERY_S = 0.1
PACE_SLICE_S = 0.01  # handoffs are paced in slices of 10 ms worth of the provider's rate
MAX_BACKOFF_S = 5.0


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
        self.transactions = transactions.TransactionalProducer(  # held/failed events + offsets
            settings, f"{topics.dispatcher_group(channel)}-{process_id}", f"dispatcher {channel}")
        self.receipts = ReceiptPublisher(settings, channel, provider, self._render, self._published)
        self.lag = LagGauge(self.consumer, f"dispatcher.{channel}", self.source, settings)
        self._slice = max(1, int(rate * PACE_SLICE_S))
        self._not_sent_event = NOT_SENT_EVENT[channel]
        self._held_back = HeldBackEvents(serdes.not_sent, channel, STAGE_PROVIDER,
                                         "held before handoff: campaign stopped: ")
        self._channel_bytes = channel.encode()
        self._stage_bytes = STAGE_PROVIDER.encode()
        self._next_slot = time.monotonic()
        self._last_report = 0.0
        self._revoked: set[int] = set()
        self._random = random.Random()
        self.handed = 0
        self.halted = 0
        self.failed = 0
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
        self.transactions.init()
        self.consumer.subscribe([self.source], on_revoke=self._on_revoke, on_lost=self._on_revoke)
        try:
            while running.is_set():
                messages = take(self.consumer, self.settings.batch_size, self.settings.poll_timeout_s)
                if self._revoked:
                    messages = transactions.without_revoked(self.consumer, messages, self._revoked)
                    self._revoked.clear()
                if messages:
                    self._process(messages, running)
                self._report()
                self.lag.maybe_update()
        finally:
            self.consumer.close()
            if self.receipts.active:
                self._report()
            self.receipts.close()

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._revoked.update(tp.partition for tp in partitions)

    def _process(self, messages: list[Message], running: threading.Event) -> None:
        pending: list[Handoff] = []
        offsets: dict[int, int] = {}
        dead: list[tuple[Message, str]] = []
        held: list[tuple[Handoff, Stop]] = []
        failed: list[tuple[Handoff, int, str]] = []
        stopped, channel = self.view.stopped, self.channel
        for message in messages:
            if message.error():
                continue
            offsets[message.partition()] = message.offset() + 1  # type: ignore[index,operator]
            try:
                handoff = self._handoff(message)
            except SerdeError as exc:
                dead.append((message, exc.reason))
                continue
            # Already stopped: held back here (a stop is final; the handoff slice would hold it
            # too), so a stopped backlog skips the handoff queue.
            stop = stopped(handoff.campaign_id, channel)
            if stop is None:
                pending.append(handoff)
            else:
                held.append((handoff, stop))
        if not self._hand_over(pending, held, failed, running):
            # Shutting down: nothing was committed; the ledger makes the redo of the handoffs
            # idempotent.
            return
        already = self.provider.known([h.message_id for h, _ in held]
                                      + [h.message_id for h, _, _ in failed])
        held = [(h, stop) for h, stop in held if h.message_id not in already]
        failed = [f for f in failed if f[0].message_id not in already]
        self.transactions.begin()
        try:
            for message, reason in dead:
                dead_letter(self.transactions.producer, message, reason)
            occurred_at = now_ms()
            for handoff, stop in held:
                self._publish_held(handoff, stop, occurred_at)
            for handoff, attempts, error in failed:
                self._publish_failed(handoff, attempts, error, occurred_at)
        except KafkaException as exc:
            self.transactions.abort(exc)
            self._rewind()
            return
        committed = self.transactions.commit(
            [TopicPartition(self.source, p, o) for p, o in offsets.items()],
            self.consumer.consumer_group_metadata())
        if not committed:
            self._rewind()
            return
        self.halted += len(held)
        self.failed += len(failed)
        metrics.NOT_SENT.labels(self.channel, STAGE_PROVIDER).inc(len(held))
        metrics.FAILED.labels(self.channel).inc(len(failed))
        if dead:
            self.dead_lettered += len(dead)
            metrics.DEAD_LETTERED.labels(self.source).inc(len(dead))

    def _handoff(self, message: Message) -> Handoff:
        """The handoff a record asks for; SerdeError when it is not a valid request here."""
        value = message.value()
        if value is None or len(value) > MAX_RECORD_BYTES:
            raise SerdeError("empty value" if value is None else f"record of {len(value)} bytes")
        # A request of a stopped campaign is held back whatever its body: its key and headers
        # make its notSent event, no decode needed. Every other request is decoded and checked.
        campaign, channel, recipient = routing(message.headers())
        key = message.key()
        if (campaign and recipient and key and channel == self.channel
                and self.view.stopped(campaign, channel) is not None
                and self.serdes.send_request.has_known_header(value)):
            return Handoff(key.decode(errors="replace"), campaign, recipient.decode(errors="replace"))
        request = self.serdes.send_request.decode(value)
        if request["channel"] != self.channel:
            if request["channel"] not in CHANNELS:
                raise SerdeError(f"unknown channel {request['channel']!r} on the {self.channel} topic")
            raise SerdeError(f"channel {request['channel']!r} on the {self.channel} topic")
        for name in ("message_id", "campaign_id", "recipient_id"):
            if not request[name]:
                raise SerdeError(f"invalid SendRequest: empty {name}")
        return Handoff(request["message_id"], request["campaign_id"], request["recipient_id"])

    def _rewind(self) -> None:
        transactions.rewind(self.consumer, self.settings.admin_timeout_s)

    # -- handoffs ------------------------------------------------------------------------------

    def _hand_over(self, pending: list[Handoff], held: list[tuple[Handoff, Stop]],
                   failed: list[tuple[Handoff, int, str]], running: threading.Event) -> bool:
        """Hand every pending message over, retrying refused ones with backoff; fills ``held``
        (stopped before a handoff) and ``failed`` (retry budget spent). False on shutdown."""
        queue: deque[tuple[Handoff, int]] = deque((h, 1) for h in pending)
        waiting: list[tuple[float, int, Handoff, int]] = []  # (due, tiebreak, handoff, attempt)
        retries = self.settings.provider_max_retries
        tiebreak = 0
        while queue or waiting:
            now = time.monotonic()
            while waiting and waiting[0][0] <= now:
                _, _, handoff, attempt = heapq.heappop(waiting)
                queue.append((handoff, attempt))
            if queue:
                for handoff, attempt, answer in self._handoff_slice(queue, held):
                    if attempt > retries:
                        failed.append((handoff, attempt, answer))
                        continue
                    metrics.PROVIDER_RETRIES.labels(self.channel, answer).inc()
                    tiebreak += 1
                    heapq.heappush(waiting, (now + self._backoff(attempt), tiebreak, handoff,
                                             attempt + 1))
            else:
                time.sleep(min(max(waiting[0][0] - now, 0.0), 0.05))
            if time.monotonic() - self._last_report > REPORT_EVERY_S:
                self._report()
            if not running.is_set():
                return False
        return True

    def _backoff(self, attempt: int) -> float:
        """Exponential, with jitter so refused messages do not come back all at once."""
        base = self.settings.provider_retry_backoff_s * 2 ** (attempt - 1)
        return min(base * (0.5 + self._random.random()), MAX_BACKOFF_S)

    def _handoff_slice(self, queue: deque[tuple[Handoff, int]],
                       held: list[tuple[Handoff, Stop]]) -> list[tuple[Handoff, int, str]]:
        """Check and hand over up to one slice of messages atomically with respect to stops;
        held-back messages cost no provider capacity, so they do not count against the slice.
        Returns the handoffs the provider did not confirm, with their attempt and its answer."""
        handoffs: list[Handoff] = []
        attempts: dict[str, int] = {}
        stopped = self.view.stopped
        channel = self.channel
        with self.view.lock:
            while queue and len(handoffs) < self._slice:
                item, attempt = queue.popleft()
                stop = stopped(item.campaign_id, channel)
                if stop is None:
                    handoffs.append(item)
                    attempts[item.message_id] = attempt
                else:
                    held.append((item, stop))
            refused = self.provider.submit(handoffs) if handoffs else []
        if handoffs:
            crash_point(self.settings, "handoff-submitted")
        accepted = len(handoffs) - len(refused)
        self.handed += accepted
        metrics.HANDOFFS.labels(self.channel).inc(accepted)
        if handoffs:
            self._pace(len(handoffs))
        return [(h, attempts[h.message_id], answer) for h, answer in refused]

    def _pace(self, count: int) -> None:
        now = time.monotonic()
        self._next_slot = max(self._next_slot, now - PACE_SLICE_S) + count / self.rate
        if self._next_slot > now:
            time.sleep(self._next_slot - now)

    # -- events --------------------------------------------------------------------------------

    def _report(self) -> None:
        self._last_report = time.monotonic()
        self.receipts.publish(self.settings.batch_size * 5)

    def _published(self, outcomes: list[Outcome]) -> None:
        sent = sum(1 for o in outcomes if o.state == DELIVERED)
        metrics.SENT.labels(self.channel).inc(sent)
        metrics.NOT_SENT.labels(self.channel, STAGE_PROVIDER).inc(len(outcomes) - sent)

    def _headers(self, campaign_id: str) -> Headers:
        return [(HEADER_CAMPAIGN, campaign_id.encode()), (HEADER_CHANNEL, self._channel_bytes)]

    def _publish_held(self, handoff: Handoff, stop: Stop, occurred_at: int) -> None:
        encoder, headers = self._held_back.for_stop(stop)
        key = handoff.message_id.encode()
        self.transactions.produce(self.settings.topics.notsent, key=key, headers=headers,
                                  value=encoder.encode(key, handoff.recipient_id, occurred_at))

    def _publish_failed(self, handoff: Handoff, attempts: int, error: str, occurred_at: int) -> None:
        value = self.serdes.failed.encode({
            "event": FAILED_EVENT[self.channel],
            "message_id": handoff.message_id,
            "campaign_id": handoff.campaign_id,
            "channel": self.channel,
            "recipient_id": handoff.recipient_id,
            "attempts": attempts,
            "error": f"provider {error} on every attempt ({attempts})",
            "occurred_at": occurred_at,
        })
        self.transactions.produce(self.settings.topics.failed, value=value,
                             key=handoff.message_id.encode(),
                             headers=[*self._headers(handoff.campaign_id),
                                      (HEADER_OUTCOME, OUTCOME_FAILED.encode())])

    def _render(self, outcome: Outcome) -> tuple[str, bytes, bytes, Any]:
        """The event of a provider outcome, as the receipt publisher produces it."""
        topics = self.settings.topics
        headers = self._headers(outcome.campaign_id)
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
            return topics.sent, outcome.message_id.encode(), value, headers
        value = self.serdes.not_sent.encode({
            "event": NOT_SENT_EVENT[self.channel],
            "message_id": outcome.message_id,
            "campaign_id": outcome.campaign_id,
            "channel": self.channel,
            "recipient_id": outcome.recipient_id,
            "stage": STAGE_PROVIDER,
            "reason": f"cancelled at the provider: campaign stopped: {outcome.reason}",
            "stop_command_id": outcome.stop_command_id,
            "stop_requested_at": outcome.stop_requested_at,
            "occurred_at": outcome.occurred_at,
        })
        return (topics.notsent, outcome.message_id.encode(), value,
                [*headers, (HEADER_STAGE, self._stage_bytes)])
