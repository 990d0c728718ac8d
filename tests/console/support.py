"""Helpers of the console tests: the worker and control service they drive, reads of what was
written to Kafka and the store, and where screenshots go."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import pytest

from streams.control.stop import live_processes
from streams.kafka.topics import create_topics
from streams.lab.broker import BrokerHandle
from streams.lab.harness import WorkerProcess
from streams.settings import Settings, load_settings
from tests.controlplane.support import Api, ControlProcess, Processes, wait_for
from tests.sink.support import delete_topics
from tests.support import REPO, run_estop

ARTIFACTS = REPO / "test-artifacts"  # git-ignored; CI keeps it with the logs


@dataclass
class Stack:
    settings: Settings
    api: Api
    worker_id: str

    @property
    def base(self) -> str:
        return self.api.base

    def env(self) -> dict[str, str]:
        """Environment of an `estop` subprocess pointed at this stack."""
        return {"ESTOP_BOOTSTRAP_SERVERS": self.settings.bootstrap_servers,
                "ESTOP_TOPIC_PREFIX": self.settings.topic_prefix,
                "ESTOP_DATA_DIR": str(self.settings.data_dir)}

    def estop(self, *args: str) -> Any:
        return run_estop(*args, env=self.env())

    def report(self, campaign_id: str) -> dict[str, Any]:
        """`estop report CAMPAIGN --json`, as a user would run it."""
        result = self.estop("report", campaign_id, "--json")
        assert result.returncode == 0, result.stderr
        report: dict[str, Any] = json.loads(result.stdout)
        return report


def stack_settings(broker: BrokerHandle, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings of one test module's stack: its own topic prefix and data folder."""
    return load_settings(bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"t{uuid4().hex[:8]}-",
                         data_dir=tmp_path_factory.mktemp("console") / "data", partitions=3)


def start_stack(settings: Settings, control_env: dict[str, str] | None = None,
                worker_args: list[str] | None = None) -> Iterator[Stack]:
    """A worker (every role unless ``worker_args`` choose) and the control service."""
    create_topics(settings, say=lambda _: None)
    processes = Processes()
    try:
        # Slow simulated providers (10 messages/s per channel): 300 recipients take 30 s, so a
        # stop made seconds after a launch finds messages to halt at every stage.
        worker = processes.add(WorkerProcess(settings, extra_args=worker_args, env={
            "ESTOP_METRICS_PORT": "0", "ESTOP_PROVIDER_RATE": "10", "ESTOP_PROVIDER_DELAY_S": "0.5"}))
        worker_id = worker.wait_ready()
        wait_for(lambda: worker_id in live_processes(settings), f"{worker_id} to join its groups")
        control = processes.add(ControlProcess(settings, env=control_env))
        assert isinstance(control, ControlProcess)
        yield Stack(settings, control.start(), worker_id)
    finally:
        processes.stop_all()
        delete_topics(settings)
