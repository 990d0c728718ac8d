"""Dispatcher, stage ``provider``: drains ``dispatch.<channel>`` into the channel's provider (an
adapter chosen by settings, ``streams.providers``) at the provider's rate, re-checking the control
view right before every handoff, and turns each message's fate (delivered, undelivered or
cancelled at the provider, held back, failed) into one event.

Every path is exactly once:
* held back (the campaign is stopped) and failed (the provider refused every attempt): the
  events, the dead letters and the batch's input offsets are committed in one Kafka transaction
  (``streams.kafka.stage``); a message the outbox says the provider holds (handed over before a
  crash, or accepted on an attempt whose answer was lost) is left to the outbox, so it never
  gets a second outcome;
* handed over: the check, the reservation in the outbox, the submission and its record happen
  under the view's lock, so a stop applied after them finds every accepted message in the
  outbox and cancels it at the provider; a message in doubt (its answer lost, or a crash between
  submission and record) is looked up at the provider before it is submitted again
  (``streams.dispatch.outbox``); deliveries and cancellations are published from the outbox in
  numbered batches, exactly once across crashes (``streams.dispatch.receipts``).

A handoff the provider refuses or does not answer is retried with exponential backoff,
re-checking the control view each time, at most ``ESTOP_PROVIDER_MAX_RETRIES`` times."""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections import deque
from typing import Any

from confluent_kafka import KafkaException, Message

from streams import metrics
from streams.clock import now_ms
from streams.control.view import Applied, ControlView, Stop
from streams.dispatch.outbox import DELIVERED, SUBMITTING, UNDELIVERED, Outbox, Outcome
from streams.dispatch.receipts import ReceiptPublisher
from streams.faults import crash_point
from streams.kafka.clients import Headers, routing
from streams.kafka.deadletter import MAX_RECORD_BYTES, dead_letter
from streams.kafka.stage import TransactionalStage
from streams.models import (
    CHANNELS,
    FAILED_EVENT,
    HEADER_CAMPAIGN,
    HEADER_CHANNEL,
    HEADER_OUTCOME,
    HEADER_STAGE,
    NOT_SENT_EVENT,
    OUTCOME_FAILED,
    REASON_CANCELLED,
    REASON_HELD,
    SENT_EVENT,
    STAGE_PROVIDER,
)
from streams.providers.base import (
    CancelCapability,
    CancelStatus,
    Delivery,
    Handoff,
    ProviderAdapter,
    SubmitStatus,
)
from streams.serde import SerdeError, Serdes
from streams.serde.fastevents import HeldBackEvents
from streams.settings import Settings

log = logging.getLogger(__name__)

REPORT_EVERY_S = 0.1
PACE_SLICE_S = 0.01  # handoffs are paced in slices of 10 ms worth of the provider's rate
MAX_BACKOFF_S = 5.0
# The label a retry is counted under (estop_provider_retries_total{error=...}).
RETRY_LABEL = {SubmitStatus.REFUSED: "error", SubmitStatus.UNKNOWN: "timeout"}


class Dispatcher(TransactionalStage):
    def __init__(self, settings: Settings, channel: str, view: ControlView, serdes: Serdes,
                 process_id: str, provider: ProviderAdapter, rate: float) -> None:
        topics = settings.topics
        super().__init__(settings, topics.dispatch(channel), topics.dispatcher_group(channel),
                         process_id, f"dispatcher {channel}", f"dispatcher.{channel}",
                         # A slow provider may keep one batch in hand for a while.
                         **{"max.poll.interval.ms": 600000})
        self.channel = channel
        self.view = view
        self.serdes = serdes
        self.provider = provider
        self.rate = rate
        self.outbox = Outbox.for_channel(settings.data_dir, channel)
        # What the provider accepted before a restart and still owes an outcome for.
        self.provider.resume(self.outbox.unfinished())
        # One call at a time into the adapter: handoffs run here, a stop's cancel on the feed's thread.
        self._provider_lock = threading.Lock()
        # Campaigns of the slice being handed over, from its check to its record in the outbox.
        self._in_flight: set[str] = set()
        self._recorded = threading.Condition()
        self._early: list[Delivery] = []  # deliveries of messages whose acceptance is not recorded yet
        self.receipts = ReceiptPublisher(settings, channel, self.outbox, self._render, self._published)
        self._slice = max(1, int(rate * PACE_SLICE_S))
        self._not_sent_event = NOT_SENT_EVENT[channel]
        self._held_back = HeldBackEvents(serdes.not_sent, channel, STAGE_PROVIDER,
                                         f"{REASON_HELD}: campaign stopped: ")
        self._channel_bytes = channel.encode()
        self._stage_bytes = STAGE_PROVIDER.encode()
        self._next_slot = time.monotonic()
        self._last_report = 0.0
        self._random = random.Random()
        self.handed = 0
        self.halted = 0
        self.failed = 0
        self.dead_lettered = 0

    # -- stop hook (control feed thread) -------------------------------------------------------

    def on_stop(self, applied: Applied) -> int:
        """Runs once the view holds the stop, so no handoff of the campaign starts any more; one
        checked before it may still be under way: wait until the outbox records it (so the stop
        is acknowledged only after it, and cancels it), not for the slice's other campaigns."""
        if self.channel not in applied.newly_halted:
            return 0
        stop = self.view.stopped(applied.campaign_id, self.channel)
        if stop is None:
            return 0
        with self._recorded:
            self._recorded.wait_for(lambda: applied.campaign_id not in self._in_flight)
        return self._cancel_at_provider(applied.campaign_id, stop)

    def _cancel_at_provider(self, campaign_id: str, stop: Stop) -> int:
        """Cancel what the provider still holds of a stopped campaign; returns how many."""
        if self.provider.cancel_capability == CancelCapability.NONE:
            return 0
        held = self.outbox.to_cancel(campaign_id)
        if not held:
            return 0
        with self._provider_lock:
            answers = self.provider.cancel(campaign_id, held)
        dropped = [m for m, status in answers.items() if status == CancelStatus.CANCELLED]
        cancelled = self.outbox.cancelled(dropped, stop.command_id, stop.requested_at, stop.reason)
        metrics.CANCELLED.labels(self.channel).inc(cancelled)
        log.info("dispatcher %s: stop of %r cancelled %d of %d messages at the provider",
                 self.channel, campaign_id, cancelled, len(held))
        return cancelled

    # -- main loop -----------------------------------------------------------------------------

    def idle(self) -> None:
        self._report()

    def closing(self) -> None:
        if self.receipts.active:
            self._report()
        self.receipts.close()
        with self._provider_lock:
            self.provider.close()
        self.outbox.close()

    def process(self, messages: list[Message], running: threading.Event) -> None:
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
            # Shutting down: nothing was committed; the outbox makes the redo of the handoffs
            # idempotent.
            return
        owned = self._settle([h for h, _ in held] + [h for h, _, _ in failed])
        for campaign_id, stop in {h.campaign_id: stop for h, stop in held
                                  if h.message_id in owned}.items():
            self._cancel_at_provider(campaign_id, stop)  # accepted on an answer that was lost
        held = [(h, stop) for h, stop in held if h.message_id not in owned]
        failed = [f for f in failed if f[0].message_id not in owned]
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
            self.abort(exc)
            return
        if not self.commit(offsets):
            return
        self.halted += len(held)
        self.failed += len(failed)
        metrics.NOT_SENT.labels(self.channel, STAGE_PROVIDER).inc(len(held))
        metrics.FAILED.labels(self.channel).inc(len(failed))
        if dead:
            self.dead_lettered += len(dead)
            metrics.DEAD_LETTERED.labels(self.source).inc(len(dead))

    def _settle(self, handoffs: list[Handoff]) -> set[str]:
        """Of messages about to end without a handoff (held back, failed), those the provider
        holds after all (their outcome belongs to the outbox); the others leave the outbox."""
        states = self.outbox.states([h.message_id for h in handoffs])
        in_doubt = [h for h in handoffs if states.get(h.message_id) == SUBMITTING]
        found: dict[str, str] = {}
        if in_doubt:
            with self._provider_lock:
                found = self.provider.find(in_doubt)
            self.outbox.accepted(found, None)  # handed over at their last submission
            self.outbox.not_held(h.message_id for h in in_doubt if h.message_id not in found)
        return {m for m, state in states.items() if state != SUBMITTING} | set(found)

    def _handoff(self, message: Message) -> Handoff:
        """The handoff a record asks for; SerdeError when it is not a valid request here."""
        value = message.value()
        if value is None or len(value) > MAX_RECORD_BYTES:
            raise SerdeError("empty value" if value is None else f"record of {len(value)} bytes")
        # A request of a stopped campaign is held back whatever its body: its key and headers
        # make its notSent event, no decode needed (its payload never reaches a provider).
        # Every other request is decoded and checked.
        campaign, channel, recipient = routing(message.headers())
        key = message.key()
        if (campaign and recipient and key and channel == self.channel
                and self.view.stopped(campaign, channel) is not None
                and self.serdes.send_request.has_known_header(value)):
            return Handoff(key.decode(errors="replace"), campaign, channel,
                           recipient.decode(errors="replace"), "")
        request = self.serdes.send_request.decode(value)
        if request["channel"] != self.channel:
            if request["channel"] not in CHANNELS:
                raise SerdeError(f"unknown channel {request['channel']!r} on the {self.channel} topic")
            raise SerdeError(f"channel {request['channel']!r} on the {self.channel} topic")
        for name in ("message_id", "campaign_id", "recipient_id"):
            if not request[name]:
                raise SerdeError(f"invalid SendRequest: empty {name}")
        return Handoff(request["message_id"], request["campaign_id"], self.channel,
                       request["recipient_id"], request["payload"])

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
            now = self.last_pass = time.monotonic()  # pacing a long batch is not a stall
            while waiting and waiting[0][0] <= now:
                _, _, handoff, attempt = heapq.heappop(waiting)
                queue.append((handoff, attempt))
            if queue:
                for handoff, attempt, status, answer in self._handoff_slice(queue, held):
                    if attempt > retries:
                        failed.append((handoff, attempt, answer))
                        continue
                    metrics.PROVIDER_RETRIES.labels(self.channel, RETRY_LABEL[status]).inc()
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

    def _handoff_slice(self, queue: deque[tuple[Handoff, int]], held: list[tuple[Handoff, Stop]]
                       ) -> list[tuple[Handoff, int, SubmitStatus, str]]:
        """Check and hand over up to one slice of messages atomically with respect to stops;
        held-back messages cost no provider capacity, so they do not count against the slice.
        Returns the handoffs the provider did not confirm, with their attempt, status and answer."""
        handoffs: list[Handoff] = []
        attempts: dict[str, int] = {}
        stopped = self.view.stopped
        channel = self.channel
        unconfirmed: list[tuple[Handoff, int, SubmitStatus, str]] = []
        with self.view.lock:
            while queue and len(handoffs) < self._slice:
                item, attempt = queue.popleft()
                stop = stopped(item.campaign_id, channel)
                if stop is None:
                    handoffs.append(item)
                    attempts[item.message_id] = attempt
                else:
                    held.append((item, stop))
            if not handoffs:
                return unconfirmed
            # Checked: a stop applied from now on waits in its hook for these campaigns'
            # handoffs to be recorded, not for the view lock (which the provider call would hold).
            self._in_flight = {h.campaign_id for h in handoffs}
        try:
            reserved = self.outbox.reserve(handoffs)
            with self._provider_lock:
                found = self.provider.find(reserved.in_doubt) if reserved.in_doubt else {}
                submit = [*reserved.fresh, *(h for h in reserved.in_doubt if h.message_id not in found)]
                answers = self.provider.submit(submit) if submit else []
            if reserved.in_doubt:
                log.info("dispatcher %s: %d of %d messages in doubt were found at the provider "
                         "(not submitted again)", channel, len(found), len(reserved.in_doubt))
            crash_point(self.settings, "handoff-submitted")
            at = now_ms()
            accepted = {**found, **{a.message_id: a.provider_id for a in answers
                                    if a.status == SubmitStatus.ACCEPTED and a.provider_id}}
            self.outbox.accepted(accepted, at)
            self.outbox.not_held(a.message_id for a in answers if a.status == SubmitStatus.REFUSED)
        finally:
            with self._recorded:
                self._in_flight = set()
                self._recorded.notify_all()
        by_id = {h.message_id: h for h in submit}
        for answer in answers:
            if answer.status != SubmitStatus.ACCEPTED:
                handoff = by_id[answer.message_id]
                unconfirmed.append((handoff, attempts[handoff.message_id], answer.status,
                                    answer.error or answer.status.value))
        self.handed += len(accepted)
        metrics.HANDOFFS.labels(self.channel).inc(len(accepted))
        self._pace(len(handoffs))
        return unconfirmed

    def _pace(self, count: int) -> None:
        now = time.monotonic()
        self._next_slot = max(self._next_slot, now - PACE_SLICE_S) + count / self.rate
        if self._next_slot > now:
            time.sleep(self._next_slot - now)

    # -- events --------------------------------------------------------------------------------

    def _report(self) -> None:
        """Record what the provider delivered, then publish the outbox's outcomes."""
        self._last_report = time.monotonic()
        with self._provider_lock:
            deliveries = self.provider.deliveries()
        self._early = self.outbox.delivered([*self._early, *deliveries])
        self.receipts.publish(self.settings.batch_size * 5)

    def _published(self, outcomes: list[Outcome]) -> None:
        sent = sum(1 for o in outcomes if o.state == DELIVERED)
        undelivered = sum(1 for o in outcomes if o.state == UNDELIVERED)
        metrics.SENT.labels(self.channel).inc(sent)
        metrics.FAILED.labels(self.channel).inc(undelivered)
        metrics.NOT_SENT.labels(self.channel, STAGE_PROVIDER).inc(len(outcomes) - sent - undelivered)

    def _headers(self, campaign_id: str) -> Headers:
        return [(HEADER_CAMPAIGN, campaign_id.encode()), (HEADER_CHANNEL, self._channel_bytes)]

    def _publish_held(self, handoff: Handoff, stop: Stop, occurred_at: int) -> None:
        encoder, headers = self._held_back.for_stop(stop)
        key = handoff.message_id.encode()
        self.transactions.produce(self.settings.topics.notsent, key=key, headers=headers,
                                  value=encoder.encode(key, handoff.recipient_id, occurred_at))

    def _publish_failed(self, handoff: Handoff, attempts: int, error: str, occurred_at: int) -> None:
        topic, key, value, headers = self._failed_record(
            handoff.message_id, handoff.campaign_id, handoff.recipient_id, attempts,
            f"provider {error} on every attempt ({attempts})", occurred_at)
        self.transactions.produce(topic, value=value, key=key, headers=headers)

    def _failed_record(self, message_id: str, campaign_id: str, recipient_id: str, attempts: int,
                       error: str, occurred_at: int) -> tuple[str, bytes, bytes, Headers]:
        value = self.serdes.failed.encode({
            "event": FAILED_EVENT[self.channel],
            "message_id": message_id,
            "campaign_id": campaign_id,
            "channel": self.channel,
            "recipient_id": recipient_id,
            "attempts": attempts,
            "error": error,
            "occurred_at": occurred_at,
        })
        return (self.settings.topics.failed, message_id.encode(), value,
                [*self._headers(campaign_id), (HEADER_OUTCOME, OUTCOME_FAILED.encode())])

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
        if outcome.state == UNDELIVERED:
            return self._failed_record(outcome.message_id, outcome.campaign_id, outcome.recipient_id,
                                       outcome.attempts,
                                       f"accepted but not delivered by the provider: {outcome.reason}",
                                       outcome.occurred_at)
        value = self.serdes.not_sent.encode({
            "event": NOT_SENT_EVENT[self.channel],
            "message_id": outcome.message_id,
            "campaign_id": outcome.campaign_id,
            "channel": self.channel,
            "recipient_id": outcome.recipient_id,
            "stage": STAGE_PROVIDER,
            "reason": f"{REASON_CANCELLED}: campaign stopped: {outcome.reason}",
            "stop_command_id": outcome.stop_command_id,
            "stop_requested_at": outcome.stop_requested_at,
            "occurred_at": outcome.occurred_at,
        })
        return (topics.notsent, outcome.message_id.encode(), value,
                [*headers, (HEADER_STAGE, self._stage_bytes)])
