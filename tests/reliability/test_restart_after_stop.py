"""A stop, then every worker SIGKILLed, then fresh ones: none of the campaign's messages reaches
a provider any more. The fresh processes read the control view to its end before their first
request, so the backlog they inherit (in the gates' input, in the dispatch topics, and queued
by the engine while nothing ran) is halted, never handed over. And a dispatcher that was down
when the stop came cancels, as it starts, what its provider still holds of the campaign."""

from __future__ import annotations

import pytest

from streams.campaigns.launcher import launch
from streams.control.stop import await_confirmation, issue_stop
from streams.dispatch.changelog import LedgerStats
from streams.models import REASON_CANCELLED, STAGE_PROVIDER, STAGE_SENDING
from streams.serde import Serdes
from streams.settings import Settings
from tests.reliability.support import (
    REASON,
    Fleet,
    assert_exact,
    produce_requests,
    stop,
    wait_for,
    wait_joined,
)

pytestmark = pytest.mark.broker

CHANNELS = ["email", "sms"]
RECIPIENTS = 2000
LATE = 300  # per channel and topic, queued while no worker runs
ENV = {"ESTOP_BATCH_SIZE": "40", "ESTOP_PROVIDER_RATE": "150", "ESTOP_PROVIDER_DELAY_S": "0.5"}


def test_workers_started_after_a_stop_and_a_crash_hand_nothing_over(settings: Settings) -> None:
    serdes = Serdes()
    campaign = "stop-then-crash"
    fleet = Fleet(settings, **ENV)
    names = {"gate": ("--role", "gate"), "dispatcher": ("--role", "dispatcher"),
             "sink": ("--role", "sink")}
    try:
        for name, args in names.items():
            fleet.start(name, *args, *(a for c in CHANNELS for a in ("--channel", c)))
        for channel in CHANNELS:
            wait_joined(settings, fleet.procs["gate"].process_id, settings.topics.gate_group(channel))
            wait_joined(settings, fleet.procs["dispatcher"].process_id,
                        settings.topics.dispatcher_group(channel))
        launch(settings, serdes, campaign, CHANNELS, RECIPIENTS)
        outboxes = {c: LedgerStats(settings, c) for c in CHANNELS}
        wait_for(lambda: all(outboxes[c].handed(campaign) > 100 for c in CHANNELS),
                 "a backlog at every provider", every_s=0.05)

        result = stop(settings, serdes, campaign)
        for name in names:
            fleet.kill(name)
        handed = {c: outboxes[c].handed(campaign) for c in CHANNELS}
        assert all(n < RECIPIENTS for n in handed.values()), "the stop should leave a backlog"

        # While nothing runs, the engine queues more of the campaign, and requests that passed a
        # gate before the stop are still waiting for a dispatcher.
        late = {}
        for channel in CHANNELS:
            late[channel] = produce_requests(
                settings, serdes, settings.topics.send_requests(channel), campaign, channel,
                range(RECIPIENTS, RECIPIENTS + LATE))
            late[channel] += produce_requests(
                settings, serdes, settings.topics.dispatch(channel), campaign, channel,
                range(RECIPIENTS + LATE, RECIPIENTS + 2 * LATE))
        for name in names:
            fleet.restart(name)

        planned = dict.fromkeys(CHANNELS, RECIPIENTS + 2 * LATE)
        events, found = assert_exact(settings, serdes, campaign, planned, result)
        # Nothing reached a provider after the kill: its outbox holds what it held then...
        assert {c: outboxes[c].handed(campaign) for c in CHANNELS} == handed
        # ...and nothing was delivered after the stop was confirmed.
        assert result.confirmed_at_ms is not None
        assert all(e["occurred_at"] <= result.confirmed_at_ms for e in events.sent)
        halted = {e["message_id"]: e["stage"] for e in events.not_sent}
        for channel in CHANNELS:
            gate_side, dispatch_side = late[channel][:LATE], late[channel][LATE:]
            assert all(halted.get(m) == STAGE_SENDING for m in gate_side), channel
            assert all(halted.get(m) == STAGE_PROVIDER for m in dispatch_side), channel
        assert found["not_sent_by_stage"][STAGE_PROVIDER] > 2 * LATE
    finally:
        fleet.stop_all()


def test_a_dispatcher_down_when_the_stop_came_cancels_at_its_provider_as_it_starts(
        settings: Settings) -> None:
    """The provider holds every message for five minutes; the dispatcher that handed them over
    is SIGKILLed. Nothing else can cancel them, so the stop is not confirmed while it is down
    (it names the partitions it waits for); its restart cancels them as it prepares its
    partitions, and the stop is confirmed then."""
    serdes = Serdes()
    campaign = "stop-while-down"
    recipients = 200
    # ESTOP_ACK_RECENT_S=0: a start-up treats every stop it reads as old, so no per-stop hook runs
    # and the cancellation is the preparation's alone.
    fleet = Fleet(settings, ESTOP_PROVIDER_RATE="1000", ESTOP_PROVIDER_DELAY_S="300",
                  ESTOP_ACK_RECENT_S="0")
    try:
        for name in ("gate", "dispatcher", "sink"):
            fleet.start(name, "--role", name, "--channel", "email")
        wait_joined(settings, fleet.procs["dispatcher"].process_id,
                    settings.topics.dispatcher_group("email"))
        launch(settings, serdes, campaign, ["email"], recipients)
        outbox = LedgerStats(settings, "email")
        wait_for(lambda: outbox.handed(campaign) == recipients, "every message at the provider")
        fleet.kill("dispatcher")

        result = issue_stop(settings, serdes, campaign, REASON, [], by="fault test", timeout_s=3)
        assert not result.confirmed
        assert result.waiting and all(tp.startswith(settings.topics.dispatch("email"))
                                      for tp, _ in result.waiting), result.waiting
        fleet.restart("dispatcher")
        assert await_confirmation(settings, serdes, result, timeout_s=120).confirmed, \
            result.as_dict()

        events, found = assert_exact(settings, serdes, campaign, {"email": recipients}, result)
        assert not events.sent
        assert all(e["stage"] == STAGE_PROVIDER and e["reason"].startswith(REASON_CANCELLED)
                   for e in events.not_sent)
        assert found["cancelled_at_provider"] == recipients
    finally:
        fleet.stop_all()
