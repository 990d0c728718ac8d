"""The ledger's changelog topic, ``dispatch.<channel>.ledger`` (compacted by message id; partition
p holds the entries of partition p of ``dispatch.<channel>``), after Kafka Streams' state stores:

* restore: whoever is assigned a partition reads its changelog to the end (read_committed)
  before its first handoff from it; the local disk holds nothing the ledger needs;
* write: every change goes to the changelog in a Kafka transaction together with the outcome
  events it reports, the receipts checkpoint and the stage's input offsets, so the ledger, the
  events and the input never disagree. Every transaction commits offsets of the partitions the
  process holds: a process that lost them in a rebalance (a zombie) is fenced by the group
  coordinator and writes nothing;
* read: ``LedgerStats`` answers status, the demo and the tests from the topic itself."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from streams.dispatch.ledger import (
    ACCEPTED,
    CANCELLED,
    CHECKPOINT_KEY,
    REPORTED,
    SUBMITTING,
    UNCONFIRMED,
    Entry,
    Ledger,
    PartitionLedger,
    Pending,
)
from streams.dispatch.receipts import receipt_records
from streams.kafka.clients import consumer
from streams.kafka.deadletter import skip_unreadable
from streams.kafka.reader import high_watermark, read_topic, read_until
from streams.kafka.transactions import TransactionalProducer
from streams.serde import SerdeError, Serdes, serdes_for
from streams.settings import Settings

CHECKPOINT = CHECKPOINT_KEY.encode()
RESTORE_TIMEOUT_S = 120.0  # a dead owner's open transaction holds the read for up to 10 s


@dataclass(frozen=True)
class Restored:
    ledgers: list[PartitionLedger]
    records: int  # changelog records read
    seconds: float


def restore(settings: Settings, serdes: Serdes, channel: str, committed: dict[int, int]) -> Restored:
    """The ledger of each partition in ``committed`` (partition -> committed input offset),
    read from the changelog; reported entries whose request will not be read again are left
    out of memory."""
    started = time.monotonic()
    topic = settings.topics.ledger(channel)
    latest: dict[int, dict[bytes, bytes | None]] = {p: {} for p in committed}
    count = 0
    reader = consumer(settings, **{"fetch.wait.max.ms": 10})
    try:
        ends = {p: high_watermark(reader, TopicPartition(topic, p), settings.admin_timeout_s)
                for p in committed}
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in committed])

        def keep(message: Message) -> None:
            nonlocal count
            count += 1
            latest[message.partition() or 0][message.key() or b""] = message.value()

        read_until(reader, topic, ends, keep, RESTORE_TIMEOUT_S)
    finally:
        reader.close()
    ledgers = []
    for partition, records in latest.items():
        ledger = PartitionLedger(partition)
        for key, value in records.items():
            if value is None:
                continue
            try:
                if key == CHECKPOINT:
                    ledger.receipts_offset = serdes.ledger_checkpoint.decode(value)["receipts_offset"]
                    continue
                entry = Entry.from_record(serdes.ledger_entry.decode(value))
            except SerdeError as exc:
                skip_unreadable(topic, partition, None, f"ledger entry {key!r}: {exc.reason}")
                continue
            if entry.state != REPORTED or entry.input_offset >= committed[partition] \
                    or entry.outcome == UNCONFIRMED:
                ledger.put(entry)
            else:
                ledger.settle(entry.message_id, entry.campaign_id, entry.occurred_at or 0)
        ledgers.append(ledger)
    return Restored(ledgers, count, time.monotonic() - started)


class ChangelogWriter:
    """Commits the ledger's pending changes, with whatever else a transaction of the stage
    carries, through the stage's transactional producer. One transaction at a time (the
    ledger's lock): the dispatcher's thread and a stop hook on the control feed's thread both
    write."""

    def __init__(self, settings: Settings, serdes: Serdes, channel: str, ledger: Ledger,
                 transactions: TransactionalProducer, group_consumer: Consumer, source: str,
                 committed_outcomes: Callable[[list[Entry]], None]) -> None:
        self.settings = settings
        self.serdes = serdes
        self.channel = channel
        self.ledger = ledger
        self.transactions = transactions
        self.consumer = group_consumer
        self.topic = settings.topics.ledger(channel)
        self.receipts_topic = settings.topics.receipts(channel)
        self.partitions = 0  # of the receipts topic, set once known (routed receipts)
        self.committed: dict[int, int] = {}  # partition -> committed input offset (fencing)
        self.source = source  # who routes receipts (see streams.dispatch.receipts)
        self.committed_outcomes = committed_outcomes  # called with each transaction's outcomes
        self.last_error: KafkaException | None = None  # why the last transaction failed, if it did

    def flush(self, offsets: dict[int, int] | None = None,
              extra: Callable[[], None] | None = None) -> bool:
        """One transaction: the pending changes and events, ``extra`` (which produces through
        ``transactions``), and ``offsets`` (partition -> next input offset; the committed
        offsets of every partition held when None). True once committed; on False nothing of it
        is visible and the ledger's changes wait for the next transaction."""
        with self.ledger.lock:
            pending = self.ledger.take_pending()
            if not pending and offsets is None and extra is None:
                return True
            fence = {**self.committed, **(offsets or {})}
            self.last_error = None
            self.transactions.begin()
            try:
                self._produce(pending)
                if extra is not None:
                    extra()
            except KafkaException as exc:
                self.last_error = exc
                self.transactions.abort(exc)
                self.ledger.restore_pending(pending)
                return False
            topic = self.settings.topics.dispatch(self.channel)
            held = set(self.ledger.partitions)
            if not self.transactions.commit(
                    [TopicPartition(topic, p, o) for p, o in fence.items() if p in held],
                    self.consumer.consumer_group_metadata()):
                self.last_error = self.transactions.last_error
                self.ledger.restore_pending(pending)
                return False
            self.committed.update(offsets or {})
        reported = [change for key, change in pending.changes.items()
                    if change is not None and key in pending.events]
        if reported:
            self.committed_outcomes(reported)
        return True

    def _produce(self, pending: Pending) -> None:
        produce = self.transactions.produce
        encode = self.serdes.ledger_entry.encode
        for (partition, message_id), change in pending.changes.items():
            produce(self.topic, key=message_id.encode(), partition=partition,
                    value=None if change is None else encode(change.record()))
        for partition, offset in pending.checkpoints.items():
            produce(self.topic, key=CHECKPOINT, partition=partition,
                    value=self.serdes.ledger_checkpoint.encode({"receipts_offset": offset}))
        for topic, key, value, headers in pending.events.values():
            produce(topic, key=key, value=value, headers=headers)
        if pending.routed:
            for key, value, partition in receipt_records(self.serdes, self.channel, pending.routed,
                                                         self.source, self.partitions):
                produce(self.receipts_topic, key=key, value=value, partition=partition)


class LedgerStats:
    """Read-only questions status, the demo and the tests ask of a channel's ledger, answered
    from its changelog topic (every entry, whichever process owns it): each question reads what
    is committed now."""

    def __init__(self, settings: Settings, channel: str, serdes: Serdes | None = None) -> None:
        self.settings = settings
        self.topic = settings.topics.ledger(channel)
        self.serdes = serdes or serdes_for(settings)

    def _campaign(self, campaign_id: str) -> list[Entry]:
        latest: dict[bytes, bytes | None] = {}

        def keep(message: Message) -> None:
            if message.key() != CHECKPOINT:
                latest[message.key() or b""] = message.value()

        read_topic(self.settings, self.topic, keep)
        found = []
        for key, value in latest.items():
            if value is None:
                continue
            try:
                entry = Entry.from_record(self.serdes.ledger_entry.decode(value))
            except SerdeError as exc:
                skip_unreadable(self.topic, None, None, f"ledger entry {key!r}: {exc.reason}")
                continue
            if entry.campaign_id == campaign_id:
                found.append(entry)
        return found

    def handed(self, campaign_id: str) -> int:
        """Messages of the campaign a provider accepted (whatever became of them)."""
        return sum(1 for e in self._campaign(campaign_id) if e.handed_at is not None)

    def handed_after(self, campaign_id: str, at_ms: int) -> int:
        return sum(1 for e in self._campaign(campaign_id)
                   if e.handed_at is not None and e.handed_at > at_ms)

    def resubmitted(self, campaign_id: str) -> int:
        """Submissions beyond the first (retries, redeliveries after a crash): each is counted,
        none makes the provider hold a message twice."""
        return sum(e.attempts - 1 for e in self._campaign(campaign_id))

    def at_provider(self, campaign_id: str) -> int:
        """Messages the provider accepted (or may hold) that have no outcome yet."""
        return sum(1 for e in self._campaign(campaign_id) if e.state in (ACCEPTED, SUBMITTING))

    def message_ids(self, campaign_id: str) -> set[str]:
        return {e.message_id for e in self._campaign(campaign_id)}

    def cancelled(self, campaign_id: str) -> int:
        return sum(1 for e in self._campaign(campaign_id) if e.outcome == CANCELLED)

    def entries(self, campaign_id: str) -> list[Entry]:
        return self._campaign(campaign_id)
