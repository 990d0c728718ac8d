"""The consume / transaction / commit skeleton every transactional stage shares (the gate and
the dispatcher): a consumer group member with cooperative rebalancing, one Kafka transaction per
consumed batch holding the batch's outputs and its input offsets, and a rewind to the committed
offsets whenever a transaction is aborted, so the batch is redone and nothing is lost or doubled
between input and output."""

from __future__ import annotations

import threading
import time
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from streams.kafka import transactions
from streams.kafka.clients import consumer, take
from streams.kafka.lag import LagGauge
from streams.settings import Settings


class TransactionalStage:
    """Subclasses implement ``process``; ``idle`` runs after every poll, ``closing`` at the end."""

    def __init__(self, settings: Settings, source: str, group: str, process_id: str, what: str,
                 lag_name: str, **consumer_config: Any) -> None:
        self.settings = settings
        self.source = source
        self.consumer = consumer(settings, **{
            "group.id": group,
            "client.id": process_id,
            "partition.assignment.strategy": "cooperative-sticky",
            **consumer_config,
        })
        self.transactions = transactions.TransactionalProducer(settings, f"{group}-{process_id}", what)
        self.lag = LagGauge(self.consumer, lag_name, [source], settings)
        self._revoked: set[int] = set()
        self.last_pass = time.monotonic()  # the loop's heartbeat, for the worker's /health

    def run(self, running: threading.Event) -> None:
        self.transactions.init()
        self.consumer.subscribe([self.source], on_revoke=self._on_revoke, on_lost=self._on_revoke)
        self.lag.start()
        try:
            while running.is_set():
                self.last_pass = time.monotonic()
                messages = take(self.consumer, self.batch_limit(), self.settings.poll_timeout_s)
                if self._revoked:
                    messages = transactions.without_revoked(self.consumer, messages, self._revoked)
                    self._revoked.clear()
                if messages:
                    self.process(messages, running)
                self.idle()
        finally:
            self.lag.close()
            self.consumer.close()
            self.closing()

    def process(self, messages: list[Message], running: threading.Event) -> None:
        raise NotImplementedError

    def batch_limit(self) -> int:
        """How many records the next batch may take."""
        return self.settings.batch_size

    def idle(self) -> None:
        """Between polls (the dispatcher publishes its provider's receipts here)."""

    def closing(self) -> None:
        """After the consumer closed."""

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._revoked.update(tp.partition for tp in partitions)

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
