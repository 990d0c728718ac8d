"""The provider stage scaled out on SMS (SMPP to the stand-in SMSC) and web push (the stand-in
push service): three dispatchers, each with its own data folder; one scaled down, one
SIGKILLed, one added, then a stop (tests/scale_out.py). What the ones that are gone had handed
over is cancelled at the provider by the ones that hold their partitions now."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.campaigns.launcher import launch, recipient_id
from streams.control.stop import issue_stop
from streams.lab.standins.local import LocalStandIns, Pace
from streams.lab.standins.pushservice import DELETED, STORED
from streams.lab.standins.smsc import CANCELLED, HELD
from streams.models import STATE_FINISHED
from streams.serde import Serdes
from streams.settings import Settings
from streams.sink.report import campaign_report
from streams.sink.store import open_store
from tests.pipeline.support import records
from tests.reliability.support import assert_exact, wait_for
from tests.scale_out import ScaleOut, stop_a_scaled_out_campaign
from tests.support import holders, partition_holders

pytestmark = pytest.mark.broker

PLANNED = 900
# The SMSC holds every message for a minute, the browsers stay away for ten: a stop finds the
# whole campaign at the provider.
PACE = Pace(sms_hold_s=60.0, webpush_connect_every_s=600.0, webpush_ttl_s=900)
ENV = {"ESTOP_PROVIDER_RATE": "600", "ESTOP_BATCH_SIZE": "100"}


def acks(settings: Settings, serdes: Serdes) -> list[dict[str, Any]]:
    return [serdes.control_ack.decode(m.value()) for m in records(settings, settings.topics.acks)]


@pytest.fixture
def held_long(tmp_path: Path) -> Iterator[LocalStandIns]:
    started = LocalStandIns(tmp_path / "stand-ins", ["sms", "webpush"],
                            [recipient_id(i) for i in range(PLANNED)], PACE).start()
    try:
        yield started
    finally:
        started.stop()


@pytest.mark.parametrize("channel", ["sms", "webpush"])
def test_a_dispatcher_scaled_down_one_killed_one_added_then_a_stop_leaks_nothing(
        channel: str, settings: Settings, serdes: Serdes, held_long: LocalStandIns,
        tmp_path: Path) -> None:
    campaign = f"scaled-{channel}"
    held_state, dropped_state = (HELD, CANCELLED) if channel == "sms" else (STORED, DELETED)
    server = held_long.smsc if channel == "sms" else held_long.push_service
    assert server is not None

    def states() -> dict[str, int]:
        return server.states(campaign)

    def held() -> int:
        return states().get(held_state, 0)

    release: Callable[[], None] = (held_long.push_service.connect_all
                                   if channel == "webpush" and held_long.push_service else lambda: None)
    scale = ScaleOut(settings, channel, tmp_path / "pods", {**held_long.env(), **ENV})
    try:
        result, events, found = stop_a_scaled_out_campaign(
            scale, serdes, campaign, PLANNED, lambda: sum(states().values()), held, release)
    finally:
        scale.fleet.stop_all()

    # Counted where the messages arrive: not one after the confirmation; every one that arrived
    # (a browser that happened to connect before the stop) is reported sent, and only those.
    arrivals = held_long.arrivals(channel)
    assert arrivals.count(campaign, after_ms=result.confirmed_at_ms) == 0
    assert arrivals.count(campaign) == len(events.sent)
    # The report is exact and agrees with what the provider says it dropped: all the rest.
    store = open_store(settings)
    try:
        report = campaign_report(store, campaign)["by_channel"][channel]
    finally:
        store.close()
    assert report["cancelled_at_provider"] == states().get(dropped_state, 0)
    assert report["cancelled_at_provider"] + report["sent"] == found["accounted"] == PLANNED


def test_a_stop_during_a_rebalance_waits_for_the_moved_partitions(
        settings: Settings, serdes: Serdes, held_long: LocalStandIns, tmp_path: Path) -> None:
    """One SMS dispatcher handed the whole campaign to the SMSC; a second one joins, and while
    the partitions that move to it are being prepared (it has restored their ledger, not yet
    cancelled anything), the stop is written. The stop is not confirmed before the new holder
    applied it on those partitions: its acknowledgement of them comes before the confirmation.
    Nothing arrives after the confirmation, and every message has one outcome."""
    campaign, channel = "rebalanced-sms", "sms"
    smsc = held_long.smsc
    assert smsc is not None
    scale = ScaleOut(settings, channel, tmp_path / "pods", {**held_long.env(), **ENV})
    try:
        scale.start_front()
        first = scale.start_dispatcher("dispatcher-1")
        wait_for(lambda: holders(settings, "dispatcher", channel) == {first.process_id},
                 "the first dispatcher to hold every partition")
        assert launch(settings, serdes, campaign, [channel], PLANNED).state == STATE_FINISHED
        wait_for(lambda: sum(smsc.states(campaign).values()) == PLANNED,
                 "every message at the SMSC")

        scale.fleet.env["ESTOP_PAUSE_AT"] = "dispatcher-restored:6"
        second = scale.start_dispatcher("dispatcher-2")
        scale.fleet.env.pop("ESTOP_PAUSE_AT")
        wait_for(lambda: "pause point dispatcher-restored reached" in second.output(),
                 "the second dispatcher to be preparing the partitions moved to it")
        result = issue_stop(settings, serdes, campaign, "wrong discount code", [],
                            by="test operator", timeout_s=120)
        assert result.confirmed, result.as_dict()
        assert result.confirmed_at_ms is not None and result.broker_ack_ms is not None
        moved = {tp for tp, holder in partition_holders(settings, channel).items()
                 if holder == second.process_id}
        assert moved, "no partition moved to the second dispatcher"

        # The second dispatcher acknowledged the moved partitions, the stop applied there (the
        # command below the offsets it names), after the stop was written and before it was
        # confirmed.
        covering = [a for a in acks(settings, serdes) if a["process_id"] == second.process_id
                    and moved <= set(a["partitions"])
                    and a["control_offsets"][result.control_partition] > result.control_offset]
        assert covering, "the moved partitions were never acknowledged with the stop applied"
        assert result.broker_ack_ms <= min(a["applied_at"] for a in covering) <= result.confirmed_at_ms

        _, found = assert_exact(settings, serdes, campaign, {channel: PLANNED}, result)
    finally:
        scale.fleet.stop_all()
    assert smsc.states(campaign).get(HELD, 0) == 0
    assert held_long.arrivals(channel).count(campaign, after_ms=result.confirmed_at_ms) == 0
    assert found["cancelled_at_provider"] == smsc.states(campaign).get(CANCELLED, 0) > 0
    assert found["cancelled_at_provider"] + found["sent"] == PLANNED
