"""Where the control service must have read to before it answers: the source topics' partition
counts, the offset of the last record present at start-up, and what its group committed.
Blocking confluent-kafka calls; the app runs them on a worker thread."""

from __future__ import annotations

import time

from confluent_kafka import TopicPartition

from streams.kafka.clients import admin, consumer, take
from streams.kafka.exceptions import KafkaUnavailableError
from streams.settings import Settings

TP = tuple[str, int]

# How far back from the end the last record is looked for: only transaction markers or
# compacted-away records sit between it and the high watermark.
TAIL = 1000


def partition_counts(settings: Settings, topics: list[str]) -> dict[str, int]:
    """Partitions of each topic; a missing topic is an error naming the fix."""
    with admin(settings) as client:
        metadata = client.list_topics(timeout=settings.admin_timeout_s)
    missing = [t for t in topics if t not in metadata.topics or not metadata.topics[t].partitions]
    if missing:
        raise KafkaUnavailableError(f"topic(s) {', '.join(missing)} do not exist; "
                                    "run `estop topics create`")
    return {t: len(metadata.topics[t].partitions) for t in topics}


def last_record_offsets(settings: Settings, topics: list[str]) -> dict[TP, int]:
    """Offset of the last record of every partition as of now, -1 for an empty partition."""
    reader = consumer(settings, **{"isolation.level": "read_uncommitted"})
    try:
        last: dict[TP, int] = {}
        ends: dict[TP, int] = {}
        assignment = []
        for topic in topics:
            metadata = reader.list_topics(topic, timeout=settings.admin_timeout_s)
            for partition in metadata.topics[topic].partitions:
                low, high = reader.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=settings.admin_timeout_s, cached=False)
                last[(topic, partition)] = -1
                if high > low:
                    ends[(topic, partition)] = high
                    assignment.append(TopicPartition(topic, partition, max(low, high - TAIL)))
        if not assignment:
            return last
        reader.assign(assignment)
        remaining = set(ends)
        deadline = time.monotonic() + settings.admin_timeout_s * 4
        while remaining:
            if time.monotonic() > deadline:
                raise KafkaUnavailableError(f"could not read the end of {sorted(remaining)}")
            for message in take(reader, 10000, 0.2):
                name, partition, offset = message.topic(), message.partition(), message.offset()
                if message.error() or name is None or partition is None or offset is None:
                    continue
                tp = (name, partition)
                if tp in ends and offset < ends[tp]:
                    last[tp] = max(last[tp], offset)
            for position in reader.position([TopicPartition(t, p) for t, p in remaining]):
                tp = (str(position.topic), int(position.partition))
                if position.offset >= ends[tp]:
                    remaining.discard(tp)
        return last
    finally:
        reader.close()


def committed_offsets(settings: Settings, group: str, partitions: list[TP]) -> dict[TP, int]:
    """The group's committed offsets (-1 where it has none). Fetching offsets does not join
    the group."""
    if not partitions:
        return {}
    reader = consumer(settings, **{"group.id": group})
    try:
        found = reader.committed([TopicPartition(t, p) for t, p in partitions],
                                 timeout=settings.admin_timeout_s)
        return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else -1 for tp in found}
    finally:
        reader.close()
