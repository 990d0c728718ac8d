"""SIGKILL of the Kafka broker while a campaign is sending, then a restart from the same data: the
workers recover by themselves (no restart, no operator), nothing is lost, and the counts are
exact: every message sent once, in the topics and in the analytics report.

This test never touches the session's broker (other tests share it): it starts a second local
broker of its own on free ports, with its data under the test's temporary folder."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from streams.kafka.broker import LocalBroker
from streams.kafka.clients import wait_for_broker
from streams.kafka.exceptions import KafkaUnavailableError
from streams.kafka.topics import create_topics
from streams.lab.broker import BrokerHandle
from streams.serde import Serdes
from streams.settings import Settings, load_settings
from tests.reliability.support import Fleet, Launch, assert_exact, wait_for, watch_until
from tests.support import free_port

pytestmark = pytest.mark.broker

CHANNELS = ["email", "sms"]
RECIPIENTS = 1200
LAUNCH_RATE = 120.0  # recipients per second: the broker dies while the engine is queueing
ENV = {"ESTOP_PROVIDER_RATE": "400", "ESTOP_PROVIDER_DELAY_S": "0.2", "ESTOP_BATCH_SIZE": "100"}


@pytest.fixture
def own_broker(broker: BrokerHandle, tmp_path: Path) -> Iterator[tuple[LocalBroker, Settings]]:
    """A second single-node broker for this test alone (the jars are the session's)."""
    port, controller = free_port(), free_port()
    while controller == port:
        controller = free_port()
    settings = load_settings(
        bootstrap_servers=f"localhost:{port}",
        broker_port=port,
        controller_port=controller,
        broker_heap="512m",
        data_dir=tmp_path / "kafka",
        topic_prefix=f"t{uuid4().hex[:8]}-",
        partitions=3,
    )
    local = LocalBroker(settings)
    local.start()
    try:
        yield local, settings.model_copy(update={"data_dir": tmp_path / "data"})
    finally:
        local.stop()


def test_broker_sigkill_and_restart_while_sending(own_broker: tuple[LocalBroker, Settings]) -> None:
    local, settings = own_broker
    serdes = Serdes()
    create_topics(settings, say=lambda _: None)
    campaign = "broker-crash"
    fleet = Fleet(settings, **ENV)
    try:
        worker = fleet.start("worker", *(a for c in CHANNELS for a in ("--channel", c)))
        launcher = Launch(settings, serdes, campaign, CHANNELS, RECIPIENTS, LAUNCH_RATE)
        watch_until(settings, campaign, fleet, lambda w: w.sent() >= 200, "200 messages sent")

        pid = local.status().pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not local.status().running, "the broker to die")
        with pytest.raises(KafkaUnavailableError):
            wait_for_broker(settings, timeout_s=2)
        time.sleep(3)  # the workers and the engine notice, retry, buffer
        assert launcher.queueing(), "the engine should still be queueing when the broker died"
        local.start()

        assert sum(launcher.join().queued.values()) == RECIPIENTS * len(CHANNELS)
        planned = dict.fromkeys(CHANNELS, RECIPIENTS)
        events, found = assert_exact(settings, serdes, campaign, planned, None)
        # Nobody stopped the campaign: every message was sent, once.
        assert len(events.sent) == RECIPIENTS * len(CHANNELS)
        assert found["sent"] == RECIPIENTS * len(CHANNELS)
        # The same worker process did it all: it recovered by itself.
        worker.check()
        assert fleet.restarts == 0
    finally:
        fleet.stop_all()
