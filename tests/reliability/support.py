"""Helpers for the fault tests: worker processes that can be SIGKILLed and restarted, Prometheus
scrapes, and the accounting every fault must leave intact (read from the real topics, the
dispatchers' outboxes, the simulated providers and the analytics store).

Every wait is bounded by a generous deadline so a broken pipeline fails instead of hanging; no
assertion depends on how fast anything happened."""

from __future__ import annotations

import functools
import os
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Message, TopicPartition

from streams.campaigns.launcher import LaunchResult, launch, message_id
from streams.control.stop import StopResult, issue_stop
from streams.dispatch.changelog import LedgerStats
from streams.kafka.clients import consumer, headers_of, take
from streams.kafka.reader import assign_all, read_until
from streams.lab.harness import OutcomeWatch, WorkerProcess
from streams.models import HEADER_CAMPAIGN, HEADER_CHANNEL
from streams.providers.simulated import SimulatedQueueStats
from streams.serde import Serdes
from streams.settings import Settings
from streams.sink.exceptions import UnknownCampaignError
from streams.sink.report import campaign_report
from streams.sink.store import open_store
from tests.support import group_members, produce
from tests.support import wait_for as shared_wait_for

WAIT_S = 240.0  # upper bound for anything the pipeline must eventually do, faults included
REASON = "wrong discount code"


# Each suite waits as long as its slowest eventual outcome may take.
wait_for = functools.partial(shared_wait_for, timeout_s=WAIT_S)


# -- worker processes -----------------------------------------------------------------------


@dataclass
class Proc:
    """One `estop worker ARGS` subprocess slot: started, SIGKILLed and restarted in place."""

    name: str
    args: list[str]
    env: dict[str, str]
    settings: Settings
    process: WorkerProcess | None = None
    process_id: str = ""
    metrics_port: int = 0
    generations: list[WorkerProcess] = field(default_factory=list)

    def start(self, **env: str) -> Proc:
        """Start a new generation; ``env`` adds to the slot's environment for this one only
        (e.g. ``ESTOP_CRASH_AT``)."""
        process = WorkerProcess(self.settings, list(self.args), {**self.env, **env})
        self.generations.append(process)
        try:
            self.process_id = process.wait_ready()
        except BaseException:
            process.kill()
            raise
        self.metrics_port = process.metrics_port()
        self.process = process
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a crash."""
        assert self.process is not None
        self.process.kill()

    def wait_exit(self, timeout_s: float = WAIT_S) -> int:
        """Until the process ended by itself (a crash point); returns its exit code."""
        assert self.process is not None
        return self.process.process.wait(timeout_s)

    def alive(self) -> bool:
        return self.process is not None and self.process.process.poll() is None

    def check(self) -> None:
        assert self.process is not None
        self.process.check()

    def scrape(self) -> str:
        self.check()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            text: str = r.read().decode()
        return text

    def output(self) -> str:
        return "".join(line for p in self.generations for line in p.lines)


class Fleet:
    """The worker processes of one test; every one still running is stopped at teardown."""

    def __init__(self, settings: Settings, **env: str) -> None:
        self.settings = settings
        self.env = {"ESTOP_METRICS_PORT": "0", **env}
        self.procs: dict[str, Proc] = {}
        self.down: set[str] = set()  # killed, not restarted (yet)
        self.kills = 0
        self.restarts = 0

    def start(self, name: str, *args: str, crash_at: str | None = None) -> Proc:
        """Start a worker slot; with ``crash_at`` its first generation SIGKILLs itself at that
        crash point (see streams/faults.py)."""
        proc = Proc(name, list(args), dict(self.env), self.settings)
        self.procs[name] = proc
        self.down.discard(name)
        return proc.start(**({"ESTOP_CRASH_AT": crash_at} if crash_at else {}))

    def kill(self, name: str) -> None:
        self.procs[name].kill()
        self.down.add(name)
        self.kills += 1

    def crashed(self, name: str) -> None:
        """Wait until the slot's process killed itself at its crash point."""
        code = self.procs[name].wait_exit()
        assert code == -9, f"{name} exited with {code}, not by its crash point:\n{self.procs[name].output()}"
        self.down.add(name)
        self.kills += 1

    def restart(self, name: str) -> Proc:
        proc = self.procs[name]
        if proc.alive():
            proc.kill()
        self.restarts += 1
        self.down.discard(name)
        return proc.start()

    def check(self) -> None:
        """Every worker that should be running is (a dead one must not leave us waiting)."""
        for name, proc in self.procs.items():
            if name not in self.down:
                proc.check()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            for generation in proc.generations:
                if generation.process.poll() is None:
                    generation.stop()
            # Captured by pytest and shown only when the test failed.
            print(f"--- {proc.name} ({' '.join(proc.args)}): last lines")
            print("".join(proc.output().splitlines(keepends=True)[-60:]))


class Launch:
    """The campaign engine queueing a campaign on a thread of its own, while the test goes on."""

    def __init__(self, settings: Settings, serdes: Serdes, campaign_id: str, channels: list[str],
                 recipients: int, rate: float | None = None) -> None:
        self.results: list[LaunchResult] = []
        self.thread = threading.Thread(target=lambda: self.results.append(
            launch(settings, serdes, campaign_id, channels, recipients, rate)), daemon=True)
        self.thread.start()

    def queueing(self) -> bool:
        return self.thread.is_alive()

    def join(self) -> LaunchResult:
        self.thread.join(WAIT_S)
        assert self.results, "the engine did not finish queueing"
        return self.results[0]


def watch_until(settings: Settings, campaign_id: str, fleet: Fleet,
                ready: Callable[[OutcomeWatch], bool], what: str) -> int:
    """Tail the campaign's outcomes until ``ready`` (the workers must stay alive meanwhile);
    returns how many messages had one then."""
    watch = OutcomeWatch(settings, campaign_id)
    try:
        def check() -> bool:
            fleet.check()
            watch.poll(0.05)
            return ready(watch)

        wait_for(check, what, every_s=0)
        return watch.counter.total
    finally:
        watch.close()


# -- Kafka ----------------------------------------------------------------------------------


def read_all(settings: Settings, topic: str, timeout_s: float = WAIT_S) -> list[Message]:
    """Every committed record of ``topic`` present now. The deadline is long: a transaction left
    open by a killed producer holds read_committed readers back until the broker aborts it."""
    reader, ends = assign_all(settings, topic)
    found: list[Message] = []
    try:
        read_until(reader, topic, ends, lambda m: None if m.error() else found.append(m),
                   timeout_s=timeout_s)
    finally:
        reader.close()
    return found


def header(message: Message, name: str) -> str | None:
    for key, value in headers_of(message):
        if key == name and isinstance(value, bytes):
            return value.decode()
    return None


def send_request(campaign_id: str, channel: str, index: int, **changes: Any) -> dict[str, Any]:
    return {
        "message_id": message_id(campaign_id, channel, index),
        "campaign_id": campaign_id,
        "channel": channel,
        "recipient_id": f"r{index:08d}",
        "payload": "hello",
        "requested_at": int(time.time() * 1000),
        **changes,
    }


def produce_requests(settings: Settings, serdes: Serdes, topic: str, campaign_id: str, channel: str,
                     indexes: Iterable[int]) -> list[str]:
    """SendRequests of a campaign produced straight to ``topic``, the way the engine writes them."""
    requests = [send_request(campaign_id, channel, i) for i in indexes]
    produce(settings, topic, [(r["message_id"].encode(), serdes.send_request.encode(r)) for r in requests],
            headers=[(HEADER_CAMPAIGN, campaign_id.encode()), (HEADER_CHANNEL, channel.encode())])
    return [r["message_id"] for r in requests]


def stop(settings: Settings, serdes: Serdes, campaign_id: str, force: bool = False) -> StopResult:
    result = issue_stop(settings, serdes, campaign_id, REASON, [], by="fault test",
                        timeout_s=120, force=force)
    assert result.confirmed, f"stop not confirmed: {result.as_dict()}"
    assert result.confirmed_at_ms is not None
    return result


# -- accounting -----------------------------------------------------------------------------


@dataclass
class Events:
    """Every outcome event of one campaign on the event topics, decoded, duplicates kept."""

    sent: list[dict[str, Any]]
    not_sent: list[dict[str, Any]]
    failed: list[dict[str, Any]]

    def ids(self) -> Counter[str]:
        return Counter(e["message_id"] for e in [*self.sent, *self.not_sent, *self.failed])

    def duplicates(self) -> dict[str, int]:
        """Message ids with more than one event, on one topic or across them."""
        return {m: n for m, n in self.ids().items() if n > 1}


def campaign_events(settings: Settings, serdes: Serdes, campaign_id: str) -> Events:
    topics = settings.topics

    def of(topic: str, decode: Callable[[bytes | None], dict[str, Any]]) -> list[dict[str, Any]]:
        events = [decode(m.value()) for m in read_all(settings, topic) if m.value() is not None]
        return [e for e in events if e["campaign_id"] == campaign_id]

    return Events(of(topics.sent, serdes.sent.decode), of(topics.notsent, serdes.not_sent.decode),
                  of(topics.failed, serdes.failed.decode))


def outcome_topics(settings: Settings) -> list[str]:
    topics = settings.topics
    return [topics.sent, topics.notsent, topics.failed]


class Outcomes:
    """Tails the outcome topics from the beginning, noting which messages of a campaign have an
    outcome event (one per message id, by the campaign header: no decoding)."""

    def __init__(self, settings: Settings, campaign_id: str) -> None:
        self.campaign = campaign_id.encode()
        self.seen: set[bytes] = set()
        self.by_topic: Counter[str] = Counter()
        self._consumer = consumer(settings)
        parts = []
        for topic in outcome_topics(settings):
            metadata = self._consumer.list_topics(topic, timeout=settings.admin_timeout_s)
            parts += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.topics[topic].partitions]
        self._consumer.assign(parts)

    def poll(self, timeout_s: float = 0.2) -> int:
        for message in take(self._consumer, 10000, timeout_s):
            if message.error() or message.key() is None:
                continue
            headers = dict(headers_of(message))
            if headers.get(HEADER_CAMPAIGN) == self.campaign and message.key() not in self.seen:
                self.seen.add(message.key())  # type: ignore[arg-type]
                self.by_topic[message.topic() or ""] += 1
        return len(self.seen)

    def close(self) -> None:
        self._consumer.close()


def wait_outcomes(settings: Settings, campaign_id: str, expected: int,
                  check: Callable[[], None] = lambda: None, timeout_s: float = WAIT_S) -> None:
    """Until ``expected`` messages of the campaign have an outcome event; ``check`` runs on every
    round (e.g. that the workers are still alive)."""
    outcomes = Outcomes(settings, campaign_id)
    try:
        def complete() -> bool:
            check()
            return outcomes.poll(0.1) >= expected

        wait_for(complete, f"{expected} messages of {campaign_id} with an outcome event "
                 f"(have {len(outcomes.seen)})", timeout_s=timeout_s, every_s=0)
    finally:
        outcomes.close()


def report(settings: Settings, campaign_id: str) -> dict[str, Any]:
    store = open_store(settings)
    try:
        return campaign_report(store, campaign_id)
    finally:
        store.close()


def wait_reported(settings: Settings, campaign_id: str, planned: int,
                  timeout_s: float = WAIT_S) -> dict[str, Any]:
    """The analytics store accounts for every planned message (the sink may lag the topics)."""
    found: dict[str, Any] = {}

    def complete() -> bool:
        try:
            found.update(report(settings, campaign_id))
        except UnknownCampaignError:
            return False
        return int(found["accounted"]) >= planned

    wait_for(complete, f"the analytics store to account for {planned} messages of {campaign_id}",
             timeout_s=timeout_s, every_s=0.5)
    return found


def held_twice(settings: Settings, channel: str, campaign_id: str) -> int:
    """Messages of a campaign the channel's simulated provider holds more than once."""
    return SimulatedQueueStats(settings.data_dir, channel).copies(campaign_id)


def assert_exact(settings: Settings, serdes: Serdes, campaign_id: str, planned: dict[str, int],
                 stop_result: StopResult | None) -> tuple[Events, dict[str, Any]]:
    """What every fault must leave behind: each planned message has exactly one outcome event
    on the topics and exactly one outcome in the analytics report; nothing was handed to a
    provider after the stop was confirmed; nothing was handed over or delivered twice."""
    total = sum(planned.values())
    wait_outcomes(settings, campaign_id, total)
    events = campaign_events(settings, serdes, campaign_id)
    assert events.duplicates() == {}, "a message has more than one outcome event"
    expected = {message_id(campaign_id, c, i) for c, n in planned.items() for i in range(n)}
    assert set(events.ids()) == expected, "a planned message has no outcome event"
    sent_ids = Counter(e["message_id"] for e in events.sent)
    assert all(n == 1 for n in sent_ids.values()), "a message was delivered twice"

    found = wait_reported(settings, campaign_id, total)
    assert found["accounted"] == total
    assert found["pending"] == 0
    assert found["sent"] == len(events.sent)
    assert found["not_sent"] == len(events.not_sent)
    assert found.get("failed", 0) == len(events.failed)
    for channel, count in planned.items():
        entry = found["by_channel"][channel]
        assert entry["accounted"] == count, (channel, entry)
        assert entry["sent"] == sum(1 for e in events.sent if e["channel"] == channel), channel

    for channel in planned:
        outbox = LedgerStats(settings, channel)
        if stop_result is not None:
            assert stop_result.confirmed_at_ms is not None
            assert outbox.handed_after(campaign_id, stop_result.confirmed_at_ms) == 0, channel
        if settings.provider_url(channel) == "simulated":
            assert held_twice(settings, channel, campaign_id) == 0, \
                f"{channel}: a message is held twice by the provider"
        delivered = sum(1 for e in events.sent if e["channel"] == channel)
        cancelled = sum(1 for e in events.not_sent
                        if e["channel"] == channel and "cancelled at the provider" in e["reason"])
        # Whatever the provider accepted was either delivered or cancelled there, once.
        assert outbox.handed(campaign_id) == delivered + cancelled, channel
        assert outbox.at_provider(campaign_id) == 0, channel
    return events, found


def env_of(settings: Settings) -> dict[str, str]:
    """The environment an `estop` subprocess needs for this test's broker, topics and data."""
    env = dict(os.environ)
    env.update({
        "ESTOP_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "ESTOP_TOPIC_PREFIX": settings.topic_prefix,
        "ESTOP_DATA_DIR": str(settings.data_dir),
    })
    return env


def wait_joined(settings: Settings, process_id: str, group: str) -> None:
    wait_for(lambda: process_id in group_members(settings, group), f"{process_id} in group {group}",
             every_s=0.2)
