"""Dispatcher, stage ``provider``: drains ``dispatch.<channel>`` into the channel's provider (an
adapter chosen by settings, ``streams.providers``) at the provider's rate, re-checking the control
view right before every handoff, and turns each message's fate (delivered, undelivered or
cancelled at the provider, held back, failed) into one event.

Several dispatcher processes per channel share the work as members of one consumer group, each
with its own (disposable) disk. What a provider holds is recorded in the handoff ledger
(``streams.dispatch.ledger``), partitioned like ``dispatch.<channel>`` and kept in a compacted
changelog topic (``streams.dispatch.changelog``): a process assigned a partition restores its
ledger, makes its view of stops current, cancels at the provider what the ledger shows accepted
for campaigns stopped on its channel, and only then hands anything over from it.

Every path is exactly once:
* held back (the campaign is stopped) and failed (the provider refused every attempt): the
  events, the dead letters, the batch's ledger changes and its input offsets are committed in one
  Kafka transaction; a message the ledger says the provider holds (handed over before a crash,
  or accepted on an attempt whose answer was lost) is left to the ledger, so it never gets a
  second outcome;
* handed over: the check against the view happens under the view's lock, the reservation is
  committed to the changelog before the submission, the provider's answer is recorded right
  after, so a stop applied after the check finds every accepted message in the ledger and
  cancels it at the provider; a message in doubt (its answer lost, or its owner died between the
  submission and the record) is looked up at the provider before it is submitted again;
* outcomes (deliveries, cancellations) are reported in the same transaction as the ledger entry
  that records them, by the process that holds the message's partition. Receipts learned by
  another process (an SMSC's receipt on another bind, the MTA agent's log) reach it through
  ``dispatch.<channel>.receipts`` (``streams.dispatch.receipts``).

A handoff the provider refuses or does not answer is retried with exponential backoff,
re-checking the control view each time, at most ``ESTOP_PROVIDER_MAX_RETRIES`` times."""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections import deque

from confluent_kafka import Consumer, Message, TopicPartition

from streams import metrics
from streams.clock import now_ms
from streams.control.view import Applied, ControlView, Stop
from streams.dispatch.changelog import ChangelogWriter, Restored, restore
from streams.dispatch.ledger import (
    ACCEPTED,
    CANCELLED,
    DELIVERED,
    SUBMITTING,
    UNCONFIRMED,
    UNDELIVERED,
    Entry,
    EventRecord,
    Ledger,
    Outcome,
)
from streams.dispatch.receipts import delivery_of
from streams.faults import crash_point, pause_point
from streams.kafka import transactions
from streams.kafka.clients import Headers, consumer, take
from streams.kafka.deadletter import dead_letter
from streams.kafka.reader import watermarks
from streams.kafka.stage import ControlSync, TransactionalStage
from streams.models import (
    FAILED_EVENT,
    HEADER_CAMPAIGN,
    HEADER_CHANNEL,
    HEADER_OUTCOME,
    HEADER_STAGE,
    NOT_SENT_EVENT,
    OUTCOME_FAILED,
    REASON_CANCEL_UNCONFIRMED,
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
from streams.routing import Route, RoutingHeaders, SendRequest, decide, record_problem
from streams.serde import SerdeError, Serdes
from streams.serde.fastevents import HeldBackEvents
from streams.settings import Settings

log = logging.getLogger(__name__)

# The start of a `failed` event's error for a message the provider accepted and then did not
# deliver (a bounce, an UNDELIV receipt): the guardrails count it as the provider's own bounce.
UNDELIVERED_ERROR = "accepted but not delivered by the provider"

REPORT_EVERY_S = 0.1
PACE_SLICE_S = 0.01  # handoffs are paced in slices of 10 ms worth of the provider's rate
MAX_BACKOFF_S = 5.0
DRAIN_BATCH_FACTOR = 5
# A receipt by provider id that matches nothing held here is kept this long: its message may be
# accepted a moment later (the provider answered the submission and sent the receipt at once).
UNMATCHED_HOLD_S = 60.0
# One commit reserves the next handoffs up to this much of the provider's rate (see _reserve).
RESERVE_AHEAD_S = 0.1
# What a reservation found: never handed over, handed over with the answer lost, or accepted.
FRESH, IN_DOUBT, ALREADY = "fresh", "in_doubt", "already"
EXPIRE_EVERY_S = 60.0  # how often settled messages past the ledger's retention are forgotten
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


class _SliceAborted(Exception):
    """The reservation of a slice could not be committed: nothing of it was submitted."""


class Dispatcher(TransactionalStage):
    # A record Kafka refuses what the dispatcher made of (an event too large for its topic) would
    # fail its batch for ever: it is dead-lettered alone instead (streams.kafka.stage).
    settles_bad_records = True

    def __init__(self, settings: Settings, channel: str, view: ControlView, serdes: Serdes,
                 process_id: str, provider: ProviderAdapter, rate: float,
                 feed: ControlSync | None = None) -> None:
        topics = settings.topics
        super().__init__(settings, topics.dispatch(channel), topics.dispatcher_group(channel),
                         process_id, f"dispatcher {channel}", f"dispatcher.{channel}", feed,
                         # A slow provider may keep one batch in hand for a while.
                         **{"max.poll.interval.ms": 600000})
        self.channel = channel
        self.view = view
        self.serdes = serdes
        self.provider = provider
        self.rate = rate
        self.ledger = Ledger(channel, self._render)
        self.writer = ChangelogWriter(settings, serdes, channel, self.ledger, self.transactions,
                                      self.consumer, process_id, self._published)
        # One call at a time into the adapter: handoffs run here, a stop's cancel on the feed's thread.
        self._provider_lock = threading.Lock()
        # Campaigns of the slice being handed over, from its check to its record in the ledger.
        self._in_flight: set[str] = set()
        self._recorded = threading.Condition()
        self._positions: dict[str, tuple[int, int]] = {}  # message id -> (partition, offset), this batch
        self._reserved: dict[str, str] = {}  # reserved in the changelog, not handed over yet: kind
        self._early: list[Delivery] = []  # deliveries of messages whose acceptance is not recorded yet
        self._receipts: Consumer | None = None  # reads the receipts partitions of the ledger held here
        # Receipts read but not applied yet (acceptance not recorded yet, or a receipt by provider
        # id that may be of a message about to be recorded): (offset, delivery, read at).
        self._waiting: dict[int, list[tuple[int, Delivery, float]]] = {}
        self._dead_receipts: list[tuple[Message, str]] = []
        self._slice = max(1, int(rate * PACE_SLICE_S))
        self._reserve_ahead = max(self._slice, int(rate * RESERVE_AHEAD_S))
        self._held_back = HeldBackEvents(serdes.not_sent, channel, STAGE_PROVIDER,
                                         f"{REASON_HELD}: campaign stopped: ")
        self._channel_bytes = channel.encode()
        self._stage_bytes = STAGE_PROVIDER.encode()
        self._next_slot = time.monotonic()
        self._draining = False  # the last batch was all held back
        self._last_report = 0.0
        self._last_expiry = time.monotonic()
        self._random = random.Random()
        self.handed = 0
        self.halted = 0
        self.failed = 0
        self.dead_lettered = 0
        self.restored: list[Restored] = []  # one per preparation, for metrics and the bench

    # -- partitions coming and going -----------------------------------------------------------

    def prepare(self, partitions: list[int]) -> list[int] | None:
        """Before the first handoff from newly assigned partitions: restore their ledger, tell
        the adapter what the provider still holds of them, cancel there what belongs to stopped
        campaigns, then mark them ready, all under the ledger's lock (a stop hook waits: it
        covers them once they are ready, or this pass covered its stop). Returns the control
        position the pass covered."""
        committed = self._committed_offsets(partitions)
        restored = restore(self.settings, self.serdes, self.channel, committed)
        self.restored.append(restored)
        metrics.LEDGER_RESTORE_SECONDS.labels(self.channel).observe(restored.seconds)
        pause_point(self.settings, "dispatcher-restored")
        with self.ledger.lock:
            position = self.feed.position() if self.feed is not None else None
            self.ledger.add(restored.ledgers)
            self.writer.committed.update(committed)
            with self._provider_lock:
                self.provider.resume(self.ledger.unfinished(partitions))
            cancelled = sum(self._cancel(campaign_id, stop, partitions)
                            for campaign_id in self.ledger.campaigns_at_provider(partitions)
                            if (stop := self.view.stopped(campaign_id, self.channel)) is not None)
            self.writer.flush()
            self.ready = self.ready | set(partitions)
            entries = len(self.ledger)
        self._assign_receipts({ledger.partition: ledger.receipts_offset for ledger in restored.ledgers})
        metrics.LEDGER_ENTRIES.labels(self.channel).set(entries)
        log.info("dispatcher %s: partitions %s ready: %d ledger records read in %.2fs, %d entries "
                 "in memory, %d cancelled at the provider for stopped campaigns", self.channel,
                 partitions, restored.records, restored.seconds, entries, cancelled)
        return position

    def release(self, partitions: list[int], lost: bool) -> None:
        """Partitions revoked: commit what is pending (a clean handover) and forget their ledger;
        lost ones (this process was taken out of the group) are forgotten without a write."""
        with self.ledger.lock:
            if not lost and self.ledger.pending:
                self.writer.flush()
            self.ledger.remove(partitions)
            for partition in partitions:
                self.writer.committed.pop(partition, None)
                self._waiting.pop(partition, None)
        if self._receipts is not None:
            assigned = {tp.partition for tp in self._receipts.assignment()}
            gone = [TopicPartition(self.writer.receipts_topic, p) for p in partitions if p in assigned]
            if gone:
                self._receipts.incremental_unassign(gone)
        log.info("dispatcher %s: partitions %s %s", self.channel, partitions,
                 "lost" if lost else "handed over")

    def _committed_offsets(self, partitions: list[int]) -> dict[int, int]:
        """The committed input offset of each partition (its low watermark when none yet)."""
        found = transactions.retrying(lambda: self.consumer.committed(
            [TopicPartition(self.source, p) for p in partitions],
            timeout=self.settings.admin_timeout_s), "dispatcher: committed offsets")
        offsets = {}
        for tp in found:
            if tp.offset >= 0:
                offsets[tp.partition] = tp.offset
            else:
                low, _ = watermarks(self.consumer, TopicPartition(self.source, tp.partition),
                                    self.settings.admin_timeout_s)
                offsets[tp.partition] = max(low, 0)
        return offsets

    def _assign_receipts(self, checkpoints: dict[int, int]) -> None:
        if self._receipts is None:
            self._receipts = consumer(self.settings, **{"fetch.wait.max.ms": 10})
            self.writer.partitions = len(self._receipts.list_topics(
                self.writer.receipts_topic, timeout=self.settings.admin_timeout_s)
                .topics[self.writer.receipts_topic].partitions)
        topic = self.writer.receipts_topic
        again = [TopicPartition(topic, tp.partition) for tp in self._receipts.assignment()
                 if tp.partition in checkpoints]
        if again:  # assigned here before and not released (a preparation tried again)
            self._receipts.incremental_unassign(again)
        self._receipts.incremental_assign(
            [TopicPartition(topic, p, o) for p, o in checkpoints.items()])

    # -- stop hook (control feed thread) -------------------------------------------------------

    def on_stop(self, applied: Applied) -> int:
        """Runs once the view holds the stop, so no handoff of the campaign starts any more; one
        checked before it may still be under way: wait until the ledger records it (so the stop
        is acknowledged only after it, and cancels it), not for the slice's other campaigns.
        The cancellations are committed to the changelog before the hook returns."""
        if self.channel not in applied.newly_halted:
            return 0
        stop = self.view.stopped(applied.campaign_id, self.channel)
        if stop is None:
            return 0
        with self._recorded:
            self._recorded.wait_for(lambda: applied.campaign_id not in self._in_flight)
        with self.ledger.lock:
            cancelled = self._cancel(applied.campaign_id, stop, list(self.ledger.partitions))
            if cancelled:
                self.writer.flush()
        return cancelled

    def _cancel(self, campaign_id: str, stop: Stop, partitions: list[int]) -> int:
        """Cancel what the provider still holds of a stopped campaign in these partitions and
        report it (the caller holds the ledger's lock and commits); returns how many."""
        if self.provider.cancel_capability == CancelCapability.NONE:
            return 0
        held = self.ledger.at_provider(campaign_id, partitions)
        if not held:
            return 0
        with self._provider_lock:
            answers = self.provider.cancel(campaign_id, held)
        # Truthful cancellation: only a cancel the provider proved is cancelled; one it took
        # without proof is a notSent of its own reason, which a later delivery receipt replaces.
        at = now_ms()
        ended = {CANCELLED: 0, UNCONFIRMED: 0}
        for message_id, status in answers.items():
            outcome = {CancelStatus.CANCELLED: CANCELLED,
                       CancelStatus.UNCONFIRMED: UNCONFIRMED}.get(status)
            found = self.ledger.find(message_id)
            if outcome is not None and found is not None and found[1].state == ACCEPTED:
                self.ledger.report(found[0], found[1], Outcome(outcome, at, stop.reason,
                                                               stop.command_id, stop.requested_at))
                ended[outcome] += 1
        metrics.CANCELLED.labels(self.channel).inc(ended[CANCELLED])
        metrics.CANCEL_UNCONFIRMED.labels(self.channel).inc(ended[UNCONFIRMED])
        log.info("dispatcher %s: stop of %r cancelled %d of %d messages at the provider (%d more "
                 "cancels not confirmed)", self.channel, campaign_id, ended[CANCELLED], len(held),
                 ended[UNCONFIRMED])
        return ended[CANCELLED] + ended[UNCONFIRMED]

    # -- a record dead-lettered alone (streams.kafka.stage) ------------------------------------

    def _dead_letter_alone(self, message: Message, fault: str) -> None:
        with self.ledger.lock:  # one transaction at a time: a stop hook commits on its thread too
            super()._dead_letter_alone(message, fault)

    def commit(self, offsets: dict[int, int]) -> bool:
        """The stage's own commit (a record dead-lettered alone): the changelog's transactions
        fence with the offsets committed last, so they must know these."""
        if not super().commit(offsets):
            return False
        self.writer.committed.update(offsets)
        return True

    # -- main loop -----------------------------------------------------------------------------

    def batch_limit(self) -> int:
        """Larger batches while draining a stopped backlog: each batch is one transaction, whose
        commit waits for the broker, and a held-back message costs no provider capacity."""
        return self.settings.batch_size * (DRAIN_BATCH_FACTOR if self._draining else 1)

    def idle(self) -> None:
        if time.monotonic() - self._last_expiry > EXPIRE_EVERY_S:
            self._last_expiry = time.monotonic()
            with self.ledger.lock:
                self.ledger.expire(now_ms() - int(self.settings.ledger_retention_s * 1000))
        if time.monotonic() - self._last_report > REPORT_EVERY_S:
            self._report()

    def before_close(self) -> None:
        """A clean shutdown: record and publish what the provider said so far; the consumer's
        close then hands every partition over (``release`` commits what is left)."""
        self._report()

    def closing(self) -> None:
        with self._provider_lock:
            self.provider.close()
        if self._receipts is not None:
            self._receipts.close()
            self._receipts = None

    def process(self, messages: list[Message], running: threading.Event) -> None:
        pending: list[Handoff] = []
        offsets: dict[int, int] = {}
        dead: list[tuple[Message, str]] = []
        held: list[Held] = []
        failed: list[tuple[Handoff, int, str]] = []
        positions: dict[str, tuple[int, int]] = {}
        stopped, channel, channel_bytes = self.view.stopped, self.channel, self._channel_bytes
        known_envelope = self.serdes.send_request.has_known_header
        # A stop is final: a campaign found stopped stays so for the batch (found not stopped,
        # a request takes the decoding path below, which looks again).
        stops: dict[bytes, Stop | None] = {}
        for message in messages:
            if message.error():
                continue
            partition, offset = message.partition(), message.offset()
            offsets[partition] = offset + 1  # type: ignore[index,operator]
            # A request of a stopped campaign is held back whatever its body: its key (the
            # message id) and headers make its notSent event, no decode and no handoff object
            # (its payload never reaches a provider). Already stopped: held back here (a stop is
            # final; the handoff slice would hold it too), so a stopped backlog skips the queue.
            key, value = message.key(), message.value()
            if key and record_problem(value, key) is None:
                routing = RoutingHeaders.of(message.headers())
                campaign, recipient = routing.campaign, routing.recipient
                if campaign and recipient and routing.channel == channel_bytes:
                    stop = stops.get(campaign)
                    if stop is None:
                        stop = stops[campaign] = stopped(campaign.decode(errors="replace"), channel)
                    if stop is not None and known_envelope(value):  # type: ignore[arg-type]
                        held.append((key if key.isascii() else _utf8(key),
                                     recipient if recipient.isascii() else _utf8(recipient), stop))
                        continue
            # The message id comes from the body, so the key is not checked on this path.
            problem = record_problem(value, None)
            request: SendRequest | None = None
            if problem is None:
                try:
                    request = SendRequest.checked(self.serdes.send_request.decode(value))
                except SerdeError as exc:
                    problem = exc.reason
            decision = (decide(channel, request.campaign_id, request.channel, stopped)
                        if request is not None else decide(channel, None, None, stopped, problem))
            if decision.route is Route.DEAD_LETTER:
                dead.append((message, decision.reason))
                continue
            assert request is not None
            handoff = Handoff(request.message_id, request.campaign_id, channel, request.recipient_id,
                              request.payload)
            if decision.stop is None:
                pending.append(handoff)
                positions[handoff.message_id] = (partition, offset)  # type: ignore[assignment]
            else:
                held.append(_held(handoff, decision.stop))
        self._positions = positions
        try:
            if not self._hand_over(pending, held, failed, running):
                # Shutting down: the batch is not committed; the ledger makes its redo idempotent.
                return
        except _SliceAborted:
            self._fault = transactions.record_fault(self.writer.last_error)
            self.rewind()
            return
        owned = self._settle(held, failed)
        if owned:
            with self.ledger.lock:
                for campaign_id, stop in {stop.campaign_id: stop for key, _, stop in held
                                          if key in owned}.items():
                    # Accepted on an answer that was lost: the provider holds it; cancel it there.
                    self._cancel(campaign_id, stop, list(self.ledger.partitions))
            held = [h for h in held if h[0] not in owned]
            failed = [f for f in failed if f[0].message_id.encode() not in owned]

        def outputs() -> None:
            for message, reason in dead:
                dead_letter(self.transactions.producer, message, reason)
            occurred_at = now_ms()
            self._publish_held(held, occurred_at)
            for handoff, attempts, error in failed:
                self._publish_failed(handoff, attempts, error, occurred_at)

        if not self.writer.flush(offsets, outputs):
            self._fault = transactions.record_fault(self.writer.last_error)
            self.rewind()
            return
        self._settled = True
        with self.ledger.lock:
            self.ledger.prune(offsets)
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
        those the provider holds after all (their outcome belongs to the ledger); the others
        leave the ledger. Held-back messages are looked up only when the ledger has an entry
        of their campaign at all."""
        ids = [h.message_id for h, _, _ in failed]
        with self.ledger.lock:
            if held and self.ledger.has_campaign({stop.campaign_id for _, _, stop in held}):
                ids += [key.decode() for key, _, _ in held]
            states = self.ledger.states(ids) if ids else {}
        # Reserved ahead but never submitted (held back before their turn): not at the provider.
        unsubmitted = {m for m, kind in self._reserved.items() if kind == FRESH}
        self._reserved.clear()
        if unsubmitted:
            with self.ledger.lock:
                self.ledger.not_held(unsubmitted)
            states = {m: s for m, s in states.items() if m not in unsubmitted}
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
            with self.ledger.lock:
                self.ledger.accepted(found, None)  # handed over at their last submission
                self.ledger.not_held(h.message_id for h in in_doubt if h.message_id not in found)
        return {m.encode() for m, state in states.items() if state != SUBMITTING} | \
            {m.encode() for m in found}

    # -- handoffs ------------------------------------------------------------------------------

    def _hand_over(self, pending: list[Handoff], held: list[Held],
                   failed: list[tuple[Handoff, int, str]], running: threading.Event) -> bool:
        """Hand every pending message over, retrying refused ones with backoff; fills ``held``
        (stopped before a handoff) and ``failed`` (retry budget spent). False on shutdown;
        ``_SliceAborted`` when a reservation could not be committed."""
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
        provider capacity, so they do not count against the slice. Returns the handoffs the
        provider did not confirm, with their attempt, status and answer."""
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
            self._reserve(handoffs, queue)
            kinds = {h.message_id: self._reserved.pop(h.message_id) for h in handoffs}
            in_doubt = [h for h in handoffs if kinds[h.message_id] == IN_DOUBT]
            with self._provider_lock:
                found = self.provider.find(in_doubt) if in_doubt else {}
                submit = [h for h in handoffs if kinds[h.message_id] == FRESH
                          or (kinds[h.message_id] == IN_DOUBT and h.message_id not in found)]
                answers = self.provider.submit(submit) if submit else []
            if in_doubt:
                log.info("dispatcher %s: %d of %d messages in doubt were found at the provider "
                         "(not submitted again)", channel, len(found), len(in_doubt))
            crash_point(self.settings, "handoff-submitted")
            at = now_ms()
            accepted = {**found, **{a.message_id: a.provider_id for a in answers
                                    if a.status == SubmitStatus.ACCEPTED and a.provider_id}}
            with self.ledger.lock:
                self.ledger.accepted(accepted, at)
                self.ledger.not_held(a.message_id for a in answers if a.status == SubmitStatus.REFUSED)
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

    def _reserve(self, handoffs: list[Handoff], queue: deque[tuple[Handoff, int]]) -> None:
        """Make sure the slice's messages are reserved in the changelog before they are submitted.
        A commit reserves the slice and the messages queued behind it, up to RESERVE_AHEAD_S of
        the provider's rate, so there is one transaction per that much handoff, not per slice.
        ``_SliceAborted`` when the commit failed."""
        if all(h.message_id in self._reserved for h in handoffs):
            return
        ahead = [h for h, _ in itertools.islice(queue, self._reserve_ahead)
                 if h.message_id not in self._reserved]
        chunk = [h for h in handoffs if h.message_id not in self._reserved] + ahead
        with self.ledger.lock:
            reserved = self.ledger.reserve(chunk, self._positions)
        self._reserved.update(dict.fromkeys((h.message_id for h in chunk), ALREADY))
        self._reserved.update(dict.fromkeys((h.message_id for h in reserved.fresh), FRESH))
        self._reserved.update(dict.fromkeys((h.message_id for h in reserved.in_doubt), IN_DOUBT))
        if (reserved.fresh or reserved.in_doubt) and not self.writer.flush():
            self._reserved.clear()
            raise _SliceAborted

    def _pace(self, count: int) -> None:
        now = time.monotonic()
        self._next_slot = max(self._next_slot, now - PACE_SLICE_S) + count / self.rate
        if self._next_slot > now:
            time.sleep(self._next_slot - now)

    # -- receipts and outcomes -----------------------------------------------------------------

    def _report(self) -> None:
        """Apply what the provider said (here, or to another process: the receipts topic) and
        commit the outcomes with their ledger entries. A transaction that failed is retried
        first; until it commits, the adapter is not asked for more (an SMSC's receipts are
        acknowledged on the next call)."""
        self._last_report = time.monotonic()
        with self.ledger.lock:
            if self.ledger.pending and not self.writer.flush():
                return
        with self._provider_lock:
            deliveries = self.provider.deliveries()
        with self.ledger.lock:
            learned, self._early = [*self._early, *deliveries], []
            routed = []
            for delivery in learned:
                result = self.ledger.delivered(delivery)
                if result == "early":
                    self._early.append(delivery)
                elif result == "unknown":
                    routed.append(delivery)  # its partition is held elsewhere (or forgotten)
            if routed:
                self.ledger.route(routed)
            self._apply_receipts()
            events = len(self.ledger.pending.events)
            dead, self._dead_receipts = self._dead_receipts, []
            if not self.writer.flush(extra=(lambda: self._dead_letter(dead)) if dead else None):
                self._dead_receipts = dead + self._dead_receipts
                return
        if events:
            crash_point(self.settings, "receipts-committed")

    def _apply_receipts(self) -> None:
        """Receipts other processes wrote for the partitions held here (see ``receipts``)."""
        reader = self._receipts
        if reader is None or not self.ledger.partitions:
            return
        now = time.monotonic()
        read: dict[int, int] = {}
        for message in take(reader, 5000, 0):
            if message.error():
                continue
            partition, offset = message.partition() or 0, message.offset() or 0
            read[partition] = offset + 1
            if partition not in self.ledger.partitions:
                continue
            try:
                delivery = delivery_of(self.serdes, message.value())
            except SerdeError as exc:
                self._dead_receipts.append((message, exc.reason))
                continue
            self._waiting.setdefault(partition, []).append((offset, delivery, now))
        for partition in set(self._waiting) | set(read):
            if partition not in self.ledger.partitions:
                self._waiting.pop(partition, None)
                continue
            still = []
            for offset, delivery, since in self._waiting.get(partition, []):
                result = self.ledger.delivered(delivery, partition)
                if result == "early" or (result == "unknown" and not delivery.message_id
                                         and now - since < UNMATCHED_HOLD_S):
                    still.append((offset, delivery, since))
            self._waiting[partition] = still
            upto = read.get(partition, self.ledger.partitions[partition].receipts_offset)
            self.ledger.checkpoint(partition, min([upto, *(o for o, _, _ in still)]))

    def _dead_letter(self, dead: list[tuple[Message, str]]) -> None:
        for message, reason in dead:
            dead_letter(self.transactions.producer, message, reason)
        self.dead_lettered += len(dead)
        metrics.DEAD_LETTERED.labels(self.writer.receipts_topic).inc(len(dead))

    def _published(self, reported: list[Entry]) -> None:
        """Counts the outcomes a transaction just committed."""
        sent = sum(1 for e in reported if e.outcome == DELIVERED)
        undelivered = sum(1 for e in reported if e.outcome == UNDELIVERED)
        metrics.SENT.labels(self.channel).inc(sent)
        metrics.FAILED.labels(self.channel).inc(undelivered)
        metrics.NOT_SENT.labels(self.channel, STAGE_PROVIDER).inc(len(reported) - sent - undelivered)

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
                       error: str, occurred_at: int) -> EventRecord:
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

    def _render(self, entry: Entry) -> EventRecord:
        """The event of a provider outcome, reported with its ledger entry."""
        topics = self.settings.topics
        headers = self._headers(entry.campaign_id)
        occurred_at = entry.occurred_at or now_ms()
        if entry.outcome == DELIVERED:
            value = self.serdes.sent.encode({
                "event": SENT_EVENT[self.channel],
                "message_id": entry.message_id,
                "campaign_id": entry.campaign_id,
                "channel": self.channel,
                "recipient_id": entry.recipient_id,
                "handed_at": entry.handed_at or occurred_at,
                "occurred_at": occurred_at,
            })
            return topics.sent, entry.message_id.encode(), value, headers
        if entry.outcome == UNDELIVERED:
            return self._failed_record(entry.message_id, entry.campaign_id, entry.recipient_id,
                                       entry.attempts,
                                       f"{UNDELIVERED_ERROR}: {entry.reason}",
                                       occurred_at)
        value = self.serdes.not_sent.encode({
            "event": NOT_SENT_EVENT[self.channel],
            "message_id": entry.message_id,
            "campaign_id": entry.campaign_id,
            "channel": self.channel,
            "recipient_id": entry.recipient_id,
            "stage": STAGE_PROVIDER,
            "reason": f"{REASON_CANCELLED if entry.outcome == CANCELLED else REASON_CANCEL_UNCONFIRMED}"
                      f": campaign stopped: {entry.reason}",
            "stop_command_id": entry.stop_command_id,
            "stop_requested_at": entry.stop_requested_at,
            "occurred_at": occurred_at,
        })
        return (topics.notsent, entry.message_id.encode(), value,
                [*headers, (HEADER_STAGE, self._stage_bytes)])
