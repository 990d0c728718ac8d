"""The consume / transaction / commit skeleton every transactional stage shares (the gate and
the dispatcher): a consumer group member with cooperative rebalancing, one Kafka transaction per
consumed batch holding the batch's outputs and its input offsets, and a rewind to the committed
offsets whenever a transaction is aborted, so the batch is redone and nothing is lost or doubled
between input and output.

Rebalances: partitions newly assigned are handed to ``prepare`` before any of their records is
processed (the stage makes its view of stops current, a dispatcher restores its ledger); a
partition revoked or lost goes to ``release`` from within the poll that revokes it, which only
happens between batches, so everything of it was committed by then."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from streams.kafka import transactions
from streams.kafka.clients import consumer, take
from streams.kafka.exceptions import KafkaUnavailableError
from streams.kafka.lag import LagGauge
from streams.settings import Settings

log = logging.getLogger(__name__)

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

    def run(self, running: threading.Event) -> None:
        self.transactions.init()
        self.consumer.subscribe([self.source], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        self.lag.start()
        try:
            while running.is_set():
                self.last_pass = time.monotonic()
                messages = take(self.consumer, self.batch_limit(), self.settings.poll_timeout_s)
                if self._revoked:
                    messages = transactions.without_revoked(self.consumer, messages, self._revoked)
                    self._revoked.clear()
                if self._assigned:
                    self._prepare(running)
                if messages:
                    self.process(messages, running)
                self.idle()
            self.before_close()
        finally:
            self.lag.close()
            self.consumer.close()  # revokes every partition: release() settles them
            self.closing()

    def process(self, messages: list[Message], running: threading.Event) -> None:
        raise NotImplementedError

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
        self.release(numbers, lost)

    def commit(self, offsets: dict[int, int]) -> bool:
        """Commit the batch's transaction with its input offsets (partition -> next offset);
        False when it was aborted instead and the consumer rewound to redo the batch."""
        if self.transactions.commit([TopicPartition(self.source, p, o) for p, o in offsets.items()],
                                    self.consumer.consumer_group_metadata()):
            return True
        self.rewind()
        return False

    def abort(self, cause: KafkaException) -> None:
        """Abort the batch's transaction (e.g. a record expired while the broker was away) and
        rewind, so the batch is redone from its start."""
        self.transactions.abort(cause)
        self.rewind()

    def rewind(self) -> None:
        transactions.rewind(self.consumer, self.settings.admin_timeout_s)
