"""Committing and aborting Kafka transactions without dying on what Kafka itself recovers from.

A call that times out (a broker restarting, a coordinator moving) is retried until it succeeds;
a transaction that must be aborted (a rebalance fenced its offsets, a record expired) is aborted
and reported as such, so the caller rewinds and redoes its batch; only a fatal error (this
producer was fenced by a newer one with the same transactional.id) is raised."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

log = logging.getLogger(__name__)

T = TypeVar("T")

# A producer's open transaction blocks read_committed consumers of its partitions, and its
# offsets block the next owner of its input, until it ends. A killed process never ends it: the
# broker aborts it after this long. Transactions here last well under a second.
TRANSACTION_TIMEOUT_MS = 10000


def retrying(call: Callable[[], T], what: str, pause_s: float = 0.5) -> T:
    """Run a transactional call, again while it fails with a retriable error."""
    while True:
        try:
            return call()
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.fatal() or error.txn_requires_abort() or not error.retriable():
                raise
            log.warning("%s: %s; retrying", what, error)
            time.sleep(pause_s)


def begin(producer: Producer) -> None:
    retrying(producer.begin_transaction, "begin transaction")


def commit(producer: Producer, offsets: list[TopicPartition], group_metadata: Any,
           timeout_s: float, what: str) -> bool:
    """Send the offsets and commit the open transaction: True once committed; False when it had
    to be aborted instead (nothing of it is visible to read_committed consumers)."""
    try:
        if offsets:
            retrying(lambda: producer.send_offsets_to_transaction(offsets, group_metadata, timeout_s),
                     f"{what}: send offsets")
        retrying(lambda: producer.commit_transaction(timeout_s), f"{what}: commit")
        return True
    except KafkaException as exc:
        abort(producer, exc, timeout_s, what)
        return False


def abort(producer: Producer, cause: KafkaException, timeout_s: float, what: str) -> None:
    """Abort the open transaction after ``cause``; raises ``cause`` when it is fatal."""
    error: KafkaError = cause.args[0]
    if error.fatal():
        raise cause
    log.warning("%s aborts a transaction: %s", what, error)
    retrying(lambda: producer.abort_transaction(timeout_s), f"{what}: abort")


def produce(producer: Producer, topic: str, **record: Any) -> None:
    """Produce, waiting for room when the local queue is full."""
    while True:
        try:
            producer.produce(topic, **record)
            return
        except BufferError:
            producer.poll(0.05)


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
