"""`estop worker` shuts down cleanly on SIGTERM, and a restarted worker finishes the job."""

from __future__ import annotations

import pytest

from streams.campaigns.launcher import launch
from streams.control.stop import live_processes
from streams.dispatch.changelog import LedgerStats
from streams.serde import Serdes
from streams.settings import Settings
from tests.pipeline.support import (
    Workers,
    duplicates,
    read_events,
    wait_for,
    wait_joined,
    wait_outcomes,
)

pytestmark = pytest.mark.broker


def test_a_sigterm_worker_exits_0_and_a_restarted_one_finishes_the_campaign(
    settings: Settings, serdes: Serdes, workers: Workers
) -> None:
    campaign, recipients = "restart", 1500
    # The embedded default (gates, dispatchers and the analytics sink), as `estop worker` runs.
    first, first_id = workers.start(rate=200, delay_s=0.2, everything=True)
    wait_joined(settings, [first_id], settings.topics.data_plane_groups())
    launch(settings, serdes, campaign, ["email"], recipients)
    outbox = LedgerStats(settings, "email")
    wait_for(lambda: outbox.handed(campaign) > 0, "a first handoff", every_s=0.02)

    code = first.stop()

    assert code == 0, "".join(first.lines[-20:])
    wait_for(lambda: "stopped\n" in first.lines, "the worker's last words", timeout_s=30)
    # A clean shutdown leaves the consumer groups at once: no stop would wait for it.
    assert first_id not in live_processes(settings)
    assert outbox.handed(campaign) < recipients, "the provider should still have work to do"

    _, second_id = workers.start("--channel", "email", rate=5000, delay_s=0.1)
    assert second_id != first_id
    wait_outcomes(settings, campaign, recipients)

    events = read_events(settings, serdes, campaign)
    assert duplicates(events) == {}
    assert len(events) == recipients
    assert all(e.kind == "sent" for e in events)
    assert outbox.handed(campaign) == recipients
