"""Reading a whole topic to its end without a consumer group: the GlobalKTable pattern used by
the control view, the campaign table and the command line."""

from __future__ import annotations

import time
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from streams.kafka.clients import consumer, take
from streams.kafka.exceptions import KafkaUnavailableError
from streams.security.exceptions import AccessDeniedError
from streams.settings import Settings

# A partition without a leader yet (a topic created a moment ago, a broker (re)starting), or
# whose leader just went away (a broker of a cluster died: its connection is dropped, the request
# times out, until the controller has elected a new leader).
_NO_LEADER_YET = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                            KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._DESTROY_BROKER,
                            KafkaError._TRANSPORT, KafkaError._TIMED_OUT,
                            KafkaError.REQUEST_TIMED_OUT})
# One request to a leader that died may hang; ask again at least this often.
_ATTEMPT_S = 3.0


def high_watermark(reader: Consumer, partition: TopicPartition, timeout_s: float) -> int:
    """The partition's end offset from its leader, waiting up to ``timeout_s`` for one."""
    return watermarks(reader, partition, timeout_s)[1]


def watermarks(reader: Consumer, partition: TopicPartition, timeout_s: float) -> tuple[int, int]:
    """The partition's first and end offsets from its leader, waiting up to ``timeout_s`` for
    one."""
    deadline = time.monotonic() + timeout_s
    while True:
        attempt = max(0.1, min(_ATTEMPT_S, deadline - time.monotonic()))
        try:
            low, high = reader.get_watermark_offsets(partition, timeout=attempt, cached=False)
            return int(low), int(high)
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                raise AccessDeniedError(f"read {partition.topic}") from exc
            if exc.args[0].code() not in _NO_LEADER_YET or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def assign_all(settings: Settings, topic: str, **extra: object) -> tuple[Consumer, dict[int, int]]:
    """A consumer assigned every partition of ``topic`` from the beginning, and the end offsets
    (high watermarks) as of now: reading up to them means the past has been seen."""
    reader = consumer(settings, **extra)
    metadata = reader.list_topics(topic, timeout=settings.admin_timeout_s)
    info = metadata.topics.get(topic)
    refused = info is not None and info.error is not None
    if refused and info.error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
        reader.close()
        raise AccessDeniedError(f"read {topic}")
    if info is None or info.error is not None or not info.partitions:
        reader.close()
        raise KafkaUnavailableError(f"topic {topic} does not exist; run `estop topics create`")
    ends: dict[int, int] = {}
    for partition in info.partitions:
        ends[partition] = high_watermark(reader, TopicPartition(topic, partition),
                                         settings.admin_timeout_s)
    reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in info.partitions])
    return reader, ends


def read_until(reader: Consumer, topic: str, ends: dict[int, int],
               handle: Callable[[Message], None], timeout_s: float = 60.0) -> None:
    """Feed every record below ``ends`` to ``handle``; partitions already at their end are done."""
    remaining = {p for p, end in ends.items() if end > 0}
    deadline = time.monotonic() + timeout_s
    while remaining:
        if time.monotonic() > deadline:
            raise KafkaUnavailableError(f"could not read to the end of partitions {sorted(remaining)}")
        for message in take(reader, 10000, 0.5):
            if message.error():
                continue
            handle(message)
            offset, partition = message.offset(), message.partition()
            if offset is not None and partition is not None and offset + 1 >= ends.get(partition, 0):
                remaining.discard(partition)
        if remaining:
            # Compaction or aborted transactions can leave the last offsets without a record.
            for tp in reader.position([TopicPartition(topic, p) for p in remaining]):
                if tp.offset >= ends[tp.partition]:
                    remaining.discard(tp.partition)


def read_topic(settings: Settings, topic: str, handle: Callable[[Message], None]) -> None:
    """Read every record of ``topic`` present now, then stop."""
    reader, ends = assign_all(settings, topic)
    try:
        read_until(reader, topic, ends, handle)
    finally:
        reader.close()
