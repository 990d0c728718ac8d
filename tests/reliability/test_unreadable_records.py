"""An unreadable record where no stage could dead-letter it is counted
(``estop_unreadable_records_total{topic}``) and logged with where it is, never skipped silently:
the campaign-status reader behind `estop status`, `estop stop` and `estop relaunch`, and the
acknowledgements a stop waits for. Against the real broker."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import REGISTRY

from streams.campaigns.lifecycle import read_campaigns
from streams.control.stop import read_ack
from streams.serde import Serdes
from streams.settings import Settings
from tests.pipeline.support import records
from tests.support import produce

SERDES = Serdes()


def unreadable(topic: str) -> float:
    return REGISTRY.get_sample_value("estop_unreadable_records_total", {"topic": topic}) or 0.0


def status(campaign_id: str) -> bytes:
    return SERDES.campaign_status.encode({
        "campaign_id": campaign_id, "state": "Sending", "channels": ["email"],
        "planned": {"email": 10}, "queued": {}, "updated_at": 1, "stop": None})


def test_unreadable_campaign_statuses_are_counted_and_logged(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    topic = settings.topics.status
    produce(settings, topic, [
        (b"spring-sale", status("spring-sale")),
        (b"garbled", b"\x00not an avro record"),
        (b"autumn-sale", status("winter-sale")),  # names another campaign than its key
        (b"spring-sale", None),  # a tombstone: no status, and nothing unreadable
    ], partition=0)
    before = unreadable(topic)
    with caplog.at_level(logging.WARNING, logger="streams.kafka.deadletter"):
        campaigns = read_campaigns(settings, SERDES)
    assert set(campaigns) == {"spring-sale"}
    assert unreadable(topic) - before == 2
    skipped = [r.getMessage() for r in caplog.records if r.name == "streams.kafka.deadletter"]
    assert len(skipped) == 2, skipped
    assert skipped[0].startswith(f"skipped an unreadable record at {topic}[0]@1: ")
    assert skipped[1] == (f"skipped an unreadable record at {topic}[0]@2: campaign status of "
                          "'winter-sale' under the key 'autumn-sale'")


def test_an_unreadable_acknowledgement_is_counted_and_logged(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    topic = settings.topics.acks
    ack = SERDES.control_ack.encode({
        "process_id": "p-1", "roles": ["gate.email"], "command_id": "c-1", "campaign_id": "sale",
        "command_requested_at": 1, "applied_at": 2})
    produce(settings, topic, [(b"p-1", ack), (b"p-2", b"garbage"), (b"p-3", None)], partition=0)
    found = sorted(records(settings, topic), key=lambda m: m.offset() or 0)
    before = unreadable(topic)
    with caplog.at_level(logging.WARNING, logger="streams.kafka.deadletter"):
        acks = [read_ack(SERDES, message) for message in found]
    assert [a["process_id"] if a else None for a in acks] == ["p-1", None, None]
    assert unreadable(topic) - before == 2
    skipped = [r.getMessage() for r in caplog.records if r.name == "streams.kafka.deadletter"]
    assert [line.split(": ")[0] for line in skipped] == [
        f"skipped an unreadable record at {topic}[0]@1", f"skipped an unreadable record at {topic}[0]@2"]
    assert skipped[1].endswith(": empty value")
