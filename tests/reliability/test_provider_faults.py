"""Provider faults: the simulated providers answer a share of handoffs with an error (refused) or
a timeout (maybe accepted: the answer was lost). The dispatcher retries with backoff within a
bounded budget, never has a message delivered twice, still hands nothing over after a stop, and
a message that exhausts its retries ends as a `failed` outcome that the report shows."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from streams.dispatch.changelog import LedgerStats
from streams.models import FAILED_EVENT
from streams.providers.simulated import SimulatedQueueStats
from streams.serde import Serdes
from streams.settings import Settings
from tests.reliability.support import (
    Fleet,
    Launch,
    assert_exact,
    env_of,
    stop,
    watch_until,
)
from tests.support import ESTOP, metric

pytestmark = pytest.mark.broker

CHANNELS = ["email", "sms"]
RECIPIENTS = 1500
MAX_RETRIES = 2
ENV = {
    "ESTOP_PROVIDER_ERROR_RATE": "0.3",
    "ESTOP_PROVIDER_TIMEOUT_RATE": "0.15",
    "ESTOP_PROVIDER_MAX_RETRIES": str(MAX_RETRIES),
    "ESTOP_PROVIDER_RETRY_BACKOFF_S": "0.01",
    "ESTOP_PROVIDER_RATE": "400",
    "ESTOP_PROVIDER_DELAY_S": "0.3",
    "ESTOP_BATCH_SIZE": "100",
}


def test_errors_and_timeouts_are_retried_within_a_budget_and_exhausted_ones_fail(
    settings: Settings
) -> None:
    serdes = Serdes()
    campaign = "flaky-provider"
    fleet = Fleet(settings, **ENV)
    try:
        worker = fleet.start("worker", *(a for c in CHANNELS for a in ("--channel", c)))
        launcher = Launch(settings, serdes, campaign, CHANNELS, RECIPIENTS)
        watch_until(settings, campaign, fleet,
                    lambda w: all(w.counter.channel(c).sent >= 150 for c in CHANNELS),
                    "150 messages sent on every channel")
        result = stop(settings, serdes, campaign)
        launcher.join()

        planned = dict.fromkeys(CHANNELS, RECIPIENTS)
        events, found = assert_exact(settings, serdes, campaign, planned, result)

        failed = Counter(e["channel"] for e in events.failed)
        print("report", {k: found[k] for k in ("sent", "not_sent", "failed", "not_sent_by_stage")})
        for channel in CHANNELS:
            # Some messages exhausted their budget on every channel, and the report shows them.
            assert failed[channel] > 0, channel
            assert found["by_channel"][channel]["failed"] == failed[channel]
            # Timeouts were retried: counted as attempts, and a message whose lost answer hid
            # an acceptance was found at the provider instead of being submitted again
            # (assert_exact: the provider holds no message twice, none is delivered twice).
            assert LedgerStats(settings, channel).resubmitted(campaign) > 0, channel
            # A failed message never reached the provider (a timeout that did is the outbox's).
            failed_ids = {e["message_id"] for e in events.failed if e["channel"] == channel}
            assert not failed_ids & SimulatedQueueStats(settings.data_dir, channel).held(campaign)
            assert not failed_ids & LedgerStats(settings, channel).message_ids(campaign)
        assert found["failed"] == len(events.failed)
        for event in events.failed:
            assert event["event"] == FAILED_EVENT[event["channel"]]
            assert event["attempts"] == MAX_RETRIES + 1
            assert "provider" in event["error"]
        # Retries happen before the stop only: nothing was handed over after it was confirmed
        # (assert_exact), and every message is accounted exactly once (sent, notSent, failed).
        assert found["sent"] + found["not_sent"] + found["failed"] == RECIPIENTS * len(CHANNELS)

        text = worker.scrape()
        assert metric(text, "estop_provider_retries_total") > 0
        assert metric(text, "estop_failed_events_total") == len(events.failed)
        assert metric(text, "estop_sink_outcomes_total", outcome="failed") == len(events.failed)

        # `estop report` shows the failed count per channel and in total.
        done = fleet_cli(settings, "report", campaign, "--json")
        printed = json.loads(done)
        assert printed["failed"] == len(events.failed)
        assert {c: printed["by_channel"][c]["failed"] for c in CHANNELS} == dict(failed)
        table = fleet_cli(settings, "report", campaign)
        assert "failed" in table
        total_row = next(line for line in table.splitlines() if "total" in line)
        assert f"{len(events.failed):,}" in total_row
    finally:
        fleet.stop_all()


def fleet_cli(settings: Settings, *args: str) -> str:
    import subprocess

    done = subprocess.run([str(ESTOP), *args], env={**env_of(settings), "COLUMNS": "120"},
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout
