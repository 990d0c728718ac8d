"""Bad records on every input topic of the workers: garbage bytes, an unknown schema fingerprint,
a valid record missing a required value (written with a reduced schema, cut short, or with an
empty id), an unknown channel, and an oversized record (> 512 KiB). Each lands in its dead-letter
topic with the reason in header ``estop.error``, is counted in
``estop_dead_lettered_records_total``, and the record after it is processed.

What the gate guarantees: it routes send requests by their ``campaign_id``/``channel`` headers
and checks only the Avro envelope (magic bytes, known fingerprint) of a record it passes, so a
record with a valid envelope and a broken body (cut short, an empty id) passes the gate and is
dead-lettered by the dispatcher into ``dispatch.<channel>.dlq``. Nothing unreadable ever
reaches a provider. ``campaign-control`` is covered by test_control_abuse.py."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fastavro
import pytest

from streams.campaigns.launcher import message_id
from streams.clock import now_ms
from streams.dispatch.changelog import LedgerStats
from streams.kafka.clients import Headers
from streams.models import CHANNELS, HEADER_CAMPAIGN, HEADER_CHANNEL
from streams.serde import Schema, Serde, Serdes
from streams.settings import Settings, Topics
from streams.sink.exceptions import UnknownCampaignError
from tests.reliability.support import (
    Fleet,
    header,
    read_all,
    report,
    send_request,
    wait_for,
    wait_outcomes,
)
from tests.support import metric, produce, produce_each

pytestmark = pytest.mark.broker

UNKNOWN_FINGERPRINT = 0x0123456789ABCDEF
OVERSIZED = "x" * (600 * 1024)  # > 512 KiB, < the broker's 1 MiB


@dataclass(frozen=True)
class Bad:
    kind: str
    value: bytes
    reason: str  # a substring of the estop.error header
    headers: Headers | None = None


def reduced(serde: Serde, record: dict[str, Any], dropped: str) -> bytes:
    """The record without a required field, written with that reduced schema (single-object
    encoding with its own fingerprint, which no reader knows)."""
    definition = {**serde.schema.definition,
                  "fields": [f for f in serde.schema.definition["fields"] if f["name"] != dropped]}
    schema = Schema(definition)
    body = {k: v for k, v in record.items() if k != dropped}
    from io import BytesIO

    out = BytesIO()
    out.write(b"\xc3\x01" + struct.pack("<Q", schema.fingerprint))
    fastavro.schemaless_writer(out, schema.parsed, body)
    return out.getvalue()


def bad_records(serde: Serde, record: dict[str, Any], empty: str, unknown_channel: dict[str, Any],
                big: str, dropped: str) -> list[Bad]:
    valid = serde.encode(record)
    return [
        Bad("garbage", b"\x00\x01 this is not avro", "not an Avro value"),
        Bad("unknown fingerprint", b"\xc3\x01" + struct.pack("<Q", UNKNOWN_FINGERPRINT) + valid[10:],
            f"unknown schema fingerprint {UNKNOWN_FINGERPRINT:016x}"),
        Bad("missing value: reduced schema", reduced(serde, record, dropped), "unknown schema fingerprint"),
        Bad("missing value: cut short", valid[:-3], f"corrupt {serde.schema.name} body"),
        Bad("missing value: empty id", serde.encode({**record, empty: ""}), f"empty {empty}"),
        Bad("unknown channel", serde.encode({**record, **unknown_channel}), "unknown channel 'fax'"),
        Bad("oversized", serde.encode({**record, big: OVERSIZED}), "record of"),
    ]


@dataclass
class Input:
    topic: str
    bad: list[Bad]
    valid: bytes
    valid_key: bytes
    headers: Headers | None
    processed: Callable[[], bool]  # the valid record after the bad ones was handled


def stored(campaign_id: str, check: Callable[[dict[str, Any]], bool],
           settings: Settings) -> Callable[[], bool]:
    def done() -> bool:
        try:
            return check(report(settings, campaign_id))
        except UnknownCampaignError:
            return False

    return done


def test_bad_records_on_every_input_topic_are_dead_lettered_and_the_next_is_processed(
    settings: Settings
) -> None:
    serdes = Serdes()
    topics = settings.topics
    now = now_ms()
    # A stop the sink stores, for the valid acknowledgement below to count on. It is old: the
    # worker applies it at start-up without acknowledging it itself.
    produce(settings, topics.control, [(b"dlq-ack", serdes.control_command.encode({
        "command_id": "dlq-cmd", "campaign_id": "dlq-ack", "action": "stop", "channels": [],
        "reason": "test", "requested_by": "test", "requested_at": 0}))])
    fleet = Fleet(settings, ESTOP_PROVIDER_RATE="5000", ESTOP_PROVIDER_DELAY_S="0.05")
    worker = fleet.start("worker")  # every gate, dispatcher and the sink, all four channels

    inputs: list[Input] = []
    for channel in CHANNELS:
        for stage, topic in (("gate", topics.send_requests(channel)),
                             ("dispatcher", topics.dispatch(channel))):
            campaign = f"dlq-{stage}"
            request = send_request(campaign, channel, 0)
            routing: Headers = [(HEADER_CAMPAIGN, campaign.encode()), (HEADER_CHANNEL, channel.encode())]
            bad = bad_records(serdes.send_request, request, "message_id", {"channel": "fax"}, "payload",
                              "recipient_id")
            # The engine's headers on every record; the one of another channel names it too.
            bad = [Bad(b.kind, b.value, b.reason,
                       [(HEADER_CAMPAIGN, campaign.encode()), (HEADER_CHANNEL, b"fax")]
                       if b.kind == "unknown channel" else routing) for b in bad]
            valid = serdes.send_request.encode(send_request(campaign, channel, 1))
            inputs.append(Input(topic, bad, valid, message_id(campaign, channel, 1).encode(), routing,
                                lambda: True))

    def sink_event(kind: str) -> dict[str, Any]:
        base = {"message_id": f"dlq-sink:email:{kind}", "campaign_id": "dlq-sink", "channel": "email",
                "recipient_id": "r00000001", "occurred_at": now}
        if kind == "sent":
            return {**base, "event": "message.sent", "handed_at": now}
        if kind == "notsent":
            return {**base, "event": "message.notSent", "stage": "provider", "reason": "stopped",
                    "stop_command_id": None, "stop_requested_at": None}
        return {**base, "event": "message.failed", "attempts": 3, "error": "provider error"}

    for kind, topic, serde, big in (("sent", topics.sent, serdes.sent, "recipient_id"),
                                    ("notsent", topics.notsent, serdes.not_sent, "reason"),
                                    ("failed", topics.failed, serdes.failed, "error")):
        event = sink_event(kind)
        inputs.append(Input(topic, bad_records(serde, event, "message_id", {"channel": "fax"}, big,
                                               "recipient_id"),
                            serde.encode(event), event["message_id"].encode(), None, lambda: True))
    status = {"campaign_id": "dlq-status", "state": "Sending", "channels": ["email"],
              "planned": {"email": 7}, "queued": {}, "updated_at": now, "stop": None}
    inputs.append(Input(topics.status, bad_records(
        serdes.campaign_status, status, "campaign_id", {"channels": ["fax"], "planned": {"fax": 7}},
        "state", "planned"), serdes.campaign_status.encode(status), b"dlq-status", None,
        stored("dlq-status", lambda r: r["total"] == 7, settings)))
    ack = {"process_id": "dlq-process", "roles": ["gate.email"], "command_id": "dlq-cmd",
           "campaign_id": "dlq-ack", "command_requested_at": 0, "applied_at": now, "halted": 0}
    inputs.append(Input(topics.acks, bad_records(
        serdes.control_ack, ack, "command_id", {"roles": ["gate.fax"]}, "process_id", "halted"),
        serdes.control_ack.encode(ack), b"dlq-cmd", None,
        stored("dlq-ack", lambda r: [s["acks"] for s in r["stops"]] == [1], settings)))

    try:
        for item in inputs:
            # One partition: the valid record comes after every bad one, in this order.
            produce_each(settings, item.topic,
                         [*((item.valid_key, one.value, one.headers) for one in item.bad),
                          (item.valid_key, item.valid, item.headers)], partition=0)

        # The valid records after the bad ones were processed, on every topic.
        for stage in ("gate", "dispatcher"):
            wait_outcomes(settings, f"dlq-{stage}", len(CHANNELS), check=fleet.check)
        wait_for(stored("dlq-sink", lambda r: r["accounted"] == 3 and r["failed"] == 1, settings),
                 "the valid sent, notSent and failed events after the bad ones to be stored")
        for item in inputs:
            wait_for(item.processed, f"the valid record on {item.topic} after the bad ones")

        # Each bad record is on its dead-letter topic with its reason. A gate passes a record
        # with a valid envelope whatever its body: the dispatcher dead-letters those.
        expected: dict[str, list[tuple[str, str, Bad]]] = {}
        passes_gate = {"missing value: cut short", "missing value: empty id"}
        for item in inputs:
            for one in item.bad:
                source = item.topic
                if source.startswith(topics.send_requests("")) and one.kind in passes_gate:
                    source = topics.dispatch(source.rsplit(".", 1)[1])
                expected.setdefault(source, []).append((item.topic, one.kind, one))
        for source, pool in expected.items():
            dlq = Topics.dead_letter(source)
            wait_for(lambda: len(read_all(settings, dlq)) >= len(pool),  # noqa: B023
                     f"{len(pool)} records on {dlq}")
            letters = read_all(settings, dlq)
            assert len(letters) == len(pool), dlq
            unmatched = list(pool)
            for letter in letters:
                error = header(letter, "estop.error") or ""
                assert header(letter, "estop.source.topic") == source
                match = next((entry for entry in unmatched if entry[2].reason in error and (
                    letter.value() == entry[2].value
                    # An oversized record keeps a sample: the original would not fit the topic.
                    or (len(entry[2].value) > 512 * 1024 and letter.value() == entry[2].value[:1024]))),
                    None)
                assert match is not None, f"{dlq}: unexpected dead letter ({error!r})"
                unmatched.remove(match)
                if match[0] == source:
                    assert header(letter, "estop.source.partition") == "0"
            assert unmatched == []
            # Counted, per source topic, by the process that dead-lettered them.
            wait_for(lambda: metric(worker.scrape(), "estop_dead_lettered_records_total",
                                    topic=source) == len(pool),  # noqa: B023
                     f"estop_dead_lettered_records_total{{topic={source!r}}} == {len(pool)}")
        fleet.check()  # and the worker is still running

        # Nothing unreadable reached a provider: each channel's provider got the valid requests.
        for stage in ("gate", "dispatcher"):
            assert {c: LedgerStats(settings, c).handed(f"dlq-{stage}") for c in CHANNELS} \
                == dict.fromkeys(CHANNELS, 1)
    finally:
        fleet.stop_all()
