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
from streams.kafka.clients import Headers, raw_routing
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
from streams.models.ids import request_problem
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
DRAIN_BATCH_FACTOR = 5
# The label a retry is counted under (estop_provider_retries_total{error=...}).
RETRY_LABEL = {SubmitStatus.REFUSED: "error", SubmitStatus.UNKNOWN: "timeout"}


# A held-back message: its id and recipient as UTF-8 (its record's key and header), its stop.
Held = tuple[bytes, bytes, Stop]


def _utf8(raw: bytes) -> bytes:
    """Record bytes as they may go into an Avro string: valid UTF-8 (anything else replaced, as
    decoding the key would)."""
    return raw.decode(errors="replace").encode()


def _held(handoff: Handoff, stop: Stop) -> Held:
    return handoff.message_id.encode(), handoff.recipient_id.encode(), stop


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
        self._draining = False  # the last batch was all held back
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

    def cancel_stopped(self) -> int:
        """At start-up, before the first handoff: cancel at the provider what the outbox holds of
        every campaign stopped on this channel, asking the outbox once which campaigns it holds
        messages of instead of once per stopped campaign."""
        return sum(self._cancel_at_provider(campaign_id, stop)
                   for campaign_id in self.outbox.campaigns_at_provider()
                   if (stop := self.view.stopped(campaign_id, self.channel)) is not None)

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

    def batch_limit(self) -> int:
        """Larger batches while draining a stopped backlog: each batch is one transaction, whose
        commit waits for the broker, and a held-back message costs no provider capacity."""
        return self.settings.batch_size * (DRAIN_BATCH_FACTOR if self._draining else 1)

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
        held: list[Held] = []
        failed: list[tuple[Handoff, int, str]] = []
        stopped, channel, channel_bytes = self.view.stopped, self.channel, self._channel_bytes
        known_envelope = self.serdes.send_request.has_known_header
        # A stop is final: a campaign found stopped stays so for the batch (found not stopped,
        # a request takes the decoding path below, which looks again).
        stops: dict[bytes, Stop | None] = {}
        for message in messages:
            if message.error():
                continue
            offsets[message.partition()] = message.offset() + 1  # type: ignore[index,operator]
            # A request of a stopped campaign is held back whatever its body: its key (the
            # message id) and headers make its notSent event, no decode and no handoff object
            # (its payload never reaches a provider). Already stopped: held back here (a stop is
            # final; the handoff slice would hold it too), so a stopped backlog skips the queue.
            key, value = message.key(), message.value()
            if key and value is not None and len(value) <= MAX_RECORD_BYTES:
                campaign, record_channel, recipient = raw_routing(message.headers())
                if campaign and recipient and record_channel == channel_bytes:
                    stop = stops.get(campaign)
                    if stop is None:
                        stop = stops[campaign] = stopped(campaign.decode(errors="replace"), channel)
                    if stop is not None and known_envelope(value):
                        held.append((key if key.isascii() else _utf8(key),
                                     recipient if recipient.isascii() else _utf8(recipient), stop))
                        continue
            try:
                handoff = self._handoff(message)
            except SerdeError as exc:
                dead.append((message, exc.reason))
                continue
            stop = stopped(handoff.campaign_id, channel)
            if stop is None:
                pending.append(handoff)
            else:
                held.append(_held(handoff, stop))
        if not self._hand_over(pending, held, failed, running):
            # Shutting down: nothing was committed; the outbox makes the redo of the handoffs
            # idempotent.
            return
        owned = self._settle(held, failed)
        if owned:
            for campaign_id, stop in {stop.campaign_id: stop for key, _, stop in held
                                      if key in owned}.items():
                self._cancel_at_provider(campaign_id, stop)  # accepted on an answer that was lost
            held = [h for h in held if h[0] not in owned]
            failed = [f for f in failed if f[0].message_id.encode() not in owned]
        self.transactions.begin()
        try:
            for message, reason in dead:
                dead_letter(self.transactions.producer, message, reason)
            occurred_at = now_ms()
            self._publish_held(held, occurred_at)
            for handoff, attempts, error in failed:
                self._publish_failed(handoff, attempts, error, occurred_at)
        except KafkaException as exc:
            self.abort(exc)
            return
        if not self.commit(offsets):
            return
        self.halted += len(held)
        self._draining = bool(held) and not pending and not failed
        self.failed += len(failed)
        metrics.NOT_SENT.labels(self.channel, STAGE_PROVIDER).inc(len(held))
        metrics.FAILED.labels(self.channel).inc(len(failed))
        if dead:
            self.dead_lettered += len(dead)
            metrics.DEAD_LETTERED.labels(self.source).inc(len(dead))

    def _settle(self, held: list[Held], failed: list[tuple[Handoff, int, str]]) -> set[bytes]:
        """Of messages about to end without a handoff (held back, failed), the ids (UTF-8) of
        those the provider holds after all (their outcome belongs to the outbox); the others
        leave the outbox. Held-back messages are looked up only when the outbox has a row of
        their campaign at all: a stopped backlog of a campaign never handed over costs one
        indexed query per batch, not one per message id."""
        ids = [h.message_id for h, _, _ in failed]
        if held and self.outbox.has_campaign({stop.campaign_id for _, _, stop in held}):
            ids += [key.decode() for key, _, _ in held]
        states = self.outbox.states(ids) if ids else {}
        if not states:
            return set()
        doubted = {m for m, state in states.items() if state == SUBMITTING}
        in_doubt = [h for h, _, _ in failed if h.message_id in doubted]
        in_doubt += [Handoff(key.decode(), stop.campaign_id, self.channel, recipient.decode(), "")
                     for key, recipient, stop in held if key.decode() in doubted]
        found: dict[str, str] = {}
        if in_doubt:
            with self._provider_lock:
                found = self.provider.find(in_doubt)
            self.outbox.accepted(found, None)  # handed over at their last submission
            self.outbox.not_held(h.message_id for h in in_doubt if h.message_id not in found)
        return {m.encode() for m, state in states.items() if state != SUBMITTING} | \
            {m.encode() for m in found}

    def _handoff(self, message: Message) -> Handoff:
        """The handoff a record asks for, decoded and checked; SerdeError when it is not a valid
        request here."""
        value = message.value()
        if value is None or len(value) > MAX_RECORD_BYTES:
            raise SerdeError("empty value" if value is None else f"record of {len(value)} bytes")
        request = self.serdes.send_request.decode(value)
        if request["channel"] != self.channel:
            if request["channel"] not in CHANNELS:
                raise SerdeError(f"unknown channel {request['channel']!r} on the {self.channel} topic")
            raise SerdeError(f"channel {request['channel']!r} on the {self.channel} topic")
        problem = request_problem(request)
        if problem is not None:
            raise SerdeError(problem)
        return Handoff(request["message_id"], request["campaign_id"], self.channel,
                       request["recipient_id"], request["payload"])

    # -- handoffs ------------------------------------------------------------------------------

    def _hand_over(self, pending: list[Handoff], held: list[Held],
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

    def _handoff_slice(self, queue: deque[tuple[Handoff, int]], held: list[Held]
                       ) -> list[tuple[Handoff, int, SubmitStatus, str]]:
        """Check and hand over up to one slice of messages; a stop of one of its campaigns applied
        meanwhile waits in ``on_stop`` until the slice is recorded. Held-back messages cost no
        provider capacity, so they do not count against the slice.
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
                    held.append(_held(item, stop))
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

    def _publish_held(self, held: list[Held], occurred_at: int) -> None:
        """The notSent events of the held-back messages, a run of one stop's at a time (a
        batch is nearly always one run): encoded by the stop's encoder, produced with the stop's
        one header list."""
        topic = self.settings.topics.notsent
        start, size = 0, len(held)
        while start < size:
            stop = held[start][2]
            end = start + 1
            while end < size and held[end][2] is stop:
                end += 1
            encoder, headers = self._held_back.for_stop(stop)
            self.transactions.produce_all(topic, encoder.records(held[start:end], occurred_at),
                                          headers)
            start = end

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
