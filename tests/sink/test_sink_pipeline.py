"""The analytics sink end to end, against the real broker and a real store of each engine.

One stopped multi-channel campaign per store (a module-scoped scenario, run once with SQLite and
once with PostgreSQL): a full `estop worker` with slow providers carries it, the stop comes in
while the campaign is still being queued, and the worker's own sink stores the outcomes. After
the stop the campaign engine queues some requests a second time (every one already sent, a few
halted): the gate halts them, so those messages get a second outcome event, in the gate's
transactions. The tests then hold the store against a plain read of the ``sent`` and
``notsent`` topics: the report, `estop report`, `estop export`, the metrics, and a replay of
everything from offset 0."""

from __future__ import annotations

import csv
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from streams.campaigns.launcher import LaunchResult, launch
from streams.clock import now_ms
from streams.control.stop import StopResult, issue_stop
from streams.kafka.topics import create_topics
from streams.lab.broker import BrokerHandle
from streams.lab.harness import OutcomeWatch
from streams.models import CHANNELS, HEADER_CAMPAIGN, HEADER_CHANNEL, STAGES
from streams.serde import Serdes
from streams.settings import Settings, Topics, load_settings
from streams.sink.report import campaign_report
from streams.sink.store import OutcomeStore, open_store
from tests.sink.conftest import STORES, PostgresServer
from tests.sink.support import (
    WAIT_S,
    Worker,
    Workers,
    campaign_events,
    caught_up,
    count_outcomes,
    delete_topics,
    header_values,
    read_all,
    reset_sink_offsets,
    run_cli,
    samples,
    sink_lag,
    wait_for,
)
from tests.support import metric, produce

CAMPAIGN_CHANNELS = ["email", "sms", "push"]
RECIPIENTS = 1000  # per channel: 3,000 messages
LAUNCH_RATE = 300.0  # recipients queued per second: the stop lands while the campaign is Sending
PROVIDER_RATE = 150.0  # handoffs per second per channel: a backlog builds at the provider stage
PROVIDER_DELAY_S = 0.5
STOP_AFTER_SENT = 60
REQUEUED_HALTED = 20  # halted messages queued again per channel (besides every sent one)
REASON = "wrong discount code in the email"


@dataclass
class Scenario:
    store_kind: str
    settings: Settings
    serdes: Serdes
    campaign_id: str
    planned: int
    launched: LaunchResult
    stop: StopResult
    requeued: list[str]  # message ids queued a second time after the stop
    workers: Workers
    worker: Worker
    metrics_before: str  # scraped once the worker was ready, before the launch
    metrics_after: str  # scraped once the sink had stored every outcome

    def store(self) -> OutcomeStore:
        return open_store(self.settings)

    def report(self) -> dict[str, Any]:
        store = self.store()
        try:
            return campaign_report(store, self.campaign_id)
        finally:
            store.close()


def _requeue(settings: Settings, serdes: Serdes, campaign_id: str) -> list[str]:
    """Queue again, after the stop, every request already sent and a few halted ones (as a
    campaign engine recovering from a crash might): the gate must halt all of them."""
    sent_events, not_sent_events = campaign_events(settings, serdes, campaign_id)
    chosen = list(sent_events)
    for channel in CAMPAIGN_CHANNELS:
        chosen += [e for e in not_sent_events if e["channel"] == channel][:REQUEUED_HALTED]
    for channel in CAMPAIGN_CHANNELS:
        requests = [(e["message_id"].encode(), serdes.send_request.encode({
            "message_id": e["message_id"], "campaign_id": campaign_id, "channel": channel,
            "recipient_id": e["recipient_id"], "payload": "again", "requested_at": now_ms(),
        })) for e in chosen if e["channel"] == channel]
        produce(settings, settings.topics.send_requests(channel), requests,
                headers=[(HEADER_CAMPAIGN, campaign_id.encode()), (HEADER_CHANNEL, channel.encode())])
    return [e["message_id"] for e in chosen]


def _run_stopped_campaign(settings: Settings, serdes: Serdes, workers: Workers, campaign_id: str
                          ) -> tuple[Worker, LaunchResult, StopResult, list[str], str, str]:
    worker = workers.start()  # every gate, every dispatcher and the sink
    before = worker.scrape()
    launched: dict[str, Any] = {}

    def run_launch() -> None:
        try:
            launched["result"] = launch(settings, serdes, campaign_id, CAMPAIGN_CHANNELS,
                                        RECIPIENTS, LAUNCH_RATE)
        except BaseException as exc:
            launched["error"] = exc
            raise

    launcher = threading.Thread(target=run_launch, name="launcher", daemon=True)
    launcher.start()
    watch = OutcomeWatch(settings, campaign_id)
    planned = RECIPIENTS * len(CAMPAIGN_CHANNELS)
    try:
        deadline = time.monotonic() + WAIT_S
        while watch.sent() < STOP_AFTER_SENT:
            worker.process.check()
            assert "error" not in launched, f"the launcher failed: {launched.get('error')!r}"
            assert time.monotonic() < deadline, f"only {watch.sent()} sent after {WAIT_S:.0f}s"
            watch.poll()
        stop = issue_stop(settings, serdes, campaign_id, REASON, [], by="sink-test", timeout_s=60)
        assert stop.confirmed, f"the stop was not confirmed: {stop.as_dict()}"
        launcher.join(WAIT_S)
        assert "result" in launched, f"the launcher did not finish: {launched.get('error')!r}"
        while watch.counter.total < planned:
            worker.process.check()
            assert time.monotonic() < deadline + WAIT_S, (
                f"only {watch.counter.total} of {planned} outcomes on the topics")
            watch.poll()
    finally:
        watch.close()

    requeued = _requeue(settings, serdes, campaign_id)
    store = open_store(settings)
    try:
        def stored() -> bool:
            report = campaign_report(store, campaign_id)
            acks = sum(s["acks"] for s in report["stops"])
            return report["accounted"] == planned and acks == len(stop.acks)

        wait_for(stored, f"the sink to store all {planned} outcomes and the stop's acks")
    finally:
        store.close()
    after = ""

    queued = sum(launched["result"].queued.values()) + len(requeued)
    sent_events, _ = campaign_events(settings, serdes, campaign_id)
    conflicts = len(set(requeued) & {e["message_id"] for e in sent_events})  # sent, then halted

    def counted() -> bool:
        nonlocal after
        after = worker.scrape()
        return (metric(after, "estop_sink_outcomes_total") == planned
                and metric(after, "estop_gate_requests_total") == queued
                and metric(after, "estop_sink_conflicts_total") == conflicts)

    wait_for(counted, "the metrics to count every request through the gate and every outcome stored")
    return worker, launched["result"], stop, requeued, before, after


@pytest.fixture(scope="module", params=STORES)
def scenario(request: pytest.FixtureRequest, broker: BrokerHandle,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    database: tuple[PostgresServer, str] | None = None
    dsn = None
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        name, dsn = server.create_database()
        database = (server, name)
    settings = load_settings(
        bootstrap_servers=broker.bootstrap_servers,
        topic_prefix=f"t{uuid4().hex[:8]}-",
        data_dir=tmp_path_factory.mktemp(f"sink-{request.param}") / "data",
        partitions=3,
        analytics_dsn=dsn,
        provider_rate=PROVIDER_RATE,
        provider_delay_s=PROVIDER_DELAY_S,
    )
    create_topics(settings, say=lambda _: None)
    serdes = Serdes()
    workers = Workers(settings)
    campaign_id = f"spring-sale-{request.param}"
    try:
        worker, launched, stop, requeued, before, after = _run_stopped_campaign(
            settings, serdes, workers, campaign_id)
        yield Scenario(request.param, settings, serdes, campaign_id,
                       RECIPIENTS * len(CAMPAIGN_CHANNELS), launched, stop, requeued, workers,
                       worker, before, after)
    finally:
        workers.stop_all()
        delete_topics(settings)
        if database is not None:
            database[0].drop_database(database[1])


def test_report_equals_a_plain_count_of_the_event_topics(scenario: Scenario) -> None:
    counter = count_outcomes(scenario.settings, scenario.campaign_id)
    report = scenario.report()
    print(json.dumps(report, indent=1))  # shown when the test fails

    assert counter.total == scenario.planned
    assert set(report["by_channel"]) == set(CAMPAIGN_CHANNELS)
    for channel in CAMPAIGN_CHANNELS:
        counted, stored = counter.counts[channel], report["by_channel"][channel]
        assert stored["planned"] == RECIPIENTS
        assert stored["sent"] == counted.sent, channel
        assert stored["not_sent"] == counted.not_sent_total, channel
        assert stored["not_sent_by_stage"] == counted.not_sent, channel
        assert (stored["accounted"], stored["pending"]) == (RECIPIENTS, 0), channel
    assert report["total"] == scenario.planned
    assert report["sent"] == sum(c.sent for c in counter.counts.values())
    assert report["not_sent"] == sum(c.not_sent_total for c in counter.counts.values())
    assert report["not_sent_by_stage"] == {
        stage: sum(c.not_sent[stage] for c in counter.counts.values()) for stage in STAGES}
    assert report["sent"] > 0 and report["not_sent"] > 0  # the stop split the campaign
    assert len(scenario.requeued) > report["sent"]  # queued twice, still one outcome each
    assert report["state"] == "Stopped"
    [stop] = report["stops"]
    assert (stop["command_id"], stop["requested_by"], stop["reason"], stop["channels"]) == (
        scenario.stop.command_id, "sink-test", REASON, [])
    assert stop["acks"] == len(scenario.stop.acks)
    assert report["stop_to_last_halted_accounted_s"] is not None
    assert report["stop_to_last_halted_accounted_s"] >= 0
    store = scenario.store()
    try:
        assert store.handoffs_after_confirmation() == {}
    finally:
        store.close()


def test_estop_report_prints_the_same_numbers(scenario: Scenario) -> None:
    done = run_cli(scenario.settings, "report", scenario.campaign_id, "--json")

    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    report = scenario.report()
    assert printed == report
    for key in ("total", "sent", "not_sent", "by_channel", "not_sent_by_stage", "stops"):
        assert printed[key] == report[key]

    table = run_cli(scenario.settings, "report", scenario.campaign_id)
    assert table.returncode == 0, table.stderr
    words = " ".join(table.stdout.split())  # the table wraps long lines at the terminal width
    assert printed["stopped_by"] == "sink-test"
    assert f"{scenario.campaign_id}: Stopped by sink-test" in words
    assert f"{REASON} (1 acknowledgements)" in words
    total_row = next(line for line in table.stdout.splitlines() if "total" in line)
    for number in (report["total"], report["sent"], report["not_sent"]):
        assert f"{number:,}" in total_row

    unknown = run_cli(scenario.settings, "report", "no-such-campaign", "--json")
    assert unknown.returncode == 2
    assert "unknown campaign 'no-such-campaign'" in unknown.stderr
    assert unknown.stdout == ""


def _export(scenario: Scenario, out: Path, *args: str) -> list[dict[str, str]]:
    done = run_cli(scenario.settings, "export", scenario.campaign_id, *args, "--out", str(out))
    assert done.returncode == 0, done.stderr
    with out.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert f"wrote {len(rows):,} " in done.stdout
    return rows


def test_export_holds_exactly_the_not_sent_recipients(scenario: Scenario, tmp_path: Path) -> None:
    sent_events, not_sent_events = campaign_events(scenario.settings, scenario.serdes,
                                                   scenario.campaign_id)
    sent_ids = {e["message_id"] for e in sent_events}
    halted: dict[str, dict[str, Any]] = {}
    for event in not_sent_events:  # a message's events share a partition: the first one counts
        if event["message_id"] not in sent_ids:
            halted.setdefault(event["message_id"], event)

    rows = _export(scenario, tmp_path / "not-sent.csv", "--status", "not_sent")

    assert len(rows) == scenario.report()["not_sent"] == len(halted)
    assert {r["message_id"] for r in rows} == set(halted)
    for row in rows:
        event = halted[row["message_id"]]
        assert (row["channel"], row["recipient_id"], row["outcome"], row["stage"]) == (
            event["channel"], event["recipient_id"], "not_sent", event["stage"])
    sms = _export(scenario, tmp_path / "not-sent-sms.csv", "--status", "not_sent", "--channel", "sms")
    assert {r["message_id"] for r in sms} == {m for m, e in halted.items() if e["channel"] == "sms"}
    sent = _export(scenario, tmp_path / "sent.csv", "--status", "sent")
    assert {r["message_id"] for r in sent} == sent_ids
    assert len(sent) == scenario.report()["sent"]


def test_metrics_move_during_a_stopped_campaign(scenario: Scenario) -> None:
    before, after = scenario.metrics_before, scenario.metrics_after
    report = scenario.report()

    for name in ("estop_gate_requests_total", "estop_notsent_events_total",
                 "estop_provider_handoffs_total", "estop_sink_outcomes_total"):
        assert metric(after, name) > metric(before, name), name
    # Exact, too: one process carried the whole campaign.
    sent_events, not_sent_events = campaign_events(scenario.settings, scenario.serdes,
                                                   scenario.campaign_id)
    queued = sum(scenario.launched.queued.values()) + len(scenario.requeued)
    assert metric(after, "estop_gate_requests_total") == queued
    assert metric(after, "estop_gate_requests_total", result="halted") >= len(scenario.requeued)
    never_queued = sum(scenario.launched.never_queued.values())  # published by the launcher
    assert metric(after, "estop_notsent_events_total") == len(not_sent_events) - never_queued
    assert metric(after, "estop_provider_handoffs_total") >= report["sent"]
    assert metric(after, "estop_sink_outcomes_total", outcome="sent") == report["sent"]
    assert metric(after, "estop_sink_outcomes_total", outcome="not_sent") == report["not_sent"]
    # Every sent message was queued again and halted: each is one conflict, counted once.
    both = {e["message_id"] for e in sent_events} & {e["message_id"] for e in not_sent_events}
    assert len(both) == report["sent"]
    assert metric(after, "estop_sink_conflicts_total") == len(both)
    assert metric(after, "estop_stops_applied_total") >= 1
    leaks = samples(after, "estop_handoffs_after_confirmed_stop")
    assert leaks == {(("channel", channel),): 0.0 for channel in CHANNELS}
    lag_topics = {dict(k)["topic"] for k in samples(after, "estop_consumer_lag_records")
                  if dict(k)["role"] == "sink"}
    topics = scenario.settings.topics
    assert lag_topics == {topics.sent, topics.notsent, topics.failed}


def test_replaying_the_sink_from_offset_zero_changes_nothing(scenario: Scenario) -> None:
    settings = scenario.settings
    report = scenario.report()
    sent_events, not_sent_events = campaign_events(settings, scenario.serdes, scenario.campaign_id)
    both = {e["message_id"] for e in sent_events} & {e["message_id"] for e in not_sent_events}
    assert scenario.worker.stop() == 0

    reset_sink_offsets(settings)
    rewound = sink_lag(settings)
    assert all(committed == 0 for committed, _ in rewound.values())
    assert sum(high for _, high in rewound.values()) > scenario.planned  # everything to re-read
    sink = scenario.workers.start("--role", "sink")
    wait_for(lambda: caught_up(settings), "the sink's committed offsets to reach every end offset")

    def lag_gauge_zero() -> bool:
        text = sink.scrape()
        gauges = [v for k, v in samples(text, "estop_consumer_lag_records").items()
                  if dict(k)["role"] == "sink"]
        return len(gauges) == 3 and sum(gauges) == 0  # sent, notsent, failed

    wait_for(lag_gauge_zero, "the sink's lag gauge to show 0")
    text = sink.scrape()
    assert metric(text, "estop_sink_store_seconds_count") > 0  # it did read and write again
    assert metric(text, "estop_sink_outcomes_total") == 0  # nothing new
    assert metric(text, "estop_sink_conflicts_total") == 0  # the events' conflicts: counted before
    assert metric(scenario.metrics_after, "estop_sink_conflicts_total") == len(both) > 0
    assert scenario.report() == report
    store = scenario.store()
    try:
        assert store.handoffs_after_confirmation() == {}
    finally:
        store.close()


# -- bad input -----------------------------------------------------------------------------------


def not_sent_event(serdes: Serdes, message_id: str, channel: str) -> bytes:
    return serdes.not_sent.encode({
        "event": "message.notSent", "message_id": message_id, "campaign_id": "dlq-campaign",
        "channel": channel, "recipient_id": "r00000001", "stage": "provider",
        "reason": "campaign stopped: test", "stop_command_id": None, "stop_requested_at": None,
        "occurred_at": 1_750_000_000_000,
    })


def test_unreadable_events_go_to_the_dead_letter_topic_and_the_sink_continues(settings: Settings) -> None:
    serdes = Serdes()
    workers = Workers(settings)
    try:
        sink = workers.start("--role", "sink")
        key = b"dlq-campaign:email:1"  # one key: one partition, so the order below holds
        valid = not_sent_event(serdes, "dlq-campaign:email:1", "email")
        bad = [
            (b"\x00 not avro at all", "not an Avro value"),
            (valid[:-4], "corrupt NotSentEvent body"),
            (not_sent_event(serdes, "dlq-campaign:fax:1", "fax"), "unknown channel 'fax'"),
        ]
        produce(settings, settings.topics.notsent, [(key, value) for value, _ in bad])
        produce(settings, settings.topics.notsent, [(key, None)])  # no event at all
        produce(settings, settings.topics.notsent, [(key, valid)])
        dead_topic = Topics.dead_letter(settings.topics.notsent)

        wait_for(lambda: len(read_all(settings, dead_topic)) >= 4, "four records on the dead-letter topic")
        store = open_store(settings)
        try:
            wait_for(lambda: store.counts("dlq-campaign") == [("email", "not_sent", "provider", 1)],
                     "the valid event after the bad ones to be stored")
        finally:
            store.close()

        dead = read_all(settings, dead_topic)
        assert len(dead) == 4
        for message, (value, reason) in zip(dead, [*bad, (None, "empty value")], strict=True):
            headers = header_values(message)
            assert message.value() == value
            assert message.key() == key
            assert reason in headers["estop.error"].decode()
            assert headers["estop.source.topic"] == settings.topics.notsent.encode()
        assert [int(header_values(m)["estop.source.offset"]) for m in dead] == [0, 1, 2, 3]
        text = sink.scrape()  # also: the sink is still running
        assert metric(text, "estop_dead_lettered_records_total", topic=settings.topics.notsent) == 4
        assert metric(text, "estop_sink_outcomes_total", outcome="not_sent") == 1
    finally:
        workers.stop_all()
