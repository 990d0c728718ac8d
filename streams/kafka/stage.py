"""The consume / transaction / commit skeleton every transactional stage shares (the gate and
the dispatcher): a consumer group member with cooperative rebalancing, one Kafka transaction per
consumed batch holding the batch's outputs and its input offsets, and a rewind to the committed
offsets whenever a transaction is aborted, so the batch is redone and nothing is lost or doubled
between input and output.

Rebalances: partitions newly assigned are handed to ``prepare`` before any of their records is
processed (the stage makes its view of stops current, a dispatcher restores its ledger); a
partition revoked or lost goes to ``release`` from within the poll that revokes it, which only
happens between batches, so everything of it was committed by then.

A batch is redone for as long as the cluster is the reason it failed (a broker away). When a
record in it is the reason (``transactions.record_fault``: Kafka refuses what the record made,
for its size, say), redoing it would loop forever: after ``SETTLE_ATTEMPTS`` such failures the
stage settles the batch one record per transaction, and a record that fails that often alone is
dead-lettered (a dead letter always fits: ``streams.kafka.deadletter``), in a transaction with
its offset, and the stage goes on. A subclass opts in with ``settles_bad_records``; it reports a
failure through ``abort`` and ``commit``, as it does anyway, and counts such dead letters in
``dead_lettered_alone``."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from streams.kafka import transactions
from streams.kafka.clients import consumer, take
from streams.kafka.deadletter import dead_letter
from streams.kafka.exceptions import KafkaUnavailableError
from streams.kafka.lag import LagGauge
from streams.metrics import DEAD_LETTERED
from streams.settings import Settings

log = logging.getLogger(__name__)

# Failures a record may cause (see the module's note) before its batch is settled record by
# record, and before the record, alone, is dead-lettered.
SETTLE_ATTEMPTS = 3

PREPARE_RETRY_S = 1.0


class ControlSync(Protocol):
    """What a stage needs of the process's control feed (``streams.control.feed``)."""

    def sync(self) -> list[int]: ...

    def position(self) -> list[int]: ...

    def acknowledge_partitions(self, partitions: list[str], position: list[int]) -> None: ...


class TransactionalStage:
    """Subclasses implement ``process``; ``idle`` runs after every poll, ``closing`` at the end.
    ``feed``: the process's control feed, made current before a newly assigned partition is
    prepared, and told once it is (None: a stage run alone, e.g. in a test)."""

    settles_bad_records = False  # see the module's note

    def __init__(self, settings: Settings, source: str, group: str, process_id: str, what: str,
                 lag_name: str, feed: ControlSync | None = None, **consumer_config: Any) -> None:
        self.settings = settings
        self.source = source
        self.what = what
        self.feed = feed
        self.consumer = consumer(settings, **{
            "group.id": group,
            "client.id": process_id,
            "partition.assignment.strategy": "cooperative-sticky",
            **consumer_config,
        })
        self.transactions = transactions.TransactionalProducer(settings, f"{group}-{process_id}", what)
        self.lag = LagGauge(self.consumer, lag_name, [source], settings)
        self._revoked: set[int] = set()
        self._assigned: set[int] = set()  # assigned, not yet prepared
        # Prepared: their records may be processed. Rebound, never changed in place: the control
        # feed's thread reads it for acknowledgements.
        self.ready: frozenset[int] = frozenset()
        self.last_pass = time.monotonic()  # the loop's heartbeat, for the worker's /health
        self._settled = False  # the batch being processed was committed
        self._fault: str | None = None  # why it failed, when a record of it was the reason
        self._failures = 0  # consecutive failures a record caused
        self._alone_until: dict[int, int] = {}  # partition -> offset: one record per batch up to it

    def run(self, running: threading.Event) -> None:
        self.transactions.init()
        self.consumer.subscribe([self.source], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        self.lag.start()
        try:
            while running.is_set():
                self.last_pass = time.monotonic()
                limit = 1 if self._alone_until else self.batch_limit()
                messages = take(self.consumer, limit, self.settings.poll_timeout_s)
                if self._revoked:
                    messages = transactions.without_revoked(self.consumer, messages, self._revoked)
                    self._revoked.clear()
                if self._assigned:
                    self._prepare(running)
                if messages:
                    self._run_batch(messages, running)
                self.idle()
            self.before_close()
        finally:
            self.lag.close()
            self.consumer.close()  # revokes every partition: release() settles them
            self.closing()

    def process(self, messages: list[Message], running: threading.Event) -> None:
        raise NotImplementedError

    def _run_batch(self, messages: list[Message], running: threading.Event) -> None:
        """``process`` the batch; count the failures a record of it caused, and past
        ``SETTLE_ATTEMPTS`` settle it record by record, or dead-letter the one record."""
        self._settled, self._fault = False, None
        self.process(messages, running)
        if not self.settles_bad_records:
            return
        if self._settled:
            self._failures = 0
            for message in messages:
                end = self._alone_until.get(message.partition())  # type: ignore[arg-type]
                if end is not None and message.offset() + 1 >= end:  # type: ignore[operator]
                    del self._alone_until[message.partition()]  # type: ignore[arg-type]
            return
        if self._fault is None:
            return  # the cluster, not a record: the batch is redone as it is
        self._failures += 1
        if self._failures < SETTLE_ATTEMPTS:
            return
        self._failures = 0
        if len(messages) > 1:
            for message in messages:
                partition, offset = message.partition(), message.offset()
                if partition is not None and offset is not None:
                    self._alone_until[partition] = max(self._alone_until.get(partition, 0), offset + 1)
            log.warning("%s: a batch of %d records failed %d times (%s); settling it one record "
                        "at a time", self.source, len(messages), SETTLE_ATTEMPTS, self._fault)
            return
        self._dead_letter_alone(messages[0], self._fault)

    def _dead_letter_alone(self, message: Message, fault: str) -> None:
        """A record whose outputs Kafka refused ``SETTLE_ATTEMPTS`` times: its dead letter and its
        offset, in one transaction."""
        reason = f"Kafka refused what this record made {SETTLE_ATTEMPTS} times: {fault}"
        self.transactions.begin()
        try:
            dead_letter(self.transactions.producer, message, reason)
        except KafkaException as exc:
            self.abort(exc)
            return
        if self.commit({message.partition(): message.offset() + 1}):  # type: ignore[dict-item,operator]
            log.warning("%s: dead-lettered the record at partition %s offset %s: %s", self.source,
                        message.partition(), message.offset(), reason)
            DEAD_LETTERED.labels(self.source).inc()
            self.dead_lettered_alone()

    def dead_lettered_alone(self) -> None:
        """A record was dead-lettered by ``_dead_letter_alone``: for a subclass's own counts."""

    def batch_limit(self) -> int:
        """How many records the next batch may take."""
        return self.settings.batch_size

    def idle(self) -> None:
        """Between polls (the dispatcher applies its provider's receipts here)."""

    def _prepare(self, running: threading.Event) -> None:
        """Prepare what was assigned, again until it succeeds: a broker that is away or a
        leader that moves (a cluster losing a node) only delays it."""
        assigned = sorted(self._assigned)
        while running.is_set():
            try:
                if self.feed is not None:
                    self.feed.sync()  # every stop written before the assignment is in the view
                covered = self.prepare(assigned)
                break
            except (KafkaException, KafkaUnavailableError) as exc:
                log.warning("%s: partitions %s not ready yet: %s; trying again", self.what,
                            assigned, exc)
                time.sleep(PREPARE_RETRY_S)
        else:
            return
        self._assigned.difference_update(assigned)
        self.ready = self.ready | set(assigned)
        if self.feed is not None and covered is not None:
            self.feed.acknowledge_partitions([f"{self.source}:{p}" for p in assigned], covered)

    def prepare(self, partitions: list[int]) -> list[int] | None:
        """Partitions newly assigned, before the first of their records is processed; marks them
        ready and returns the control position they are covered to (see ``streams.control.feed``).
        A stage that reads the view for every record covers whatever the view holds once the
        partition is ready."""
        self.ready = self.ready | set(partitions)
        return self.feed.position() if self.feed is not None else None

    def release(self, partitions: list[int], lost: bool) -> None:
        """Partitions revoked (``lost``: taken away without a clean handover) from within the
        poll that revokes them."""

    def before_close(self) -> None:
        """On a clean shutdown, before the consumer leaves the group."""

    def closing(self) -> None:
        """After the consumer closed."""

    def ready_partitions(self) -> list[str]:
        """``topic:partition`` of every partition prepared here, for acknowledgements."""
        return [f"{self.source}:{p}" for p in sorted(self.ready)]

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned.update(tp.partition for tp in partitions)

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._dropped(partitions, lost=False)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._dropped(partitions, lost=True)

    def _dropped(self, partitions: list[TopicPartition], lost: bool) -> None:
        numbers = [tp.partition for tp in partitions]
        self._revoked.update(numbers)
        self._assigned.difference_update(numbers)
        self.ready = self.ready - set(numbers)
        for partition in numbers:  # their next owner finds a bad record on its own
            self._alone_until.pop(partition, None)
        self.release(numbers, lost)

    def commit(self, offsets: dict[int, int]) -> bool:
        """Commit the batch's transaction with its input offsets (partition -> next offset);
        False when it was aborted instead and the consumer rewound to redo the batch."""
        if self.transactions.commit([TopicPartition(self.source, p, o) for p, o in offsets.items()],
                                    self.consumer.consumer_group_metadata()):
            self._settled = True
            return True
        self._fault = transactions.record_fault(self.transactions.last_error)
        self.rewind()
        return False

    def abort(self, cause: KafkaException) -> None:
        """Abort the batch's transaction (e.g. a record expired while the broker was away, or
        Kafka refused a record it made) and rewind, so the batch is redone from its start."""
        self._fault = transactions.record_fault(cause)
        self.transactions.abort(cause)
        self.rewind()

    def rewind(self) -> None:
        transactions.rewind(self.consumer, self.settings.admin_timeout_s)
