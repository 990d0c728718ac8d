"""SIGKILL of a gate, a dispatcher or the analytics sink in the middle of a stopped campaign's
drain, then a restart: every request still ends as exactly one outcome, in the event topics and
in the analytics report, nothing reaches a provider after the stop was confirmed, and nothing is
handed over or delivered twice.

The roles run as separate processes (`--role gate --channel email`, `--role dispatcher --channel
email`, `--role sink`), with small batches so the drain spans many transactions and a slow
provider so a backlog waits at the provider stage when the stop lands."""

from __future__ import annotations

import re

import pytest

from streams.lab.harness import OutcomeWatch
from streams.models import STAGE_PROVIDER, STAGE_SENDING
from streams.serde import Serdes
from streams.settings import Settings
from streams.sink.exceptions import UnknownCampaignError
from tests.reliability.support import (
    Fleet,
    Launch,
    assert_exact,
    produce_requests,
    report,
    stop,
    wait_for,
    wait_joined,
    watch_until,
)

pytestmark = pytest.mark.broker

CHANNEL = "email"
RECIPIENTS = 3000  # queued by the launcher; most wait at the provider stage when the stop lands
LATE = 1500  # queued again by "another engine instance" after the stop: the gate's drain
ENV = {
    "ESTOP_BATCH_SIZE": "40",  # many small transactions: a kill lands inside a drain, not after it
    "ESTOP_PROVIDER_RATE": "150",
    "ESTOP_PROVIDER_DELAY_S": "0.5",
}


def stage(watch: OutcomeWatch, name: str) -> int:
    return watch.counter.channel(CHANNEL).not_sent.get(name, 0)


def stored(settings: Settings, campaign_id: str) -> int:
    try:
        return int(report(settings, campaign_id)["accounted"])
    except UnknownCampaignError:
        return 0


# Where each role's first generation kills itself while the campaign is sending: the narrowest
# window of that role (streams/faults.py).
CRASH_POINTS = {
    "gate": "gate-produced",  # a transaction with outputs, not committed
    "dispatcher": "receipts-committed",  # outcomes and their ledger entries just committed
    "sink": "sink-stored",  # outcomes stored, offsets not committed
}


@pytest.mark.parametrize("role", ["gate", "dispatcher", "sink"])
def test_sigkill_in_the_middle_of_a_stopped_campaigns_drain(settings: Settings, role: str) -> None:
    """Two kills of one role: at its crash point while the campaign is sending, then a SIGKILL
    from outside in the middle of the drain after the stop; each followed by a restart."""
    serdes = Serdes()
    campaign = f"kill-{role}"
    total = RECIPIENTS + LATE
    fleet = Fleet(settings, **ENV)
    try:
        crash = {role: CRASH_POINTS[role]}
        gate = fleet.start("gate", "--role", "gate", "--channel", CHANNEL, crash_at=crash.get("gate"))
        dispatcher = fleet.start("dispatcher", "--role", "dispatcher", "--channel", CHANNEL,
                                 crash_at=crash.get("dispatcher"))
        fleet.start("sink", "--role", "sink", crash_at=crash.get("sink"))
        wait_joined(settings, gate.process_id, settings.topics.gate_group(CHANNEL))
        wait_joined(settings, dispatcher.process_id, settings.topics.dispatcher_group(CHANNEL))

        launcher = Launch(settings, serdes, campaign, [CHANNEL], RECIPIENTS)
        fleet.crashed(role)
        fleet.restart(role)
        watch_until(settings, campaign, fleet, lambda w: w.sent() >= 100, "100 messages sent")
        launcher.join()

        result = stop(settings, serdes, campaign)
        # Another engine instance queues more of the campaign after the stop: the gate drains them.
        produce_requests(settings, serdes, settings.topics.send_requests(CHANNEL), campaign, CHANNEL,
                         range(RECIPIENTS, total))

        if role == "gate":
            at_kill = watch_until(settings, campaign, fleet, lambda w: stage(w, STAGE_SENDING) > 0,
                                  "the gate to start draining")
        elif role == "dispatcher":
            at_kill = watch_until(settings, campaign, fleet, lambda w: stage(w, STAGE_PROVIDER) > 0,
                                  "the dispatcher to start draining")
        else:
            wait_for(lambda: stored(settings, campaign) > 0, "the sink to store outcomes",
                     every_s=0.02)
            at_kill = stored(settings, campaign)
        fleet.kill(role)
        assert at_kill < total, f"the {role} had finished its drain before it was killed"
        fleet.restart(role)

        events, found = assert_exact(settings, serdes, campaign, {CHANNEL: total}, result)
        assert fleet.kills == fleet.restarts == 2
        # The scene was set as intended: messages sent before the stop, halted at both stages.
        assert found["sent"] > 0
        assert found["not_sent_by_stage"][STAGE_SENDING] >= LATE
        assert found["not_sent_by_stage"][STAGE_PROVIDER] > 0
        assert not events.failed
        if role == "dispatcher":
            # The first crash came right after a transaction committed outcomes with their ledger
            # entries; the restarted dispatcher restored those entries from the changelog (so it
            # published none of them again: assert_exact found one outcome per message).
            output = fleet.procs[role].output()
            assert "crash point receipts-committed reached" in output
            restored = [int(n) for n in re.findall(r"ready: (\d+) ledger records read", output)]
            assert restored[0] == 0 and restored[1] > 0, restored
    finally:
        fleet.stop_all()
