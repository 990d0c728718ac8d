"""The provider stage scaled out on SMS (SMPP to the stand-in SMSC) and web push (the stand-in
push service): three dispatchers, each with its own data folder; one scaled down, one
SIGKILLed, one added, then a stop (tests/scale_out.py). What the ones that are gone had handed
over is cancelled at the provider by the ones that hold their partitions now."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streams.campaigns.launcher import recipient_id
from streams.providers.testservers.local import LocalStandIns, Pace
from streams.providers.testservers.pushservice import DELETED, STORED
from streams.providers.testservers.smsc import CANCELLED, HELD
from streams.serde import Serdes
from streams.settings import Settings
from streams.sink.report import campaign_report
from streams.sink.store import open_store
from tests.scale_out import ScaleOut, stop_a_scaled_out_campaign

pytestmark = pytest.mark.broker

PLANNED = 900
# The SMSC holds every message for a minute, the browsers stay away for ten: a stop finds the
# whole campaign at the provider.
PACE = Pace(sms_hold_s=60.0, webpush_connect_every_s=600.0, webpush_ttl_s=900)
ENV = {"ESTOP_PROVIDER_RATE": "600", "ESTOP_BATCH_SIZE": "100"}


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
        result, events, found = stop_a_scaled_out_campaign(scale, serdes, campaign, PLANNED, held,
                                                           release)
    finally:
        scale.fleet.stop_all()

    # Counted where the messages arrive: not one after the confirmation (none at all: the whole
    # campaign was at the provider, and the stop cancelled it there).
    arrivals = held_long.arrivals(channel)
    assert arrivals.count(campaign, after_ms=result.confirmed_at_ms) == 0
    assert arrivals.count(campaign) == len(events.sent) == 0
    # The report is exact and agrees with what the provider says it dropped.
    store = open_store(settings)
    try:
        report = campaign_report(store, campaign)["by_channel"][channel]
    finally:
        store.close()
    assert report["cancelled_at_provider"] == states().get(dropped_state, 0) == PLANNED
    assert found["accounted"] == PLANNED
