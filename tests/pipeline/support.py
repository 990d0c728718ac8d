"""Helpers for the pipeline tests: worker processes, records in and out of the real broker.

Every wait here is bounded by a generous deadline so a broken pipeline fails instead of hanging;
no assertion depends on how fast anything happened.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Message, TopicPartition

from streams.campaigns.launcher import message_id, recipient_id
from streams.campaigns.lifecycle import publish_status
from streams.campaigns.status import OutcomeCounter
from streams.clock import now_ms
from streams.dispatch.changelog import LedgerStats
from streams.kafka.clients import Headers, consumer, headers_of, producer
from streams.kafka.reader import high_watermark, read_topic
from streams.lab.harness import OutcomeWatch, WorkerProcess
from streams.models import HEADER_CAMPAIGN, HEADER_CHANNEL, STATE_SENDING
from streams.serde import Serdes
from streams.settings import Settings
from streams.sink.exceptions import UnknownCampaignError
from streams.sink.report import campaign_report
from streams.sink.store import open_store
from tests.support import group_members
from tests.support import wait_for as shared_wait_for

WAIT_S = 180.0  # upper bound for anything the pipeline must eventually do


# Each suite waits as long as its slowest eventual outcome may take.
wait_for = functools.partial(shared_wait_for, timeout_s=WAIT_S)


def provider_env(rate: float, delay_s: float) -> dict[str, str]:
    """Environment for a worker whose simulated providers are this slow."""
    return {"ESTOP_PROVIDER_RATE": str(rate), "ESTOP_PROVIDER_DELAY_S": str(delay_s)}


def cli_env(settings: Settings) -> dict[str, str]:
    """Environment that points an `estop` subprocess at this test's broker, topics and data."""
    return {
        "ESTOP_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "ESTOP_TOPIC_PREFIX": settings.topic_prefix,
        "ESTOP_DATA_DIR": str(settings.data_dir),
    }


class Workers:
    """Worker subprocesses started by one test; every one is stopped at teardown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started: list[WorkerProcess] = []

    def start(self, *extra_args: str, rate: float | None = None, delay_s: float | None = None,
              everything: bool = False, env: dict[str, str] | None = None
              ) -> tuple[WorkerProcess, str]:
        """Start ``estop worker EXTRA_ARGS`` and wait for its ready line; returns it and its
        process id (the client.id it uses in consumer groups and acks).

        Without ``--role`` arguments it runs every gate and dispatcher, the stages these tests
        are about; ``everything`` runs the embedded default instead (the analytics sink too).
        ``env`` adds settings (e.g. the provider URLs of stand-in providers)."""
        args = list(extra_args)
        if "--role" not in args and not everything:
            args += ["--role", "gate", "--role", "dispatcher"]
        env = {**provider_env(rate or self.settings.provider_rate,
                              self.settings.provider_delay_s if delay_s is None else delay_s),
               **(env or {})}
        worker = WorkerProcess(self.settings, extra_args=args, env=env)
        self.started.append(worker)
        return worker, worker.wait_ready()

    def stop_all(self) -> None:
        for worker in self.started:
            if worker.process.poll() is None:
                worker.stop()
            # Captured by pytest and shown only when the test failed.
            print(f"--- worker {worker.process.pid} exited {worker.process.returncode}; last lines:")
            print("".join(worker.lines[-40:]))


def wait_joined(settings: Settings, process_ids: Iterable[str], groups: Iterable[str]) -> None:
    """Wait until every process is a member of each of ``groups`` (so it is in the live set a
    stop waits for, and has partitions or will get them)."""
    wanted = set(process_ids)
    for group in groups:
        def joined(group: str = group) -> bool:
            return wanted <= group_members(settings, group)

        wait_for(joined, f"{sorted(wanted)} in group {group}")


def announce(settings: Settings, serdes: Serdes, campaign_id: str, channels: list[str],
             planned: int, state: str = STATE_SENDING) -> None:
    """Publish a lifecycle record for a campaign, the way the campaign engine would."""
    out = producer(settings)
    publish_status(out, settings, serdes, campaign_id, state, channels,
                   dict.fromkeys(channels, planned))
    assert out.flush(30) == 0


def send_request(campaign_id: str, channel: str, index: int) -> dict[str, Any]:
    return {
        "message_id": message_id(campaign_id, channel, index),
        "campaign_id": campaign_id,
        "channel": channel,
        "recipient_id": recipient_id(index),
        "payload": "hello",
        "requested_at": now_ms(),
    }


def produce_values(settings: Settings, topic: str, values: Iterable[bytes],
                   partition: int | None = None, headers: Headers | None = None) -> None:
    """Produce raw values in order (to one partition when given) and wait for the broker."""
    errors: list[KafkaError] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            errors.append(error)

    out = producer(settings)
    for value in values:
        kwargs: dict[str, Any] = {"value": value, "on_delivery": delivered}
        if partition is not None:
            kwargs["partition"] = partition
        if headers is not None:
            kwargs["headers"] = headers
        out.produce(topic, **kwargs)
    assert out.flush(30) == 0
    assert errors == []


def produce_requests(settings: Settings, serdes: Serdes, topic: str, campaign_id: str,
                     channel: str, indexes: Iterable[int], partition: int | None = None) -> list[str]:
    """SendRequests of a campaign produced straight to ``topic``; returns their message ids."""
    requests = [send_request(campaign_id, channel, i) for i in indexes]
    produce_values(settings, topic, [serdes.send_request.encode(r) for r in requests], partition,
                   headers=[(HEADER_CAMPAIGN, campaign_id.encode()), (HEADER_CHANNEL, channel.encode())])
    return [r["message_id"] for r in requests]


def wait_outcomes(settings: Settings, campaign_id: str, expected: int,
                  timeout_s: float = WAIT_S) -> OutcomeCounter:
    """Tail sent and notsent until ``expected`` messages of the campaign have an outcome."""
    watch = OutcomeWatch(settings, campaign_id)
    try:
        deadline = time.monotonic() + timeout_s
        while watch.counter.total < expected:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"only {watch.counter.total} of {expected} messages of {campaign_id} have an "
                    f"outcome after {timeout_s:.0f}s"
                )
            watch.poll()
        return watch.counter
    finally:
        watch.close()


@dataclass(frozen=True)
class Event:
    kind: str  # "sent" or "notsent"
    record: dict[str, Any]

    @property
    def message_id(self) -> str:
        return str(self.record["message_id"])


def read_events(settings: Settings, serdes: Serdes, campaign_id: str) -> list[Event]:
    """Every sent and notSent event of a campaign on the two topics, decoded."""
    events: list[Event] = []
    for kind, topic, serde in (("sent", settings.topics.sent, serdes.sent),
                               ("notsent", settings.topics.notsent, serdes.not_sent)):
        def handle(message: Message, kind: str = kind, serde: Any = serde) -> None:
            if message.error() or message.value() is None:
                return
            record = serde.decode(message.value())
            if record["campaign_id"] == campaign_id:
                events.append(Event(kind, record))

        read_topic(settings, topic, handle)
    return events


def duplicates(events: list[Event]) -> dict[str, int]:
    """Message ids with more than one event on the two topics."""
    counts = Counter(e.message_id for e in events)
    return {m: n for m, n in counts.items() if n > 1}


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """High watermark of every partition of ``topic``, fresh from the broker."""
    reader = consumer(settings)
    try:
        metadata = reader.list_topics(topic, timeout=30)
        return {p: high_watermark(reader, TopicPartition(topic, p), 30)
                for p in metadata.topics[topic].partitions}
    finally:
        reader.close()


def records(settings: Settings, topic: str) -> list[Message]:
    """Every record of ``topic`` present now."""
    found: list[Message] = []
    read_topic(settings, topic, lambda m: None if m.error() else found.append(m))
    return found


def control_records(settings: Settings, campaign_id: str) -> list[Message]:
    """Records on campaign-control keyed by this campaign."""
    return [m for m in records(settings, settings.topics.control) if m.key() == campaign_id.encode()]


def header(message: Message, name: str) -> str | None:
    for key, value in headers_of(message):
        if key == name and isinstance(value, bytes):
            return value.decode()
    return None


def handed(settings: Settings, campaign_id: str, channels: Iterable[str]) -> dict[str, int]:
    """Messages of the campaign each channel's provider ever accepted."""
    return {c: LedgerStats(settings, c).handed(campaign_id) for c in channels}


class StuckGate:
    """A member of the email gate group that never applies a command: a hung worker."""

    client_id = "stuck-gate@test"

    def __init__(self, settings: Settings) -> None:
        self.consumer = consumer(settings, **{
            "group.id": settings.topics.gate_group("email"),
            "client.id": self.client_id,
            "partition.assignment.strategy": "cooperative-sticky",
        })
        self.consumer.subscribe([settings.topics.send_requests("email")])
        self.running = threading.Event()
        self.running.set()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while self.running.is_set():
            self.consumer.poll(0.1)  # stays in the group, never reads the control topic

    def close(self) -> None:
        self.running.clear()
        self.thread.join(10)
        self.consumer.close()


def stored_outcomes(settings: Settings, campaign_id: str) -> int:
    """Outcomes of a campaign in the analytics store (0 before the sink stored any)."""
    store = open_store(settings)
    try:
        return int(campaign_report(store, campaign_id)["accounted"])
    except UnknownCampaignError:
        return 0
    finally:
        store.close()


def accounted_report(settings: Settings, campaign_id: str, planned: int) -> dict[str, Any]:
    """The campaign's report from the analytics store, once it accounts for all ``planned``."""
    wait_for(lambda: stored_outcomes(settings, campaign_id) == planned,
             "every outcome in the analytics store")
    store = open_store(settings)
    try:
        return campaign_report(store, campaign_id)
    finally:
        store.close()
