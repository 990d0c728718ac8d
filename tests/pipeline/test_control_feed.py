"""The control feed against the real broker: the whole campaign-control topic is in the view
before bootstrap returns (before a process handles its first request), later commands are
applied as they arrive, and each applied command is acknowledged."""

from __future__ import annotations

import pytest
from confluent_kafka import TopicPartition

from streams.clock import now_ms
from streams.control.feed import ControlFeed
from streams.control.view import Applied, ControlView
from streams.kafka.clients import consumer, producer
from streams.kafka.reader import high_watermark
from streams.models import CHANNELS
from streams.serde import Serdes
from streams.settings import Settings
from tests.pipeline.support import records, wait_for

pytestmark = pytest.mark.broker


def stop_command(campaign_id: str, requested_at: int, action: str = "stop",
                 channels: list[str] | None = None) -> dict[str, object]:
    return {
        "command_id": f"cmd-{campaign_id}-{action}",
        "campaign_id": campaign_id,
        "action": action,
        "channels": channels or [],
        "reason": "wrong code",
        "requested_by": "ops",
        "requested_at": requested_at,
    }


def end_of(settings: Settings, topic: str) -> int:
    reader = consumer(settings)
    try:
        return high_watermark(reader, TopicPartition(topic, 0), 30)
    finally:
        reader.close()


def test_bootstrap_applies_every_command_before_it_returns_and_the_tail_keeps_up(
    settings: Settings, serdes: Serdes
) -> None:
    topic = settings.topics.control
    old, recent = 0, now_ms()
    campaigns = [f"c{i:03d}" for i in range(300)]
    out = producer(settings)
    for index, campaign in enumerate(campaigns):
        # Half of them are old: applied, but not acknowledged again by a fresh process.
        requested_at = old if index % 2 else recent
        out.produce(topic, key=campaign.encode(),
                    value=serdes.control_command.encode(stop_command(campaign, requested_at)))
    # Attempts to lift stops, and an unreadable record: counted, never applied.
    out.produce(topic, key=b"c000", value=None)
    out.produce(topic, key=b"c001", value=serdes.control_command.encode(
        stop_command("c001", recent, action="resume")))
    out.produce(topic, key=b"c002", value=b"not a command")
    assert out.flush(30) == 0

    view = ControlView()
    halted: list[str] = []

    def hook(applied: Applied) -> int:
        halted.append(applied.campaign_id)
        return 0

    feed = ControlFeed(settings, view, serdes, process_id="feed-under-test", roles=["gate.email"])
    feed.add_hook(hook)
    feed.held = lambda: ["send-requests.email:0"]
    try:
        feed.bootstrap()

        # Everything present before bootstrap is in force the moment it returns, and the
        # position says so: every record of the topic so far is below it.
        assert len(view) == len(campaigns)
        assert all(view.channels_stopped(c) == frozenset(CHANNELS) for c in campaigns)
        assert view.anomalies == 3
        assert feed.position() == [len(campaigns) + 3]
        # Only the recent stops run the hook (their acknowledgements carry its count); a stage
        # preparing a partition covers the old ones from the view.
        assert sorted(halted) == [c for i, c in enumerate(campaigns) if i % 2 == 0]

        feed.start()
        out.produce(topic, key=b"late", value=serdes.control_command.encode(
            stop_command("late", now_ms(), channels=["sms"])))
        assert out.flush(30) == 0
        # sync returns once everything written before it is applied, the hooks included (the
        # records after the start-up are the late stop and the stops the feed re-published).
        end = end_of(settings, topic)
        assert end > len(campaigns) + 3
        assert feed.sync() == [end]
        assert view.stopped("late", "sms") is not None
        assert "late" in halted
        assert view.stopped("late", "email") is None

        expected = {f"cmd-{c}-stop" for i, c in enumerate(campaigns) if i % 2 == 0} | {"cmd-late-stop"}

        def acked() -> set[str]:
            acks = [serdes.control_ack.decode(m.value()) for m in records(settings, settings.topics.acks)]
            assert all(a["process_id"] == "feed-under-test" and a["roles"] == ["gate.email"]
                       for a in acks)
            return {a["command_id"] for a in acks}

        wait_for(lambda: acked() >= expected, "acknowledgements of the recent commands")
        assert acked() == expected
        # The acknowledgement of the stop applied while tailing names what the process holds
        # and how far it applied campaign-control there.
        late = [serdes.control_ack.decode(m.value()) for m in records(settings, settings.topics.acks)
                if serdes.control_ack.decode(m.value())["command_id"] == "cmd-late-stop"]
        assert [(a["partitions"], a["control_offsets"]) for a in late] == [
            (["send-requests.email:0"], [end])]
    finally:
        feed.close()
