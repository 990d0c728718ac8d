"""Publishing the provider stage's outcomes (deliveries, cancellations) from the dispatcher's
outbox to Kafka exactly once, across crashes.

The outbox and Kafka cannot commit together, so each report batch is made decidable:

* one process at a time publishes an outbox (an exclusive lock on a file next to it; the kernel
  releases it when the process dies, and another dispatcher of the channel, or the restarted
  one, takes over);
* it publishes with a transactional producer whose ``transactional.id`` belongs to the outbox,
  so a new publisher fences the old one and Kafka ends whatever transaction the old one left
  open before ``init_transactions`` returns;
* every batch is numbered in the outbox when claimed, and its transaction also commits that
  number as the offset of a marker consumer group (no member ever joins it);
* after a crash the new publisher compares the batch left claimed with the marker: committed
  means its events are on Kafka (marked reported, never published again), otherwise it is
  released and published in a new batch."""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Callable
from typing import IO, Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from streams.dispatch.outbox import Outbox, Outcome
from streams.faults import crash_point
from streams.kafka import transactions
from streams.kafka.clients import consumer, producer
from streams.settings import Settings

log = logging.getLogger(__name__)

# Turns an outcome into the record to publish: (topic, key, value, headers).
Render = Callable[[Outcome], tuple[str, bytes, bytes, Any]]


class ReceiptPublisher:
    def __init__(self, settings: Settings, channel: str, outbox: Outbox,
                 render: Render, published: Callable[[list[Outcome]], None]) -> None:
        self.settings = settings
        self.channel = channel
        self.outbox = outbox
        self.render = render
        self.published = published  # called with each batch once Kafka committed it
        self.transactional_id = (f"{settings.topics.dispatcher_group(channel)}-receipts-"
                                 f"{outbox.outbox_id}")
        self.marker = TopicPartition(settings.topics.dispatch(channel), 0)
        self._lock_path = outbox.path.with_name(f"{outbox.path.name}.publisher.lock")
        self._lock: IO[str] | None = None
        self._producer: Producer | None = None
        self._group: Consumer | None = None

    @property
    def active(self) -> bool:
        """This process publishes the outbox now."""
        return self._producer is not None

    def publish(self, limit: int) -> int:
        """Publish every outcome waiting in the outbox; 0 when another process publishes it."""
        if not self._acquire():
            return 0
        count = 0
        while True:
            batch, outcomes = self.outbox.claim(limit)
            if not outcomes:
                return count
            if not self._publish_batch(batch, outcomes):
                return count
            crash_point(self.settings, "receipts-committed")
            self.outbox.reported(batch)
            self.published(outcomes)
            count += len(outcomes)

    def close(self) -> None:
        if self._group is not None:
            self._group.close()
            self._group = None
        self._producer = None
        if self._lock is not None:
            self._lock.close()  # releases the lock
            self._lock = None

    # -- steps ---------------------------------------------------------------------------------

    def _acquire(self) -> bool:
        if self._producer is not None:
            return True
        if self._lock is None:
            handle = self._lock_path.open("a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                return False
            self._lock = handle
        timeout = self.settings.admin_timeout_s
        out = producer(self.settings, **{"transactional.id": self.transactional_id})
        try:
            # Fences an earlier publisher of this outbox; Kafka ends its open transaction first.
            transactions.retrying(lambda: out.init_transactions(timeout), "receipts: init")
        except KafkaException as exc:
            log.warning("dispatcher %s cannot publish receipts yet: %s", self.channel, exc)
            return False
        if self._group is None:
            self._group = consumer(self.settings, **{"group.id": self.transactional_id})
        self._producer = out
        try:
            self._settle()
        except KafkaException as exc:
            log.warning("dispatcher %s cannot settle its report batches yet: %s", self.channel, exc)
            self._producer = None
            return False
        log.info("dispatcher %s publishes the outcomes of its outbox", self.channel)
        return True

    def _settle(self) -> None:
        """Decide the batches a crashed publisher left claimed."""
        batches = self.outbox.unsettled()
        if not batches:
            return
        assert self._group is not None
        committed = self._group.committed([TopicPartition(self.marker.topic, self.marker.partition)],
                                          timeout=self.settings.admin_timeout_s)[0].offset
        for batch in batches:
            if committed >= batch:
                self.outbox.reported(batch)
                log.warning("dispatcher %s: report batch %d was committed before a crash; "
                            "not publishing it again", self.channel, batch)
            else:
                self.outbox.release(batch)
                log.warning("dispatcher %s: report batch %d was not committed before a crash; "
                            "publishing it again", self.channel, batch)

    def _publish_batch(self, batch: int, outcomes: list[Outcome]) -> bool:
        out = self._producer
        assert out is not None and self._group is not None
        what = f"dispatcher {self.channel} receipts"
        try:
            transactions.begin(out)
            for outcome in outcomes:
                topic, key, value, headers = self.render(outcome)
                transactions.produce(out, topic, key=key, value=value, headers=headers)
        except KafkaException as exc:
            return self._failed(batch, exc, what)
        marker = [TopicPartition(self.marker.topic, self.marker.partition, batch)]
        try:
            if transactions.commit(out, marker, self._group.consumer_group_metadata(),
                                   self.settings.admin_timeout_s, what):
                return True
        except KafkaException as exc:
            return self._failed(batch, exc, what)
        except transactions.WedgedProducerError as exc:
            # Unknown whether the batch committed: a new producer with the same transactional.id
            # fences this one, and the marker settles the batch.
            log.warning("%s: %s; starting over", what, exc)
            self._producer = None
            return False
        self.outbox.release(batch)  # aborted: nothing of it is visible; claimed again later
        return False

    def _failed(self, batch: int, exc: KafkaException, what: str) -> bool:
        try:
            transactions.abort(self._producer, exc, self.settings.admin_timeout_s, what)  # type: ignore[arg-type]
            self.outbox.release(batch)
        except (KafkaException, transactions.WedgedProducerError):
            # Unknown whether the batch committed: a new producer with the same transactional.id
            # fences this one, and the marker settles the batch.
            log.warning("%s: starting over after %s", what, exc)
            self._producer = None
        return False
