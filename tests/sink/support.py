"""Helpers for the sink tests against the real broker: worker and `estop` subprocesses pointed at
one test's topics and store, Prometheus scrapes, the sink group's offsets, plain reads of the
event topics. Every wait is bounded so a broken pipeline fails instead of hanging; no assertion
depends on how fast anything happened."""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, Message, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from streams.campaigns.status import OutcomeCounter
from streams.kafka.clients import admin, consumer, headers_of
from streams.kafka.reader import read_topic
from streams.lab.harness import WorkerProcess
from streams.serde import Serdes
from streams.settings import Settings
from tests.support import ESTOP
from tests.support import wait_for as shared_wait_for

WAIT_S = 180.0  # upper bound for anything the pipeline must eventually do


# Each suite waits as long as its slowest eventual outcome may take.
wait_for = functools.partial(shared_wait_for, timeout_s=WAIT_S)


def estop_env(settings: Settings) -> dict[str, str]:
    """The whole environment of an `estop` subprocess for this test: its broker, topics, data
    folder, and its analytics store (PostgreSQL only when the settings name one)."""
    env = {k: v for k, v in os.environ.items() if k != "ESTOP_ANALYTICS_DSN"}
    env.update({
        "ESTOP_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "ESTOP_TOPIC_PREFIX": settings.topic_prefix,
        "ESTOP_DATA_DIR": str(settings.data_dir),
    })
    if settings.analytics_dsn is not None:
        env["ESTOP_ANALYTICS_DSN"] = settings.analytics_dsn.get_secret_value()
    if settings.schema_registry_url is not None:
        env["ESTOP_SCHEMA_REGISTRY_URL"] = settings.schema_registry_url
    return env


def run_cli(settings: Settings, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    """`estop ARGS` as a user runs it against this test's topics and store."""
    return subprocess.run([str(ESTOP), *args], env=estop_env(settings), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout_s, check=False)


@dataclass
class Worker:
    process: WorkerProcess
    process_id: str
    metrics_port: int

    def scrape(self) -> str:
        self.process.check()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            text: str = r.read().decode()
        return text

    def stop(self) -> int:
        return self.process.stop()

    def output(self) -> str:
        return "".join(self.process.lines[-40:])


@dataclass
class Workers:
    """Worker subprocesses of one test (or module); every one is stopped at teardown."""

    settings: Settings
    started: list[Worker] = field(default_factory=list)

    def start(self, *args: str) -> Worker:
        """`estop worker ARGS` with this test's store and a metrics port of its own."""
        env = estop_env(self.settings)
        env["ESTOP_METRICS_PORT"] = "0"  # a free port: parallel workers never collide
        with pytest.MonkeyPatch.context() as patch:
            # WorkerProcess starts from os.environ: the store is exactly the one env names.
            patch.delenv("ESTOP_ANALYTICS_DSN", raising=False)
            process = WorkerProcess(self.settings, list(args), env)
        try:
            process_id = process.wait_ready()
        except BaseException:
            process.kill()
            raise
        worker = Worker(process, process_id, process.metrics_port())
        self.started.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            code = worker.stop()
            # Captured by pytest and shown only when a test failed.
            print(f"--- worker {worker.process_id} exited {code}; last lines:\n{worker.output()}")


def samples(text: str, sample: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == sample}


def header_values(message: Message) -> dict[str, bytes]:
    return {k: v for k, v in headers_of(message) if isinstance(v, bytes)}


def read_all(settings: Settings, topic: str) -> list[Message]:
    """Every record of ``topic`` present now (a plain assign-and-read, no consumer group)."""
    messages: list[Message] = []
    read_topic(settings, topic, lambda m: messages.append(m) if not m.error() else None)
    return messages


def campaign_events(settings: Settings, serdes: Serdes,
                    campaign_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every sent and notSent event of a campaign, decoded, as on the topics (duplicates kept)."""
    sent = [serdes.sent.decode(m.value()) for m in read_all(settings, settings.topics.sent)]
    not_sent = [serdes.not_sent.decode(m.value()) for m in read_all(settings, settings.topics.notsent)]
    return ([e for e in sent if e["campaign_id"] == campaign_id],
            [e for e in not_sent if e["campaign_id"] == campaign_id])


# -- the sink's consumer group ----------------------------------------------------------------


def count_outcomes(settings: Settings, campaign_id: str) -> OutcomeCounter:
    """A plain count of the event topics from their beginning, one outcome per message id: the
    oracle the analytics store is held against."""
    counter = OutcomeCounter(campaign_id)
    for topic in (settings.topics.sent, settings.topics.notsent, settings.topics.failed):
        read_topic(settings, topic, counter.add)
    return counter


def sink_topics(settings: Settings) -> list[str]:
    t = settings.topics
    return [t.sent, t.notsent, t.status, t.control, t.acks]


def partitions(settings: Settings, topics: Sequence[str] | None = None) -> list[TopicPartition]:
    """Every partition of ``topics`` (default: the sink's)."""
    reader = consumer(settings)
    try:
        found = []
        for topic in topics or sink_topics(settings):
            metadata = reader.list_topics(topic, timeout=settings.admin_timeout_s)
            found += [TopicPartition(topic, p) for p in sorted(metadata.topics[topic].partitions)]
        return found
    finally:
        reader.close()


def reset_sink_offsets(settings: Settings) -> None:
    """Rewind the sink's group to offset 0 on every partition of its topics (the group must have
    no member; a member that only just left may still be counted for a moment)."""
    group = settings.topics.sink_group
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(tp.topic, tp.partition, 0) for tp in partitions(settings)])
    deadline = time.monotonic() + 60
    with admin(settings) as client:
        while True:
            future = client.alter_consumer_group_offsets([request], request_timeout=30)[group]
            try:
                result = future.result(timeout=35)
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"cannot reset the offsets of {group}: {exc}") from exc
                time.sleep(0.5)
                continue
            failed = [tp for tp in result.topic_partitions if tp.error is not None]
            assert failed == [], f"offset reset failed for {failed}"
            return


def sink_lag(settings: Settings, group: str | None = None, topics: Sequence[str] | None = None
             ) -> dict[tuple[str, int], tuple[int, int]]:
    """(committed offset, end offset) of a consumer group (default: the sink's) on every
    partition of its topics."""
    reader = consumer(settings, **{"group.id": group or settings.topics.sink_group})  # never subscribes
    try:
        committed = reader.committed(partitions(settings, topics), timeout=settings.admin_timeout_s)
        lag = {}
        for tp in committed:
            _, high = reader.get_watermark_offsets(TopicPartition(tp.topic, tp.partition),
                                                   timeout=settings.admin_timeout_s, cached=False)
            lag[(tp.topic, tp.partition)] = (tp.offset, high)
        return lag
    finally:
        reader.close()


def caught_up(settings: Settings) -> bool:
    """The sink committed the end offset of every partition with records: lag 0."""
    return all(committed == high for committed, high in sink_lag(settings).values() if high > 0)


def delete_topics(settings: Settings) -> None:
    """Remove the topics of ``settings`` (module-scoped scenarios clean up after themselves)."""
    with admin(settings) as client:
        names = [n for n in client.list_topics(timeout=settings.admin_timeout_s).topics
                 if n.startswith(settings.topic_prefix)]
        if not names:
            return
        for future in client.delete_topics(names, operation_timeout=settings.admin_timeout_s).values():
            with contextlib.suppress(KafkaException):  # a leftover topic on a test broker is harmless
                future.result()
