"""The guardrail processor (``estop worker --role guardrail``): two consumer-group stages.

* The counter reads the outcomes (``sent``, ``failed``) and ``feedback``, keyed by message id,
  and writes what each batch adds per campaign and channel (``GuardrailCounts``) to
  ``guardrail-counts`` keyed by campaign id, in one Kafka transaction with its input offsets.
* The judge reads ``guardrail-counts``: one partition holds a campaign's every count. It keeps a
  window per campaign, channel and rule, in memory and in the compacted changelog
  ``guardrail-state`` (partition p for partition p), written in the same transaction as its
  input offsets, and restored from it by whichever process is assigned the partition (the
  dispatcher's ledger model). A rule trips when its window holds at least the minimum sample
  and its rate reaches the threshold: the trip is recorded in the changelog in the transaction
  of the counts that made it, then a stop is written through the path a person's takes
  (``streams.control.stop.audited_stop``, ``requested_by`` ``guardrail:<rule>``), and its
  command id recorded in turn. A process that restores a trip without a command id stops the
  campaign unless ``campaign-control`` shows it stopped already: one stop per trip across
  restarts and rebalances. One trip per campaign: once one rule tripped, the others count on
  (their values stay visible) without tripping.

Fencing a stop against a partition that moves: the stopper writes a trip's stop only while its
partition is held here (checked under a lock), and a revocation waits, under that lock, until a
stop being written for the partition is acknowledged by Kafka, so the next owner, assigned only
after the revocation returns, finds it on ``campaign-control`` and writes none. A partition lost
without a clean revocation (the process was frozen past its session) cannot be waited for: the
stop's command id is derived from the trip (``trip_command_id``), so both writes are one command
to the gates, dispatchers and the confirmation (the audit then shows it accepted twice)."""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaException, Message, TopicPartition

from streams import metrics
from streams.campaigns.lifecycle import read_control
from streams.clock import now_ms
from streams.control.stop import audited_stop, stoppable
from streams.faults import crash_point
from streams.guardrails.rules import FIRST, Rule, RuleBook
from streams.guardrails.signals import KINDS, failed_hits, feedback_hits
from streams.kafka import transactions
from streams.kafka.clients import consumer, take
from streams.kafka.deadletter import dead_letter
from streams.kafka.reader import assign_all, high_watermark, read_until
from streams.kafka.stage import TransactionalStage
from streams.models import CHANNELS
from streams.models.ids import id_problem
from streams.security import audit
from streams.serde import SerdeError, Serdes
from streams.settings import Settings

log = logging.getLogger(__name__)

BUCKETS = 20  # a sliding window is kept as this many buckets of its length
RESTORE_TIMEOUT_S = 120.0
RETRY_S = 1.0
VALUES_EVERY_S = 5.0  # sliding windows age without new counts: their gauges are redone this often
TRIP_IDS = uuid.UUID("6d1f3c2e-93a4-4f0e-9b51-0c7e2a1d5e47")  # the namespace of trip command ids


def trip_command_id(window: Window) -> str:
    """The stop command id of a trip: the same for every process that writes its stop."""
    return uuid.uuid5(TRIP_IDS, f"{window.key}@{window.tripped_at}").hex


# -- the counter --------------------------------------------------------------------------------


class Tally:
    """Outcomes and feedback -> counts per campaign and channel (see the module's note)."""

    def __init__(self, settings: Settings, serdes: Serdes, process_id: str) -> None:
        self.settings = settings
        self.serdes = serdes
        t = settings.topics
        self.sources = [t.sent, t.failed, t.feedback]
        self.consumer = consumer(settings, **{
            "group.id": t.guardrail_count_group, "client.id": process_id,
            "partition.assignment.strategy": "cooperative-sticky"})
        self.transactions = transactions.TransactionalProducer(
            settings, f"{t.guardrail_count_group}-{process_id}", "guardrail counter")
        self._revoked: set[tuple[str, int]] = set()
        self.last_pass = time.monotonic()

    def run(self, running: threading.Event) -> None:
        self.transactions.init()
        self.consumer.subscribe(self.sources, on_revoke=self._dropped, on_lost=self._dropped)
        try:
            while running.is_set():
                self.last_pass = time.monotonic()
                messages = take(self.consumer, self.settings.batch_size, self.settings.poll_timeout_s)
                if self._revoked:
                    gone = self._revoked
                    self._revoked = set()
                    messages = [m for m in messages if (m.topic(), m.partition()) not in gone]
                if messages:
                    self._batch(messages)
        finally:
            self.consumer.close()

    def _dropped(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self._revoked.update((tp.topic, tp.partition) for tp in partitions)

    def _batch(self, messages: list[Message]) -> None:
        t = self.settings.topics
        counts: dict[tuple[str, str], list[Any]] = {}  # -> [outcomes, hits, latest]
        offsets: dict[tuple[str, int], int] = {}
        bad: list[tuple[Message, str]] = []
        for message in messages:
            if message.error():
                continue
            offsets[(message.topic() or "", message.partition() or 0)] = (message.offset() or 0) + 1
            topic = message.topic()
            try:
                if topic == t.sent:
                    event = self.serdes.sent.decode(message.value())
                    hits: tuple[str, ...] = ()
                elif topic == t.failed:
                    event = self.serdes.failed.decode(message.value())
                    hits = failed_hits(event)
                else:
                    event = self.serdes.feedback.decode(message.value())
                    problem = _feedback_problem(event)
                    if problem:
                        bad.append((message, problem))
                        continue
                    hits = feedback_hits(event)
            except SerdeError as exc:
                if topic == t.feedback:
                    bad.append((message, f"unreadable feedback: {exc.reason}"))
                # an unreadable outcome is the sink's to dead-letter; it counts for nothing here
                continue
            slot = counts.setdefault((event["campaign_id"], event["channel"]), [0, Counter(), 0])
            if topic != t.feedback:
                slot[0] += 1
            slot[1].update(hits)
            slot[2] = max(slot[2], event["occurred_at"])
        self.transactions.begin()
        try:
            for (campaign_id, channel), (outcomes, hits_of, at) in counts.items():
                self.transactions.produce(t.guardrail_counts, key=campaign_id.encode(),
                                          value=self.serdes.guardrail_counts.encode({
                                              "campaign_id": campaign_id, "channel": channel,
                                              "outcomes": outcomes, "hits": dict(hits_of),
                                              "at": at or now_ms()}))
            for message, reason in bad:
                dead_letter(self.transactions.producer, message, reason)
        except KafkaException as exc:
            self.transactions.abort(exc)
            transactions.rewind(self.consumer, self.settings.admin_timeout_s)
            return
        if not self.transactions.commit([TopicPartition(topic, p, o) for (topic, p), o in offsets.items()],
                                        self.consumer.consumer_group_metadata()):
            transactions.rewind(self.consumer, self.settings.admin_timeout_s)
            return
        for _message, _reason in bad:
            metrics.DEAD_LETTERED.labels(t.feedback).inc()


def _feedback_problem(report: dict[str, Any]) -> str | None:
    if report["kind"] not in KINDS:
        return f"unknown feedback kind {report['kind']!r}"
    if report["channel"] not in CHANNELS:
        return f"unknown channel {report['channel']!r}"
    return id_problem(report["campaign_id"])


# -- the judge ----------------------------------------------------------------------------------


@dataclass
class Window:
    """One rule's counts for one campaign on one channel (a ``GuardrailState`` record)."""

    campaign_id: str
    channel: str
    rule: str
    window: str
    partition: int
    buckets: dict[int, list[int]] = field(default_factory=dict)  # start -> [sample, hits]
    tripped_at: int | None = None
    trip_reason: str | None = None
    stop_command_id: str | None = None

    @property
    def key(self) -> str:
        return f"{self.campaign_id}/{self.channel}/{self.rule}"

    def add(self, rule: Rule, outcomes: int, hits: int, at: int) -> None:
        if rule.window == FIRST:
            bucket = self.buckets.setdefault(0, [0, 0])
            if bucket[0] < rule.window_size:  # the batch that reaches N counts whole
                bucket[0] += outcomes
                bucket[1] += hits
            elif outcomes == 0:  # feedback about the campaign's messages counts whenever it comes
                bucket[1] += hits
            return
        width = max(1000, rule.window_size * 1000 // BUCKETS)
        newest = max([at, *self.buckets])  # counts about a time long past age out at once
        bucket = self.buckets.setdefault(at - at % width, [0, 0])
        bucket[0] += outcomes
        bucket[1] += hits
        self.age(rule, newest)

    def age(self, rule: Rule, now: int) -> None:
        if rule.window != FIRST:
            oldest = now - rule.window_size * 1000
            for start in [s for s in self.buckets if s < oldest]:
                del self.buckets[start]

    def totals(self) -> tuple[int, int]:
        return sum(b[0] for b in self.buckets.values()), sum(b[1] for b in self.buckets.values())

    def value(self) -> float:
        sample, hits = self.totals()
        return hits / sample if sample else 0.0

    def trips(self, rule: Rule) -> bool:
        sample, _hits = self.totals()
        return sample >= rule.min_sample and self.value() >= rule.threshold

    def reason(self, rule: Rule) -> str:
        sample, hits = self.totals()
        return (f"guardrail {rule.name}: {rule.metric} rate {self.value():.2%} ({hits:,} of "
                f"{sample:,} outcomes on {self.channel} over {rule.describe_window()}) reached "
                f"the threshold {rule.threshold:.2%} (minimum sample {rule.min_sample:,})")

    def record(self) -> dict[str, Any]:
        return {"campaign_id": self.campaign_id, "channel": self.channel, "rule": self.rule,
                "window": self.window,
                "buckets": [{"start": s, "sample": b[0], "hits": b[1]}
                            for s, b in sorted(self.buckets.items())],
                "tripped_at": self.tripped_at, "trip_reason": self.trip_reason,
                "stop_command_id": self.stop_command_id}

    @classmethod
    def from_record(cls, record: dict[str, Any], partition: int) -> Window:
        return cls(record["campaign_id"], record["channel"], record["rule"], record["window"],
                   partition, {b["start"]: [b["sample"], b["hits"]] for b in record["buckets"]},
                   record["tripped_at"], record["trip_reason"], record["stop_command_id"])


class RuleFollower:
    """The rules topic, read to its end at start and followed between batches."""

    def __init__(self, settings: Settings, serdes: Serdes) -> None:
        self.serdes = serdes
        self.book = RuleBook()
        self.reader, ends = assign_all(settings, settings.topics.guardrail_rules)
        read_until(self.reader, settings.topics.guardrail_rules, ends, self._apply)

    def _apply(self, message: Message) -> None:
        self.book.apply(message.key(), message.value(), self.serdes)

    def follow(self) -> None:
        for message in take(self.reader, 1000, 0):
            if not message.error():
                self._apply(message)

    def close(self) -> None:
        self.reader.close()


class Judge(TransactionalStage):
    """Counts -> windows -> trips -> stops (see the module's note)."""

    def __init__(self, settings: Settings, serdes: Serdes, process_id: str) -> None:
        t = settings.topics
        super().__init__(settings, t.guardrail_counts, t.guardrail_group, process_id,
                         "guardrail judge", "guardrail")
        self.serdes = serdes
        self.process_id = process_id
        self.rules = RuleFollower(settings, serdes)
        self.windows: dict[str, Window] = {}
        self.tripped: dict[str, str] = {}  # campaign id -> the key of the window that tripped
        self.offsets: dict[int, int] = {}  # partition -> committed next offset (fencing)
        self.trips: queue.Queue[Window] = queue.Queue()
        self.stopped: queue.Queue[tuple[str, str]] = queue.Queue()  # (window key, command id)
        self._values_at = 0.0
        self._restored: list[Window] = []  # trips without their stop, restored by prepare
        self._writing: int | None = None  # the partition whose trip's stop is being written
        self._written = threading.Condition()  # guards _writing (see the module's note)
        self._running: threading.Event | None = None
        self._stopper: threading.Thread | None = None

    # -- the stage --------------------------------------------------------------------------

    def run(self, running: threading.Event) -> None:
        self._running = running
        self._stopper = threading.Thread(target=self._stop_trips, args=(running,),
                                         name="guardrail-stopper", daemon=True)
        self._stopper.start()
        try:
            super().run(running)
        finally:
            self.rules.close()

    def process(self, messages: list[Message], running: threading.Event) -> None:
        offsets: dict[int, int] = {}
        changed: dict[str, Window] = {}
        tripped: list[Window] = []
        for message in messages:
            if message.error():
                continue
            partition = message.partition() or 0
            offsets[partition] = (message.offset() or 0) + 1
            try:
                counts = self.serdes.guardrail_counts.decode(message.value())
            except SerdeError as exc:
                log.error("guardrail-counts[%d]@%s unreadable, skipped: %s", partition,
                          message.offset(), exc.reason)
                continue
            campaign_id, channel = counts["campaign_id"], counts["channel"]
            for rule in self.rules.book.effective(campaign_id):
                if not rule.watches(channel):
                    continue
                key = f"{campaign_id}/{channel}/{rule.name}"
                window = self.windows.get(key)
                if window is None or window.window != rule.window_id:
                    window = Window(campaign_id, channel, rule.name, rule.window_id, partition)
                    if key in self.windows:  # the rule's window changed: its counts start over
                        window.tripped_at, window.stop_command_id = (
                            self.windows[key].tripped_at, self.windows[key].stop_command_id)
                    self.windows[key] = window
                window.add(rule, counts["outcomes"], counts["hits"].get(rule.metric, 0),
                           counts["at"])
                changed[key] = window
                if campaign_id not in self.tripped and window.tripped_at is None and window.trips(rule):
                    window.tripped_at = now_ms()
                    window.trip_reason = window.reason(rule)
                    self.tripped[campaign_id] = key
                    tripped.append(window)
        if self._commit(changed.values(), offsets):
            for window in tripped:
                log.warning("%s tripped: %s", window.key, window.trip_reason)
                metrics.GUARDRAIL_TRIPS.labels(window.rule, window.channel).inc()
                crash_point(self.settings, "guardrail-tripped")
                self.trips.put(window)
            self._values()
        else:
            for window in tripped:  # redone with the batch
                self.tripped.pop(window.campaign_id, None)
                window.tripped_at = window.trip_reason = None

    def _commit(self, windows: Any, offsets: dict[int, int]) -> bool:
        self.transactions.begin()
        try:
            for window in windows:
                self.transactions.produce(self.settings.topics.guardrail_state,
                                          key=window.key.encode(), partition=window.partition,
                                          value=self.serdes.guardrail_state.encode(window.record()))
        except KafkaException as exc:
            self.abort(exc)
            return False
        fence = {p: o for p, o in {**self.offsets, **offsets}.items() if p in self.ready}
        if not self.commit(fence):
            return False
        self.offsets.update(offsets)
        return True

    def idle(self) -> None:
        self.rules.follow()
        restored, self._restored = self._restored, []
        for trip in {w.key: w for w in restored}.values():  # a prepare done again restores twice
            if trip.partition in self.ready:
                self.trips.put(trip)
        done: list[Window] = []
        while True:
            try:
                key, command_id = self.stopped.get_nowait()
            except queue.Empty:
                break
            window = self.windows.get(key)
            if window is not None and window.partition in self.ready:
                window.stop_command_id = command_id
                done.append(window)
        if done and not self._commit(done, {}):
            for window in done:  # recorded with the next batch, or by the next owner's restore
                self.stopped.put((window.key, window.stop_command_id or ""))
        if time.monotonic() - self._values_at > VALUES_EVERY_S:
            self._values()

    def _values(self) -> None:
        """The gauges: per rule and channel, the highest rate against its threshold over the
        campaigns held here whose window reached its minimum sample."""
        self._values_at = time.monotonic()
        now = now_ms()
        best: dict[tuple[str, str], tuple[float, float]] = {}
        for window in self.windows.values():
            rule = next((r for r in self.rules.book.effective(window.campaign_id)
                         if r.name == window.rule), None)
            if rule is None:
                continue
            window.age(rule, now)
            if window.totals()[0] < rule.min_sample:
                continue
            value = window.value()
            key = (rule.name, window.channel)
            if key not in best or value / rule.threshold > best[key][0] / best[key][1]:
                best[key] = (value, rule.threshold)
        for (rule_name, channel), (value, threshold) in best.items():
            metrics.GUARDRAIL_VALUE.labels(rule_name, channel).set(value)
            metrics.GUARDRAIL_THRESHOLD.labels(rule_name, channel).set(threshold)

    # -- partitions -------------------------------------------------------------------------

    def prepare(self, partitions: list[int]) -> list[int] | None:
        committed = transactions.retrying(lambda: self.consumer.committed(
            [TopicPartition(self.source, p) for p in partitions],
            timeout=self.settings.admin_timeout_s), "guardrail: committed offsets")
        for tp in committed:
            if tp.offset >= 0:
                self.offsets[tp.partition] = tp.offset
        for window in restore(self.settings, self.serdes, partitions):
            self.windows[window.key] = window
            if window.tripped_at is not None:
                self.tripped.setdefault(window.campaign_id, window.key)
                if window.stop_command_id is None:  # its stop not recorded: see the module's note
                    self._restored.append(window)  # stopped once the partition is ready (idle)
        return super().prepare(partitions)

    def release(self, partitions: list[int], lost: bool) -> None:
        gone = set(partitions)
        with self._written:  # a stop being written for them is on campaign-control first
            while self._writing in gone:
                self._written.wait()
        for key in [k for k, w in self.windows.items() if w.partition in gone]:
            window = self.windows.pop(key)
            if self.tripped.get(window.campaign_id) == key:
                del self.tripped[window.campaign_id]
        for partition in gone:
            self.offsets.pop(partition, None)

    # -- stopping ---------------------------------------------------------------------------

    def _stop_trips(self, running: threading.Event) -> None:
        """Write the stop of each trip (on its own thread: a stop waits for its confirmation)."""
        while running.is_set():
            try:
                window = self.trips.get(timeout=0.2)
            except queue.Empty:
                continue
            with self._written:
                held = window.partition in self.ready
                if held:
                    self._writing = window.partition
            if not held:
                continue  # the partition moved: its new owner restores the trip
            try:
                command_id = self._stop(window)
            except Exception as exc:  # a broker away, a refused write: try again
                log.warning("the stop of %s (%s) failed: %s; trying again", window.campaign_id,
                            window.trip_reason, exc)
                self._wrote()
                time.sleep(RETRY_S)
                self.trips.put(window)
                continue
            self._wrote()
            self.stopped.put((window.key, command_id))

    def _wrote(self, *_written: Any) -> None:
        """The stop being written is on campaign-control (or was not written): a revocation
        waiting for it may go on."""
        with self._written:
            self._writing = None
            self._written.notify_all()

    def _stop(self, window: Window) -> str:
        view = read_control(self.settings, self.serdes)
        if not stoppable(view, window.campaign_id):
            stops = view.stops(window.campaign_id)
            log.info("%s is stopped already (%s); the trip of %s writes no stop",
                     window.campaign_id, stops[0].requested_by, window.rule)
            return stops[0].command_id
        actor = audit.Actor(f"guardrail:{window.rule}", "guardrail", self.process_id,
                            role="guardrail")
        result = audited_stop(self.settings, self.serdes, actor, window.campaign_id,
                              window.trip_reason or window.rule, [], self.settings.stop_timeout_s,
                              force=True, command_id=trip_command_id(window),
                              on_written=self._wrote)
        metrics.GUARDRAIL_STOPS.labels(window.rule).inc()
        return result.command_id or ""


def restore(settings: Settings, serdes: Serdes, partitions: list[int]) -> list[Window]:
    """The windows of ``partitions`` from the changelog (read_committed, to its end)."""
    topic = settings.topics.guardrail_state
    latest: dict[tuple[int, bytes], bytes | None] = {}
    reader = consumer(settings, **{"fetch.wait.max.ms": 10})
    try:
        ends = {p: high_watermark(reader, TopicPartition(topic, p), settings.admin_timeout_s)
                for p in partitions}
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        read_until(reader, topic, ends,
                   lambda m: latest.__setitem__((m.partition() or 0, m.key() or b""), m.value()),
                   RESTORE_TIMEOUT_S)
    finally:
        reader.close()
    windows = []
    for (partition, key), value in latest.items():
        if value is None:
            continue
        try:
            windows.append(Window.from_record(serdes.guardrail_state.decode(value), partition))
        except SerdeError as exc:
            log.error("guardrail-state[%d] %r unreadable, skipped: %s", partition, key, exc.reason)
    return windows


def read_windows(settings: Settings, serdes: Serdes, campaign_id: str | None = None) -> list[Window]:
    """Every window on the changelog now (of one campaign): what the API and the tests show."""
    reader, ends = assign_all(settings, settings.topics.guardrail_state)
    latest: dict[bytes, tuple[int, bytes | None]] = {}
    try:
        read_until(reader, settings.topics.guardrail_state, ends,
                   lambda m: latest.__setitem__(m.key() or b"", (m.partition() or 0, m.value())))
    finally:
        reader.close()
    prefix = f"{campaign_id}/".encode() if campaign_id is not None else b""
    found = []
    for key, (partition, value) in latest.items():
        if value is None or not key.startswith(prefix):
            continue
        try:
            found.append(Window.from_record(serdes.guardrail_state.decode(value), partition))
        except SerdeError:
            continue
    return found
