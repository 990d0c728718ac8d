"""Helpers for tests that run the `estop` command the way a user does, in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message
from prometheus_client.parser import text_string_to_metric_families

from streams.control.confirmation import holdings
from streams.kafka.clients import Headers, admin, producer
from streams.settings import Settings

# The checkout the tests run from: its deploy/ recipes and docs are checked against the code.
REPO = Path(__file__).resolve().parents[1]
# The console script pip installed next to this interpreter (the package has no __main__).
ESTOP = Path(sys.executable).parent / "estop"


def run_estop(*args: str, env: dict[str, str] | None = None,
              timeout_s: float = 180.0) -> subprocess.CompletedProcess[str]:
    """Run `estop ARGS` with the current environment plus ``env``; no stdin, output captured.

    ``timeout_s`` only keeps a hung command from hanging the suite; it is not an assertion.
    """
    return subprocess.run(
        [str(ESTOP), *args],
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def listen_on_free_port() -> socket.socket:
    """A plain listener standing for 'some other program owns this port'."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 180.0,
             every_s: float = 0.1) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` when the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(every_s)


def partition_holders(settings: Settings, channel: str, role: str = "dispatcher") -> dict[str, str]:
    """``topic:partition`` -> the process id holding it, of a role's input topic on a channel
    right now (``role``: gate or dispatcher)."""
    with admin(settings) as client:
        held = holdings(settings, client, [channel])
    return {f"{g.topic}:{p}": h for g in held.groups if g.role == f"{role}.{channel}"
            for p, h in g.holders.items()}


def holders(settings: Settings, role: str, channel: str) -> set[str]:
    """Process ids holding a partition of a role's input topic on a channel right now."""
    return set(partition_holders(settings, channel, role).values())


def group_members(settings: Settings, group: str) -> set[str]:
    """client.id of every member of a consumer group right now (empty if it has none)."""
    with admin(settings) as client:
        future = client.describe_consumer_groups([group], request_timeout=30)[group]
        try:
            description = future.result(timeout=35)
        except KafkaException:
            return set()
    return {m.client_id for m in description.members}


def produce(settings: Settings, topic: str, records: Iterable[tuple[bytes | None, bytes | None]],
            headers: Headers | None = None, partition: int | None = None) -> None:
    """Produce ``(key, value)`` records in order and wait until the broker has them all."""
    produce_each(settings, topic, [(k, v, headers) for k, v in records], partition)


def produce_each(settings: Settings, topic: str,
                 records: Iterable[tuple[bytes | None, bytes | None, Headers | None]],
                 partition: int | None = None) -> None:
    """Produce ``(key, value, headers)`` records in order and wait for the broker."""
    errors: list[KafkaError] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            errors.append(error)

    out = producer(settings)
    for key, value, headers in records:
        kwargs: dict[str, Any] = {"key": key, "value": value, "headers": headers or [],
                                  "on_delivery": delivered}
        if partition is not None:
            kwargs["partition"] = partition
        out.produce(topic, **kwargs)
    assert out.flush(60) == 0
    assert errors == []


def metric(text: str, sample: str, **labels: str) -> float:
    """Sum of the samples named ``sample`` whose labels include ``labels`` (0 when absent)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total
