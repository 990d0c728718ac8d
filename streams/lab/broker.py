"""Where a broker comes from for tests, the demo and the benchmark, in this order: the user's
cluster (ESTOP_BOOTSTRAP_SERVERS), a Docker engine through testcontainers (the test extra), the
project's own local broker."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from streams.kafka.broker import LocalBroker
from streams.kafka.clients import wait_for_broker
from streams.kafka.exceptions import KafkaUnavailableError
from streams.settings import Settings


@dataclass
class BrokerHandle:
    bootstrap_servers: str
    origin: str  # "user", "docker", "local (started)", "local (already running)"
    stop: Callable[[], None]


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10,
                              check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def acquire_broker(settings: Settings, say: Callable[[str], None] = lambda _: None) -> BrokerHandle:
    if os.environ.get("ESTOP_BOOTSTRAP_SERVERS"):
        wait_for_broker(settings)
        return BrokerHandle(settings.bootstrap_servers, "user", lambda: None)
    if _docker_answers():
        if importlib.util.find_spec("testcontainers") is None:
            say("Docker answers, but testcontainers is not installed (pip install 'estop[test]'): "
                "using the local broker")
        else:
            from testcontainers.kafka import KafkaContainer

            container = KafkaContainer().with_kraft()
            container.start()
            return BrokerHandle(container.get_bootstrap_server(), "docker", container.stop)
    local = LocalBroker(settings, say)
    probe = settings.model_copy(update={"bootstrap_servers": local.address})
    if local.status().running:
        return BrokerHandle(local.address, "local (already running)", lambda: None)
    try:
        wait_for_broker(probe, timeout_s=2.0)
        # Something answers on the port that is not ours: use it, the way a user's cluster is.
        return BrokerHandle(local.address, "local (already running)", lambda: None)
    except KafkaUnavailableError:
        pass
    local.start()
    def stop() -> None:
        local.stop()

    return BrokerHandle(local.address, "local (started)", stop)
