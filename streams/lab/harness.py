"""The processes the demo, the benchmark and the tests drive: an ``estop worker`` subprocess and
a watch counting a campaign's outcomes on the event topics."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from streams.campaigns.status import OutcomeCounter
from streams.exceptions import EstopError
from streams.kafka.clients import consumer, take
from streams.models import CHANNELS
from streams.settings import Settings


def estop_env(settings: Settings, env: dict[str, str]) -> dict[str, str]:
    """The environment of an ``estop`` child process: this one's, pointed at the same cluster,
    topics and data folder as ``settings``, then ``env``."""
    return {**os.environ,
            "ESTOP_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "ESTOP_TOPIC_PREFIX": settings.topic_prefix,
            "ESTOP_DATA_DIR": str(settings.data_dir),
            **env}


class WorkerProcess:
    """An ``estop worker`` subprocess, ready once it has read the control view."""

    def __init__(self, settings: Settings, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        full_env = estop_env(settings, {
            "ESTOP_PROVIDER_RATE": str(settings.provider_rate),
            "ESTOP_PROVIDER_DELAY_S": str(settings.provider_delay_s),
            "ESTOP_METRICS_PORT": str(settings.metrics_port),
            **{f"ESTOP_{c.upper()}_PROVIDER": settings.provider_url(c) for c in CHANNELS},
            "ESTOP_MTA_DIR": str(settings.mta_home),
            "ESTOP_MTA_PORT": str(settings.mta_port),
            "ESTOP_MTA_RECEIVER_PORT": str(settings.mta_receiver_port),
            **(env or {}),
        })
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streams", "worker", *(extra_args or [])],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, text=True,
        )
        self.lines: list[str] = []

    def wait_ready(self, timeout_s: float = 120.0) -> str:
        deadline = time.monotonic() + timeout_s
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise EstopError("the worker exited before it was ready:\n" + "".join(self.lines[-20:]))
            self.lines.append(line)
            if line.startswith("ready "):
                threading.Thread(target=self._drain, daemon=True).start()
                return line.split()[1]
        raise EstopError("the worker was not ready in time")

    def metrics_port(self) -> int:
        """The port its /metrics is served on, as its ready line says (the setting may be 0: a
        free port)."""
        ready = next((line for line in reversed(self.lines) if line.startswith("ready ")), "")
        found = re.search(r"metrics_port=(\d+)", ready)
        if found is None:
            raise EstopError(f"no metrics port in the worker's ready line: {ready!r}")
        return int(found.group(1))

    def check(self) -> None:
        """Raise with the worker's last output if it exited: a dead worker must not hang us."""
        if self.process.poll() is not None:
            raise EstopError(f"the worker exited with code {self.process.returncode}:\n"
                             + "".join(self.lines[-20:]))

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


class OutcomeWatch:
    """Tails ``sent``, ``notsent`` and ``failed`` from the beginning, counting one outcome per
    message."""

    def __init__(self, settings: Settings, campaign_id: str) -> None:
        self.counter = OutcomeCounter(campaign_id)
        self._consumer = consumer(settings)
        parts = []
        for topic in (settings.topics.sent, settings.topics.notsent, settings.topics.failed):
            metadata = self._consumer.list_topics(topic, timeout=settings.admin_timeout_s)
            parts += [TopicPartition(topic, p, OFFSET_BEGINNING)
                      for p in metadata.topics[topic].partitions]
        self._consumer.assign(parts)

    def poll(self, timeout_s: float = 0.2) -> None:
        for message in take(self._consumer, 10000, timeout_s):
            self.counter.add(message)

    def sent(self) -> int:
        return sum(c.sent for c in self.counter.counts.values())

    def close(self) -> None:
        self._consumer.close()
