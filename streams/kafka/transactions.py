"""Kafka transactions that survive what Kafka itself recovers from.

A call that times out (a broker restarting, a coordinator moving) is retried until it succeeds;
a transaction that must be aborted (a rebalance fenced its offsets, a record expired) is aborted
and reported as such, so the caller rewinds and redoes its batch; a producer that Kafka fenced
(its transaction outlived ``transaction.timeout.ms`` while the broker was away, and the
coordinator aborted it) is replaced by a new one, and the batch is redone too.

librdkafka 2.16 can block ``send_offsets_to_transaction`` forever after the only broker
restarted (it keeps waiting on the group coordinator it knew before: librdkafka issue #5511).
Every transactional call therefore runs with a bound; a producer wedged past it is abandoned
(its transaction is never committed, so Kafka aborts it) and replaced, and the batch redone."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from streams.kafka.clients import Headers, producer
from streams.kafka.exceptions import WedgedProducerError
from streams.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

# A producer's open transaction blocks read_committed consumers of its partitions, and its
# offsets block the next owner of its input, until it ends. A killed process never ends it: the
# broker aborts it after this long. Transactions here last well under a second.
TRANSACTION_TIMEOUT_MS = 10000
# How much longer than its own timeout a transactional call may take before its producer is
# considered wedged; send_offsets_to_transaction, the call that wedges, answers within
# milliseconds even when the broker is away (a transport error), so it gets a flat bound.
WEDGED_AFTER_S = 5.0
RETRY_BACKOFF_MS = 10
SEND_OFFSETS_BOUND_S = 10.0


def bounded(call: Callable[[], T], limit_s: float, what: str) -> T:
    """Run ``call`` on a helper thread and wait at most ``limit_s`` for it."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = call()
        except BaseException as exc:  # handed to the caller
            result["error"] = exc

    helper = threading.Thread(target=run, name=f"txn-call {what}", daemon=True)
    helper.start()
    helper.join(limit_s)
    if helper.is_alive():
        raise WedgedProducerError(f"{what} did not return within {limit_s:.0f}s")
    if "error" in result:
        raise result["error"]
    return result.get("value")  # type: ignore[return-value]


# What a cluster reports while a coordinator or a leader moves to another broker (the one that
# held it died): librdkafka does not flag all of these retriable, yet each ends once the
# controller has elected a new one.
MOVING = frozenset({KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE,
                    KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.NOT_LEADER_FOR_PARTITION,
                    KafkaError.LEADER_NOT_AVAILABLE, KafkaError._TRANSPORT, KafkaError._TIMED_OUT,
                    KafkaError.REQUEST_TIMED_OUT})


# What Kafka answers when a record itself is the problem (its size, its contents): the batch that
# holds it fails the same way every time, while the cluster is fine.
RECORD_FAULTS = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE,
                           KafkaError.INVALID_RECORD, KafkaError.INVALID_TIMESTAMP,
                           KafkaError.INVALID_MSG_SIZE})


def record_fault(error: BaseException | None) -> str | None:
    """Why a transaction failed, when a record it held made it fail (``RECORD_FAULTS``); None
    when the cause is elsewhere (a broker away, a rebalance): redoing the batch will do then."""
    if not isinstance(error, KafkaException) or not error.args:
        return None
    cause = error.args[0]
    if not isinstance(cause, KafkaError) or cause.code() not in RECORD_FAULTS:
        return None
    return f"{cause.name()}: {cause.str()}"


def retrying(call: Callable[[], T], what: str, pause_s: float = 0.5) -> T:
    """Run a transactional call, again while it fails with a retriable error (or one of a
    coordinator or leader moving)."""
    while True:
        try:
            return call()
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.fatal() or error.txn_requires_abort() or not (
                    error.retriable() or error.code() in MOVING):
                raise
            log.warning("%s: %s; retrying", what, error)
            time.sleep(pause_s)


class TransactionalProducer:
    """A transactional producer for one stage of one channel in one process: each batch is one
    transaction holding its outputs and its input offsets."""

    def __init__(self, settings: Settings, transactional_id: str, what: str) -> None:
        self.settings = settings
        self.base_id = transactional_id
        self.what = what
        self.producer: Producer = self._new()
        self.last_error: KafkaException | None = None  # why the last commit failed, if it did

    def _new(self) -> Producer:
        return producer(self.settings, **{
            # A fresh id per producer: a replacement never waits on what it replaces.
            "transactional.id": f"{self.base_id}-{uuid.uuid4().hex[:8]}",
            "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
            # A transaction begun right after the last one's commit meets CONCURRENT_TRANSACTIONS
            # until the coordinator wrote the last one's markers; the default backoff (100 ms)
            # would stall every back-to-back transaction that long (KAFKA-5477: Java uses 20 ms).
            "retry.backoff.ms": RETRY_BACKOFF_MS,
        })

    def init(self) -> None:
        timeout = self.settings.admin_timeout_s
        retrying(lambda: self.producer.init_transactions(timeout), f"{self.what}: init")

    def begin(self) -> None:
        try:
            retrying(self.producer.begin_transaction, f"{self.what}: begin")
        except KafkaException as exc:
            if not exc.args[0].fatal():
                raise
            self._replace(exc)
            retrying(self.producer.begin_transaction, f"{self.what}: begin")

    def produce(self, topic: str, **record: Any) -> None:
        """Produce, waiting for room when the local queue is full."""
        while True:
            try:
                self.producer.produce(topic, **record)
                return
            except BufferError:
                self.producer.poll(0.05)

    def produce_all(self, topic: str, records: Iterable[tuple[bytes, bytes]], headers: Headers) -> None:
        """Many records (key, value) with one header list: a held-back drain's loop, one C call
        per record."""
        produce = self.producer.produce
        for key, value in records:
            try:
                produce(topic, value, key, headers=headers)
            except BufferError:
                self.produce(topic, value=value, key=key, headers=headers)

    def commit(self, offsets: list[TopicPartition], group_metadata: Any) -> bool:
        """Send the offsets and commit the open transaction: True once committed; False when it
        had to be aborted instead (nothing of it is visible to read_committed consumers)."""
        timeout = self.settings.admin_timeout_s
        limit = timeout + WEDGED_AFTER_S
        out = self.producer
        self.last_error = None
        try:
            if offsets:
                retrying(lambda: bounded(
                    lambda: out.send_offsets_to_transaction(offsets, group_metadata, timeout),
                    SEND_OFFSETS_BOUND_S, f"{self.what}: send offsets"), f"{self.what}: send offsets")
            retrying(lambda: bounded(lambda: out.commit_transaction(timeout), limit,
                                     f"{self.what}: commit"), f"{self.what}: commit")
            return True
        except KafkaException as exc:
            self.last_error = exc
            self.abort(exc)
            return False
        except WedgedProducerError as exc:
            # Never committed: Kafka aborts that transaction after transaction.timeout.ms.
            log.warning("%s: %s; abandoning the producer", self.what, exc)
            self.producer = self._new()
            self.init()
            return False

    def abort(self, cause: KafkaException) -> None:
        """End the open transaction after ``cause`` without committing it."""
        if cause.args[0].fatal():
            self._replace(cause)
            return
        log.warning("%s aborts a transaction: %s", self.what, cause.args[0])
        timeout = self.settings.admin_timeout_s
        out = self.producer
        try:
            retrying(lambda: bounded(lambda: out.abort_transaction(timeout), timeout + WEDGED_AFTER_S,
                                     f"{self.what}: abort"), f"{self.what}: abort")
        except KafkaException as exc:
            if not exc.args[0].fatal():
                raise
            self._replace(exc)
        except WedgedProducerError as exc:
            log.warning("%s: %s; abandoning the producer", self.what, exc)
            self.producer = self._new()
            self.init()

    def _replace(self, cause: KafkaException) -> None:
        # Kafka fenced this producer, e.g. the coordinator aborted its transaction when it
        # outlived transaction.timeout.ms while the broker was away: nothing of that transaction
        # is visible. A new producer takes over; the caller redoes the batch.
        log.warning("%s: %s; replacing the transactional producer", self.what, cause.args[0])
        self.producer = self._new()
        self.init()


def without_revoked(source: Consumer, messages: list[Message], revoked: set[int]) -> list[Message]:
    """Drop the records of partitions revoked (or lost) while this batch was fetched: their
    owner now starts from the committed offsets, so they are its to process. A partition that
    came back to this consumer in the same poll is sought back to its first dropped record, or
    this consumer would skip them."""
    kept: list[Message] = []
    first: dict[tuple[str, int], int] = {}
    for message in messages:
        partition = message.partition()
        if partition not in revoked:
            kept.append(message)
            continue
        key = (message.topic() or "", partition or 0)
        offset = message.offset()
        if offset is not None and (key not in first or offset < first[key]):
            first[key] = offset
    if first:
        assigned = {(tp.topic, tp.partition) for tp in source.assignment()}
        for (topic, partition), offset in first.items():
            if (topic, partition) in assigned:
                source.seek(TopicPartition(topic, partition, offset))
    return kept


def rewind(source: Consumer, timeout_s: float) -> None:
    """Seek every assigned partition back to its committed offset, after an aborted batch; a
    partition with no committed offset yet goes back to its beginning (auto.offset.reset is
    earliest), or the aborted batch's records would be skipped."""
    committed = retrying(lambda: source.committed(source.assignment(), timeout=timeout_s),
                         "rewind: committed offsets")
    for tp in committed:
        if tp.offset < 0:
            tp.offset = OFFSET_BEGINNING
        source.seek(tp)


# -- plain functions, for a producer with a transactional.id of its own (receipts) -------------


def begin(out: Producer) -> None:
    retrying(out.begin_transaction, "begin transaction")


def commit(out: Producer, offsets: list[TopicPartition], group_metadata: Any, timeout_s: float,
           what: str) -> bool:
    """Send the offsets and commit the open transaction: True once committed; False when it had
    to be aborted instead. A fatal error is raised (the caller owns the transactional.id)."""
    limit = timeout_s + WEDGED_AFTER_S
    try:
        if offsets:
            retrying(lambda: bounded(
                lambda: out.send_offsets_to_transaction(offsets, group_metadata, timeout_s),
                SEND_OFFSETS_BOUND_S, f"{what}: send offsets"), f"{what}: send offsets")
        retrying(lambda: bounded(lambda: out.commit_transaction(timeout_s), limit, f"{what}: commit"),
                 f"{what}: commit")
        return True
    except KafkaException as exc:
        abort(out, exc, timeout_s, what)
        return False


def abort(out: Producer, cause: KafkaException, timeout_s: float, what: str) -> None:
    """Abort the open transaction after ``cause``; raises ``cause`` when it is fatal."""
    error: KafkaError = cause.args[0]
    if error.fatal():
        raise cause
    log.warning("%s aborts a transaction: %s", what, error)
    retrying(lambda: bounded(lambda: out.abort_transaction(timeout_s), timeout_s + WEDGED_AFTER_S,
                             f"{what}: abort"), f"{what}: abort")


def produce(out: Producer, topic: str, **record: Any) -> None:
    """Produce, waiting for room when the local queue is full."""
    while True:
        try:
            out.produce(topic, **record)
            return
        except BufferError:
            out.poll(0.05)
