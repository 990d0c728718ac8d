"""Errors are data: an unreadable record goes to ``<topic>.dlq`` with the reason in headers."""

from __future__ import annotations

from confluent_kafka import Message, Producer

from streams.kafka.clients import headers_of
from streams.models import (
    HEADER_ERROR,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
)
from streams.settings import Topics

# A record larger than this is refused rather than forwarded (the broker default is 1 MiB).
MAX_RECORD_BYTES = 512 * 1024


def dead_letter(producer: Producer, message: Message, reason: str) -> None:
    topic = message.topic() or "unknown"
    headers = headers_of(message)
    headers += [
        (HEADER_ERROR, reason.encode()),
        (HEADER_SOURCE_TOPIC, topic.encode()),
        (HEADER_SOURCE_PARTITION, str(message.partition()).encode()),
        (HEADER_SOURCE_OFFSET, str(message.offset()).encode()),
    ]
    value = message.value()
    if value is not None and len(value) > MAX_RECORD_BYTES:
        value = value[:1024]  # keep a sample; the original would not fit the dead-letter topic
    producer.produce(Topics.dead_letter(topic), value=value, key=message.key(), headers=headers)
