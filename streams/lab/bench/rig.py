"""The benchmark's rig: per-scenario settings and topics, preloaded input, and the processes
under test, run as subprocesses so that every figure includes what a user would see."""

from __future__ import annotations

import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import confluent_kafka

from streams.clock import now_ms
from streams.kafka.clients import admin, producer
from streams.kafka.topics import create_topics
from streams.lab.harness import WorkerProcess
from streams.models import HEADER_CAMPAIGN, HEADER_CHANNEL, HEADER_RECIPIENT
from streams.serde import Serdes
from streams.settings import Settings

Say = Callable[[str], None]


@dataclass(frozen=True)
class Sizes:
    """How many messages (stops, commands, samples) each scenario uses; ``--quick`` is small
    enough for the whole run to end within about 5 minutes."""

    passthrough: int
    drain: int
    reference_recipients: int
    stops: int
    control_commands: int
    evidence: int
    latency_samples: int
    peers: int
    handoffs: int
    ledger_entries: int
    guardrail_trips: int

    @classmethod
    def for_run(cls, quick: bool) -> Sizes:
        if quick:
            return cls(passthrough=60_000, drain=60_000, reference_recipients=50_000, stops=30,
                       control_commands=50_000, evidence=15_000, latency_samples=200,
                       peers=30_000, handoffs=30_000, ledger_entries=100_000, guardrail_trips=5)
        return cls(passthrough=300_000, drain=500_000, reference_recipients=500_000, stops=40,
                   control_commands=1_000_000, evidence=50_000, latency_samples=500,
                   peers=100_000, handoffs=100_000, ledger_entries=300_000, guardrail_trips=20)


class Rig:
    """What every scenario stands on: the broker, a topic prefix and data folder per scenario
    (removed at the end), requests preloaded the way a launch writes them, and the processes
    under test (``estop worker`` roles, forwarders, peers) started and stopped around it."""

    def __init__(self, settings: Settings, quick: bool, say: Say) -> None:
        self.base = settings
        self.quick = quick
        self.sizes = Sizes.for_run(quick)
        self.say = say
        self.run_id = uuid.uuid4().hex[:6]
        self.serdes = Serdes()
        self.workdir = Path(tempfile.mkdtemp(prefix="estop-bench-"))
        self.message_bytes = 0
        self.prefixes: list[str] = []

    def scenario_settings(self, name: str, **updates: Any) -> Settings:
        prefix = f"bench{self.run_id}-{name}-"
        self.prefixes.append(prefix)
        settings = self.base.model_copy(update={
            "topic_prefix": prefix, "data_dir": self.workdir / name, "metrics_port": 0, **updates})
        create_topics(settings, say=lambda _: None)
        return settings

    def cleanup(self) -> None:
        with admin(self.base) as client:
            names = [t for t in client.list_topics(timeout=30).topics
                     if any(t.startswith(p) for p in self.prefixes)]
            if names:
                for future in client.delete_topics(names, operation_timeout=30).values():
                    with suppress(confluent_kafka.KafkaException):
                        future.result()

    def preload(self, settings: Settings, topic: str, count: int, campaign: str,
                channel: str = "email") -> None:
        out = producer(settings)
        encode = self.serdes.send_request.encode
        headers: Any = [(HEADER_CAMPAIGN, campaign.encode()), (HEADER_CHANNEL, channel.encode())]
        now = now_ms()
        for index in range(count):
            message_id = f"{campaign}:{channel}:{index}"
            value = encode({"message_id": message_id, "campaign_id": campaign, "channel": channel,
                            "recipient_id": f"r{index:08d}", "payload": "x" * 120,
                            "requested_at": now})
            self.message_bytes = len(value)
            while True:
                try:
                    out.produce(topic, key=message_id.encode(), value=value,
                                headers=[*headers, (HEADER_RECIPIENT, f"r{index:08d}".encode())])
                    break
                except BufferError:
                    out.poll(0.05)
        out.flush(120)

    @contextmanager
    def process(self, command: list[str], name: str) -> Iterator[subprocess.Popen[str]]:
        """A forwarder or a peer; the measurement waits for its first output, so no readiness
        handshake (Faust swallows its stdout into its own logging)."""
        log = (self.workdir / f"{name}.log").open("w")
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()

    @contextmanager
    def workers(self, settings: Settings, *arg_sets: list[str]) -> Iterator[list[WorkerProcess]]:
        started = [WorkerProcess(settings, args) for args in arg_sets]
        try:
            for worker in started:
                worker.wait_ready()
            yield started
        finally:
            for worker in started:
                worker.stop()
