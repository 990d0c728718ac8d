"""Errors are data: an unreadable record goes to ``<topic>.dlq`` with the reason in headers,
where a stage consumes it (gate, dispatcher, sink, receipts). A reader with no stage to
dead-letter from (a whole-topic read, a command waiting for acknowledgements, the control
plane's tables) counts it (``estop_unreadable_records_total``) and logs it: never a silent skip.

A dead letter always fits the dead-letter topic, whatever the record it stands for: a key,
headers or value larger than a data record may have are cut to a sample (and the header
``estop.truncated`` names what was cut), so a hostile record can never make the batch that
dead-letters it fail again and again."""

from __future__ import annotations

import logging

from confluent_kafka import Message, Producer

from streams.kafka.clients import Headers, RecordHeaders, headers_of
from streams.metrics import UNREADABLE
from streams.models import (
    HEADER_ERROR,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
    HEADER_TRUNCATED,
)
from streams.settings import Topics

log = logging.getLogger(__name__)

# A record larger than this is refused rather than forwarded (the broker default is 1 MiB).
MAX_RECORD_BYTES = 512 * 1024
# Headers of a data record: how many, and their names and values in total (the routing headers
# of a send request take well under 1 KiB). More is refused as a whole.
MAX_HEADERS = 16
MAX_HEADER_BYTES = 4096
# What a dead letter keeps of a key, a header value or a value that is too large.
KEY_SAMPLE = 256
HEADER_SAMPLE = 256
VALUE_SAMPLE = 1024
# What a dead letter keeps of its reason (an error message can quote what it refused).
REASON_MAX = 1024


def headers_size(headers: RecordHeaders) -> str | None:
    """Why a record's headers are refused (too many, too large in total), or None."""
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    if len(pairs) > MAX_HEADERS:
        return f"{len(pairs):,} headers (at most {MAX_HEADERS} allowed)"
    size = sum(len(name) + len(value or b"") for name, value in pairs)
    if size > MAX_HEADER_BYTES:
        return f"headers of {size:,} bytes (at most {MAX_HEADER_BYTES:,} allowed)"
    return None


def _sampled_headers(headers: Headers) -> tuple[Headers, bool]:
    """The record's headers, cut to what a dead letter keeps; whether anything was cut."""
    if headers_size(headers) is None:
        return headers, False
    kept: Headers = [(name[:HEADER_SAMPLE], value[:HEADER_SAMPLE] if value is not None else None)
                     for name, value in headers[:MAX_HEADERS]]
    return kept, True


def dead_letter(producer: Producer, message: Message, reason: str) -> None:
    topic = message.topic() or "unknown"
    headers, headers_cut = _sampled_headers(headers_of(message))
    key, value = message.key(), message.value()
    cut = [name for name, too_large in (("key", key is not None and len(key) > KEY_SAMPLE),
                                        ("headers", headers_cut),
                                        ("value", value is not None and len(value) > MAX_RECORD_BYTES))
           if too_large]
    if key is not None and len(key) > KEY_SAMPLE:
        key = key[:KEY_SAMPLE]
    if value is not None and len(value) > MAX_RECORD_BYTES:
        value = value[:VALUE_SAMPLE]  # keep a sample; the original would not fit the dead-letter topic
    headers += [
        (HEADER_ERROR, reason.encode()[:REASON_MAX]),
        (HEADER_SOURCE_TOPIC, topic.encode()),
        (HEADER_SOURCE_PARTITION, str(message.partition()).encode()),
        (HEADER_SOURCE_OFFSET, str(message.offset()).encode()),
    ]
    if cut:
        headers.append((HEADER_TRUNCATED, ",".join(cut).encode()))
    producer.produce(Topics.dead_letter(topic), value=value, key=key, headers=headers)


def skip_unreadable(topic: str, partition: int | None, offset: int | None, reason: str) -> None:
    """An unreadable record where there is no stage to dead-letter it: counted and logged (with
    where it is, so it can be looked at), then left out."""
    UNREADABLE.labels(topic).inc()
    log.warning("skipped an unreadable record at %s[%s]@%s: %s", topic, partition, offset, reason)


def skip_unreadable_message(message: Message, reason: str) -> None:
    """``skip_unreadable`` for a record as the Kafka client hands it over."""
    skip_unreadable(message.topic() or "unknown", message.partition(), message.offset(), reason)
