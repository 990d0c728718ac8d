"""The control feed against the real broker: the whole campaign-control topic is in the view
before bootstrap returns (before a process handles its first request), later commands are
applied as they arrive, and each applied command is acknowledged."""

from __future__ import annotations

import pytest

from streams.clock import now_ms
from streams.control.feed import ControlFeed
from streams.control.view import Applied, ControlView
from streams.kafka.clients import producer
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

    started_with: list[int] = []

    def hook(applied: Applied) -> int:
        halted.append(applied.campaign_id)
        return 0

    def at_start() -> int:
        started_with.append(len(view))
        return 0

    feed = ControlFeed(settings, view, serdes, process_id="feed-under-test", roles=["gate.email"])
    feed.add_hook(hook, at_start)
    try:
        feed.bootstrap()

        # Everything present before bootstrap is in force the moment it returns.
        assert len(view) == len(campaigns)
        assert all(view.channels_stopped(c) == frozenset(CHANNELS) for c in campaigns)
        assert view.anomalies == 3
        # The recent stops run the hook (their acknowledgements carry its count); the start hook
        # runs once, with every stop in force, for all of them.
        assert sorted(halted) == [c for i, c in enumerate(campaigns) if i % 2 == 0]
        assert started_with == [len(campaigns)]

        feed.start()
        out.produce(topic, key=b"late", value=serdes.control_command.encode(
            stop_command("late", now_ms(), channels=["sms"])))
        assert out.flush(30) == 0
        wait_for(lambda: view.stopped("late", "sms") is not None, "the tail to apply a new stop")
        wait_for(lambda: "late" in halted, "the hook to run for a stop applied while tailing")
        assert started_with == [len(campaigns)]
        assert view.stopped("late", "email") is None

        expected = {f"cmd-{c}-stop" for i, c in enumerate(campaigns) if i % 2 == 0} | {"cmd-late-stop"}

        def acked() -> set[str]:
            acks = [serdes.control_ack.decode(m.value()) for m in records(settings, settings.topics.acks)]
            assert all(a["process_id"] == "feed-under-test" and a["roles"] == ["gate.email"]
                       for a in acks)
            return {a["command_id"] for a in acks}

        wait_for(lambda: acked() >= expected, "acknowledgements of the recent commands")
        assert acked() == expected
    finally:
        feed.close()
