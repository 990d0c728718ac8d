"""Bad input never stops the pipeline: an unreadable record on a gate's or a dispatcher's input
lands in that input's dead-letter topic with the reason, and the record after it is processed."""

from __future__ import annotations

import struct

import pytest

from streams.models import (
    HEADER_ERROR,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
)
from streams.serde import Serdes
from streams.settings import Settings
from tests.pipeline.support import (
    Workers,
    header,
    produce_values,
    read_events,
    records,
    send_request,
    wait_for,
    wait_outcomes,
)

pytestmark = pytest.mark.broker

UNKNOWN_FINGERPRINT = 0x0123456789ABCDEF


def bad_values(serdes: Serdes, campaign_id: str) -> list[tuple[bytes, str]]:
    """Unreadable values and the reason each must be dead-lettered with."""
    body = serdes.send_request.encode(send_request(campaign_id, "email", 0))[10:]
    unknown = b"\xc3\x01" + struct.pack("<Q", UNKNOWN_FINGERPRINT) + body
    wrong_channel = serdes.send_request.encode({**send_request(campaign_id, "sms", 1), "channel": "sms"})
    return [
        (b"this is not avro at all", "not an Avro value"),
        (unknown, f"unknown schema fingerprint {UNKNOWN_FINGERPRINT:016x}"),
        (wrong_channel, "channel 'sms' on the email topic"),
    ]


@pytest.mark.parametrize("stage", ["gate", "dispatcher"])
def test_garbage_goes_to_the_dead_letter_topic_and_the_next_record_is_processed(
    settings: Settings, serdes: Serdes, workers: Workers, stage: str
) -> None:
    topics = settings.topics
    source = topics.send_requests("email") if stage == "gate" else topics.dispatch("email")
    campaign = f"dlq-{stage}"
    bad = bad_values(serdes, campaign)
    valid = send_request(campaign, "email", 2)
    workers.start("--role", "gate", "--role", "dispatcher", "--channel", "email", rate=5000,
                  delay_s=0.1)

    # Everything on one partition, in order: the valid request comes after the bad ones.
    produce_values(settings, source, [v for v, _ in bad] + [serdes.send_request.encode(valid)],
                   partition=0)
    wait_outcomes(settings, campaign, 1)

    events = read_events(settings, serdes, campaign)
    assert [(e.kind, e.message_id) for e in events] == [("sent", valid["message_id"])]
    dlq = topics.dead_letter(source)
    wait_for(lambda: len(records(settings, dlq)) >= len(bad), f"{len(bad)} records on {dlq}")
    letters = records(settings, dlq)
    assert len(letters) == len(bad)
    for offset, (letter, (value, reason)) in enumerate(zip(letters, bad, strict=True)):
        assert letter.value() == value
        error = header(letter, HEADER_ERROR)
        assert error is not None and reason in error
        assert header(letter, HEADER_SOURCE_TOPIC) == source
        assert header(letter, HEADER_SOURCE_PARTITION) == "0"
        assert header(letter, HEADER_SOURCE_OFFSET) == str(offset)
    if stage == "gate":
        # Nothing unreadable was forwarded: the dispatch topic holds the valid request only.
        forwarded = records(settings, topics.dispatch("email"))
        assert [serdes.send_request.decode(m.value())["message_id"] for m in forwarded] == [
            valid["message_id"]]
