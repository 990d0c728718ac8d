"""The impact preview (`estop stop --dry-run`) against the real broker and real workers: what it
says a stop would halt at each stage is what the stop then halts there."""

from __future__ import annotations

import json

import pytest

from streams.campaigns.launcher import launch
from streams.control.preview import ChannelImpact, preview_stop
from streams.control.stop import issue_stop
from streams.dispatch.changelog import LedgerStats
from streams.kafka.clients import admin
from streams.models import STAGE_PROVIDER, STAGE_SENDING
from streams.serde import Serdes
from streams.settings import Settings
from tests.pipeline.support import Workers, cli_env, end_offsets, wait_for, wait_outcomes
from tests.support import run_estop

pytestmark = pytest.mark.broker

N = 200


def ends(settings: Settings) -> dict[str, dict[int, int]]:
    """The end offsets of every topic of the test (its prefix)."""
    with admin(settings) as client:
        names = [t for t in client.list_topics(timeout=30).topics
                 if t.startswith(settings.topic_prefix)]
    return {name: end_offsets(settings, name) for name in sorted(names)}


def impact(settings: Settings, serdes: Serdes, campaign: str) -> dict[str, ChannelImpact]:
    return {c.channel: c for c in preview_stop(settings, serdes, campaign).channels}


def test_preview_matches_what_the_stop_halts(settings: Settings, serdes: Serdes,
                                             workers: Workers) -> None:
    """Before the gate: a campaign queued while no gate runs is all before the gate, and its
    stop turns exactly that many into notSent at stage sending. At the dispatchers, then at the
    provider: a campaign the gates passed waits at the dispatchers until one runs; once the
    provider holds it, the preview's "accepted at the provider, cancellable" is what the stop
    then cancels there (``halted_at_provider``). Nothing the preview reads is written."""
    channels = ["email", "sms"]
    launch(settings, serdes, "queued-only", channels, N)
    written = ends(settings)
    before = impact(settings, serdes, "queued-only")
    for channel in channels:
        assert before[channel].before_gate == N, channel
        assert before[channel].would_halt == N
        assert (before[channel].not_queued, before[channel].at_dispatchers,
                before[channel].at_provider_cancellable, before[channel].delivered) == (0, 0, 0, 0)
    # The command line shows the same figures and writes nothing (not even with a reason).
    shown = run_estop("stop", "queued-only", "--dry-run", "--json", env=cli_env(settings))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["totals"]["before_gate"] == 2 * N
    table = run_estop("stop", "queued-only", "--dry-run", env=cli_env(settings))
    assert "would halt 400 message(s); nothing written" in table.stdout, table.stdout
    assert ends(settings) == written, "a preview wrote to Kafka"
    stop_a = issue_stop(settings, serdes, "queued-only", "wrong audience", [], "test", 60)
    assert stop_a.confirmed

    launch(settings, serdes, "at-provider", channels, N)
    workers.start("--role", "gate")
    wait_for(lambda: all(c.at_dispatchers == N for c in impact(settings, serdes, "at-provider").values()),
             "the gates to pass the campaign to the dispatchers")
    waiting = impact(settings, serdes, "at-provider")
    assert all(c.before_gate == 0 and c.would_halt == N for c in waiting.values())
    # The provider holds what it accepts for ten minutes: nothing is delivered during the test.
    workers.start("--role", "dispatcher", delay_s=600)
    wait_for(lambda: all(LedgerStats(settings, c).at_provider("at-provider") == N for c in channels),
             "the provider to hold every message")
    held = impact(settings, serdes, "at-provider")
    for channel in channels:
        entry = held[channel]
        assert entry.cancel_capability == "by_message_id"
        assert (entry.at_provider_cancellable, entry.at_dispatchers, entry.handing_over,
                entry.at_provider_not_cancellable, entry.delivered) == (N, 0, 0, 0, 0), entry
        assert entry.dispatchers == 1 and entry.may_still_leak == 0

    stop_b = issue_stop(settings, serdes, "at-provider", "wrong discount", [], "test", 60)
    assert stop_b.confirmed
    assert stop_b.halted == sum(c.at_provider_cancellable for c in held.values())

    outcomes_a = wait_outcomes(settings, "queued-only", 2 * N)
    outcomes_b = wait_outcomes(settings, "at-provider", 2 * N)
    for channel in channels:
        assert outcomes_a.channel(channel).not_sent[STAGE_SENDING] == before[channel].before_gate
        assert outcomes_b.channel(channel).not_sent[STAGE_PROVIDER] == held[channel].would_halt


def test_not_cancellable_provider_counts_as_leaking(settings: Settings, serdes: Serdes,
                                                     workers: Workers) -> None:
    """A provider whose adapter declares it cannot cancel (FCM): what it accepted is counted
    apart and in what may still reach recipients, never in what the stop would halt."""
    launch(settings, serdes, "push-held", ["push"], N)
    workers.start(delay_s=600)
    wait_for(lambda: LedgerStats(settings, "push").at_provider("push-held") == N,
             "the provider to hold every message")
    fcm = settings.model_copy(update={"push_provider": "fcm://localhost:1"})
    entry = impact(fcm, serdes, "push-held")["push"]
    assert entry.cancel_capability == "none"
    assert (entry.at_provider_not_cancellable, entry.at_provider_cancellable) == (N, 0)
    assert entry.would_halt == 0
    assert entry.may_still_leak == N
    simulated = impact(settings, serdes, "push-held")["push"]
    assert (simulated.at_provider_cancellable, simulated.may_still_leak) == (N, 0)


def test_preview_refuses_bad_input(settings: Settings) -> None:
    """An unknown campaign, an invalid id or channel: one line, an exit code, nothing written."""
    unknown = run_estop("stop", "never-launched", "--dry-run", env=cli_env(settings))
    assert unknown.returncode != 0 and "unknown campaign 'never-launched'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    bad = run_estop("stop", "promo", "--dry-run", "--channel", "fax", env=cli_env(settings))
    assert bad.returncode == 2 and "unknown channel 'fax'" in bad.stderr
    no_reason = run_estop("stop", "promo", env=cli_env(settings))
    assert no_reason.returncode == 2 and "a stop needs a reason" in no_reason.stderr
