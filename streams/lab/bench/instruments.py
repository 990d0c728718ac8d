"""How the benchmark measures, from outside the processes under test: rates from the committed
offsets of their group or the end offsets of their output topic, their CPU time and resident
memory from /proc, percentiles."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions, TopicPartition

from streams.exceptions import EstopError
from streams.kafka.clients import admin, consumer
from streams.settings import Settings


@dataclass(frozen=True)
class Measured:
    """A throughput and what it cost: CPU (user + system, every thread) of the processes under
    test per message. On a machine shared with other work the CPU cost is the steadier figure."""

    msgs_per_s: float
    cpu_us_per_msg: float

    def figures(self, baseline: Measured) -> dict[str, float]:
        return {"msgs_per_s": self.msgs_per_s, "ratio": self.msgs_per_s / baseline.msgs_per_s,
                "cpu_us_per_msg": self.cpu_us_per_msg,
                "cpu_ratio": baseline.cpu_us_per_msg / self.cpu_us_per_msg}


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time so far of these processes, all their threads (``/proc``)."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
    return ticks / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Resident memory of a process (``/proc``) next to the messages in flight when sampled:
    its peak, and its growth per 100,000 messages in flight (least-squares slope). Sampled while
    the backlog builds up: once it drains, the allocator keeps what it took, so those samples say
    nothing about what a message in flight costs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[int, int]] = []  # (in flight, RSS bytes)
        self._next = 0.0

    def __enter__(self) -> RssSampler:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def _status(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise EstopError(f"no {field} for process {self.pid}")

    def due(self) -> bool:
        """At most two samples a second: sampling asks the broker for offsets."""
        return time.monotonic() >= self._next

    def sample(self, in_flight: int) -> None:
        self._next = time.monotonic() + 0.5
        with suppress(OSError):
            self.samples.append((in_flight, self._status("VmRSS")))

    def summary(self) -> dict[str, Any]:
        peak = self._status("VmHWM")
        xs = [float(x) for x, _ in self.samples]
        ys = [float(y) for _, y in self.samples]
        slope = None
        if len(xs) > 2 and max(xs) > min(xs):
            slope = statistics.linear_regression(xs, ys).slope * 100_000
        return {"peak_rss_bytes": peak, "growth_bytes_per_100k_in_flight": slope,
                "max_in_flight": max(xs, default=0), "samples": len(xs)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def spread(values: list[float]) -> dict[str, Any]:
    """p50, p99 and how many samples: the figures a latency is reported by."""
    return {"p50": percentile(values, 50), "p99": percentile(values, 99), "samples": len(values)}


def end_offsets(settings: Settings, topic: str) -> int:
    reader = consumer(settings)
    try:
        metadata = reader.list_topics(topic, timeout=30).topics[topic]
        return sum(reader.get_watermark_offsets(TopicPartition(topic, p), timeout=30,
                                                cached=False)[1]
                   for p in metadata.partitions)
    finally:
        reader.close()


def committed(settings: Settings, group: str, topic: str) -> int:
    with admin(settings) as client:
        metadata = client.list_topics(topic, timeout=30).topics[topic]
        request = ConsumerGroupTopicPartitions(
            group, [TopicPartition(topic, p) for p in metadata.partitions])
        result = client.list_consumer_group_offsets([request])[group].result()
    return sum(max(tp.offset, 0) for tp in result.topic_partitions)


def rate_until(progress: Callable[[], int], target: int, timeout_s: float,
               guard: Callable[[], None], pids: list[int]) -> Measured:
    """Messages per second between the first progress seen and reaching ``target``, and the
    CPU the processes ``pids`` spent per message meanwhile."""
    first: tuple[float, int, float] | None = None
    deadline = time.monotonic() + timeout_s
    while True:
        guard()
        value = progress()
        now = time.monotonic()
        if first is None and value > 0:
            first = (now, value, cpu_seconds(pids))
        if value >= target:
            if first is None or now <= first[0]:
                raise EstopError("progress was too fast to measure; raise the sizes")
            return Measured((value - first[1]) / (now - first[0]),
                            (cpu_seconds(pids) - first[2]) / (value - first[1]) * 1e6)
        if now > deadline:
            raise EstopError(f"timed out at {value:,} of {target:,}")
        time.sleep(0.02)


def rate_from_join(settings: Settings, group: str, output: str, count: int,
                   guard: Callable[[], None], pids: list[int]) -> Measured:
    """Messages per second from the moment the group has its partitions to the moment all
    ``count`` are on ``output``: a framework that makes its output visible only when it
    commits (quixstreams exactly-once, every 5 s) is measured as fairly as one that commits
    every batch, which the first-progress rate of ``rate_until`` would not do."""
    with admin(settings) as client:
        deadline = time.monotonic() + 300
        while True:
            guard()
            description = client.describe_consumer_groups([group])[group].result()
            if description.state == ConsumerGroupState.STABLE and any(
                    m.assignment.topic_partitions for m in description.members):
                break
            if time.monotonic() > deadline:
                raise EstopError(f"group {group} never got its partitions")
            time.sleep(0.02)
    joined, cpu = time.monotonic(), cpu_seconds(pids)
    while end_offsets(settings, output) < count:
        guard()
        if time.monotonic() - joined > 900:
            raise EstopError(f"{output} never reached {count:,} records")
        time.sleep(0.02)
    return Measured(count / (time.monotonic() - joined),
                    (cpu_seconds(pids) - cpu) / count * 1e6)
