"""Failover under a stop, on a three-node cluster with real processes: the broker leading
`campaign-control`, or the one leading a send-requests partition, is SIGKILLed just as an
operator stops a running campaign. The stop is still confirmed by every worker, nothing reaches
a provider after that, every message ends as exactly one outcome (topics and analytics report),
and the killed broker, restarted from its data, rejoins: every replica back in sync.

The worker is one `estop worker` process (gates, dispatchers, sink) with a slow provider, so a
backlog waits at the provider stage when the stop lands; a second engine instance queues more
of the campaign after the stop, which the gate drains. The accounting is the reliability
suite's (tests/reliability/support.py)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from streams.models import STAGE_PROVIDER, STAGE_SENDING
from streams.serde import Serdes
from streams.settings import Settings
from tests.cluster.support import Cluster
from tests.reliability.support import (
    Fleet,
    Launch,
    assert_exact,
    produce_requests,
    stop,
    wait_joined,
    watch_until,
)

pytestmark = pytest.mark.broker

CHANNELS = ["email", "sms"]
RECIPIENTS = 1500  # per channel, queued before the stop; most wait at the provider stage
LATE = 600  # email requests queued by another engine instance after the stop: the gate drains them
ENV = {"ESTOP_PROVIDER_RATE": "150", "ESTOP_PROVIDER_DELAY_S": "0.3", "ESTOP_BATCH_SIZE": "100"}


def victim_of(settings: Settings, target: str) -> tuple[str, int]:
    """The partition whose leader the test kills."""
    if target == "campaign-control":
        return settings.topics.control, 0
    return settings.topics.send_requests("email"), 0


@pytest.mark.parametrize("target", ["campaign-control", "send-requests"])
def test_sigkill_of_a_partition_leader_while_a_campaign_is_stopped(
        cluster: Cluster, cluster_settings: Settings, target: str) -> None:
    settings = cluster_settings
    serdes = Serdes()
    campaign = f"failover-{target}"
    fleet = Fleet(settings, **ENV)
    started = time.monotonic()
    try:
        worker = fleet.start("worker", *(a for c in CHANNELS for a in ("--channel", c)))
        for channel in CHANNELS:
            wait_joined(settings, worker.process_id, settings.topics.gate_group(channel))
            wait_joined(settings, worker.process_id, settings.topics.dispatcher_group(channel))
        launcher = Launch(settings, serdes, campaign, CHANNELS, RECIPIENTS)
        watch_until(settings, campaign, fleet, lambda w: w.sent() >= 100, "100 messages sent")
        launcher.join()

        topic, partition = victim_of(settings, target)
        victim = cluster.leader(topic, partition)
        cluster.kill(victim)
        killed_at = time.monotonic()
        # The stop is issued at once, while the partition has no live leader yet.
        result = stop(settings, serdes, campaign)
        stop_s = time.monotonic() - killed_at
        assert cluster.leader(topic, partition) not in (victim, -1)
        produce_requests(settings, serdes, settings.topics.send_requests("email"), campaign, "email",
                         range(RECIPIENTS, RECIPIENTS + LATE))

        # The killed broker comes back from its data while the pipeline finishes the drain.
        with ThreadPoolExecutor(1) as pool:
            restarted = pool.submit(cluster.restart)
            planned = {"email": RECIPIENTS + LATE, "sms": RECIPIENTS}
            events, found = assert_exact(settings, serdes, campaign, planned, result)
            restarted.result()
        cluster.wait_in_sync(settings.topic_prefix)

        # The scene was as intended: sent before the stop, halted at both stages after it.
        assert found["sent"] > 0
        assert found["not_sent_by_stage"][STAGE_PROVIDER] > 0
        assert found["not_sent_by_stage"][STAGE_SENDING] >= LATE
        assert not events.failed
        # The same worker did it all, across the failover: no restart, no operator.
        worker.check()
        assert fleet.restarts == 0
        print(f"failover ({target}): node {victim} killed; stop confirmed {stop_s:.1f}s after the "
              f"kill ({result.confirm_s:.2f}s from sending the command); whole test "
              f"{time.monotonic() - started:.0f}s")
    finally:
        fleet.stop_all()
