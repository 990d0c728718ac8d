"""estop's events in the Confluent wire format, end to end, read by a downstream consumer nobody
here wrote: Kafka Connect (standalone, the broker's Kafka version) with the Debezium JDBC sink
and Apicurio's Avro converter, writing the ``sent`` and ``notsent`` topics into PostgreSQL
tables.

One module-scoped scenario: with ESTOP_SCHEMA_REGISTRY_URL set to the session's Apicurio
Registry, `estop worker` (gates, dispatchers, the analytics sink) carries a two-channel campaign
that `estop launch` queues and `estop stop` stops while it is still being queued; `estop report`
then accounts for every message. Connect starts alongside and the tests hold its tables, once its
consumer group has read both topics to their end, against `estop report`."""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from psycopg.conninfo import conninfo_to_dict

from streams.kafka.topics import create_topics
from streams.lab.broker import BrokerHandle
from streams.lab.harness import OutcomeWatch
from streams.serde import load_schema, serdes_for
from streams.serde.registry import ConfluentRegistry
from streams.settings import Settings, load_settings
from streams.sink.report import campaign_report
from streams.sink.store import open_store
from tests.ecosystem.apicurio import ApicurioRegistry
from tests.ecosystem.connect import TABLES, KafkaConnect
from tests.sink.conftest import PostgresServer
from tests.sink.support import (
    WAIT_S,
    Workers,
    count_outcomes,
    delete_topics,
    estop_env,
    read_all,
    run_cli,
    sink_lag,
    wait_for,
)
from tests.support import ESTOP, free_port

CHANNELS = ["email", "sms"]
RECIPIENTS = 400  # per channel
LAUNCH_RATE = 100.0  # recipients queued per second: the stop comes while the campaign is Sending
PROVIDER_RATE = 100.0  # handoffs per second per channel: a backlog waits at the provider stage
PROVIDER_DELAY_S = 0.5  # until a handed-over message is sent
STOP_AFTER_SENT = 40
REASON = "wrong discount code"


@dataclass
class Downstream:
    settings: Settings
    registry: ApicurioRegistry
    campaign_id: str
    stop: dict[str, Any]  # `estop stop --json`'s entry for the campaign
    report: dict[str, Any]  # `estop report --json`
    tables: dict[str, list[dict[str, Any]]]  # topic -> the campaign's rows of its table


def _jdbc(dsn: str) -> tuple[str, str]:
    """The JDBC URL and user of a libpq DSN."""
    parts = conninfo_to_dict(dsn)
    url = f"jdbc:postgresql://{parts.get('host', '127.0.0.1')}:{parts.get('port', 5432)}/{parts['dbname']}"
    return url, str(parts.get("user", "postgres"))


def _run_campaign(settings: Settings, campaign_id: str) -> dict[str, Any]:
    """`estop launch` in the background, `estop stop` once some messages were sent; the stop's
    JSON once every message has an outcome on the topics."""
    launcher = subprocess.Popen(
        [str(ESTOP), "launch", "--campaign", campaign_id, *(f"--channel={c}" for c in CHANNELS),
         "--recipients", str(RECIPIENTS), "--rate", str(LAUNCH_RATE)],
        env=estop_env(settings), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    watch = OutcomeWatch(settings, campaign_id)

    def sent(count: int) -> Callable[[], bool]:
        def check() -> bool:
            watch.poll()
            return watch.sent() >= count
        return check

    def accounted(count: int) -> Callable[[], bool]:
        def check() -> bool:
            watch.poll()
            return watch.counter.total == count
        return check

    try:
        wait_for(sent(STOP_AFTER_SENT), f"{STOP_AFTER_SENT} messages sent", every_s=0)
        stopped = run_cli(settings, "stop", campaign_id, "--reason", REASON, "--json")
        assert stopped.returncode == 0, stopped.stderr
        output, _ = launcher.communicate(timeout=WAIT_S)
        assert launcher.returncode == 0, output
        planned = RECIPIENTS * len(CHANNELS)
        wait_for(accounted(planned), f"all {planned} outcomes on the topics", every_s=0)
    finally:
        watch.close()
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    result: dict[str, Any] = json.loads(stopped.stdout)
    assert result["confirmed"], result
    return result


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        found: dict[str, Any] = json.loads(response.read())
    return found


def _rows(dsn: str, table: str, campaign_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn) as db, db.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        cursor.execute(f"SELECT * FROM {table} WHERE campaign_id = %s", (campaign_id,))
        return list(cursor.fetchall())


@pytest.fixture(scope="module")
def downstream(broker: BrokerHandle, schema_registry: ApicurioRegistry, postgres: PostgresServer,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Downstream]:
    prefix = f"t{uuid4().hex[:8]}-"
    settings = load_settings(
        bootstrap_servers=broker.bootstrap_servers, topic_prefix=prefix, partitions=3,
        data_dir=tmp_path_factory.mktemp("downstream") / "data",
        schema_registry_url=schema_registry.ccompat_url, provider_rate=PROVIDER_RATE,
        provider_delay_s=PROVIDER_DELAY_S)
    create_topics(settings, say=lambda _: None)
    # The event schemas under subjects of their own first: estop's versions are then never the
    # first of their content, so their global ids differ from the content ids, and the test
    # sees which of the two the values carry (the converter must look up content ids).
    scratch = ConfluentRegistry(schema_registry.ccompat_url)
    for name in ("SentEvent", "NotSentEvent"):
        scratch.register(f"{prefix}scratch.{name}", load_schema(name))
    # Then estop's own subjects, up front, as docs/deployment.md has an operator do: workers that
    # all register a new subject at the same moment can leave Apicurio with two identical
    # versions of it (docs/consumers.md).
    registered = run_cli(settings, "schemas", "register")
    assert registered.returncode == 0, registered.stderr
    database, dsn = postgres.create_database()
    jdbc_url, jdbc_user = _jdbc(dsn)
    connect = KafkaConnect(settings, schema_registry.registry_api_url, jdbc_url, jdbc_user, None,
                           tmp_path_factory.mktemp("connect"), free_port(), say=print)
    workers = Workers(settings)
    connect_started: dict[str, BaseException | float] = {}

    def start_connect() -> None:
        try:
            connect_started["took"] = connect.start()
        except BaseException as exc:
            connect_started["error"] = exc

    starting = threading.Thread(target=start_connect, name="connect", daemon=True)
    starting.start()  # its JVM starts while the pipeline runs the campaign
    campaign_id = f"spring-sale-{prefix.rstrip('-')}"
    try:
        workers.start()  # every gate, every dispatcher and the analytics sink
        stop = _run_campaign(settings, campaign_id)
        store = open_store(settings)
        try:
            wait_for(lambda: campaign_report(store, campaign_id)["accounted"] == RECIPIENTS * len(CHANNELS),
                     "the analytics sink to store every outcome")
        finally:
            store.close()
        reported = run_cli(settings, "report", campaign_id, "--json")
        assert reported.returncode == 0, reported.stderr
        report = json.loads(reported.stdout)
        print(f"estop report: sent {report['sent']}, notSent {report['not_sent']} "
              f"{report['not_sent_by_stage']}")
        starting.join(WAIT_S)
        assert "took" in connect_started, f"Kafka Connect did not start: {connect_started.get('error')!r}"
        topics = [settings.topics.sent, settings.topics.notsent]
        # Past the last event of every partition: Connect commits the offset after the last
        # record it wrote, never past a transaction's commit marker, so its lag stays at 1.
        ends = {(topic, m.partition() or 0): (m.offset() or 0) + 1
                for topic in topics for m in read_all(settings, topic)}

        def read_to_the_end() -> bool:
            lag = sink_lag(settings, connect.consumer_group, topics)
            return all(lag[partition][0] >= end for partition, end in ends.items())

        wait_for(read_to_the_end, "Kafka Connect's sink to read every sent and notSent event")
        assert connect.server is not None
        connect.server.check()
        yield Downstream(settings, schema_registry, campaign_id, stop, report,
                         {topic: _rows(dsn, TABLES[topic], campaign_id) for topic in TABLES})
    finally:
        starting.join(WAIT_S)
        connect.stop()
        workers.stop_all()
        delete_topics(settings)
        postgres.drop_database(database)


def test_events_carry_the_registry_s_ids_in_the_confluent_wire_format(downstream: Downstream) -> None:
    """Every outcome event is 0x00, the id the registry gave estop's subject, then the body, and
    confluent-kafka's own AvroDeserializer reads it as estop does; the id is Apicurio's content
    id, not the global id of estop's version."""
    settings, registry = downstream.settings, downstream.registry
    client = SchemaRegistryClient({"url": registry.ccompat_url})
    deserialize = AvroDeserializer(client)
    estop = serdes_for(settings)
    for topic, serde in ((settings.topics.sent, estop.sent), (settings.topics.notsent, estop.not_sent)):
        subject = f"{settings.topic_prefix}estop.{serde.schema.name}"
        latest = client.get_latest_version(subject)
        assert latest.version == 1 and latest.schema_id is not None
        schema_id = latest.schema_id
        values = [v for m in read_all(settings, topic) if (v := m.value()) is not None]
        assert values, f"no events on {topic}"
        assert {v[:5] for v in values} == {b"\x00" + schema_id.to_bytes(4, "big")}
        context = SerializationContext(topic, MessageField.VALUE)
        assert [deserialize(v, context) for v in values] == [serde.decode(v) for v in values]
        meta = _get_json(f"{registry.registry_api_url}/groups/default/artifacts/{subject}/meta")
        assert meta["contentId"] == schema_id
        assert meta["globalId"] != schema_id


def test_estop_report_accounts_for_every_message_of_the_stopped_campaign(downstream: Downstream) -> None:
    """launch, stop, sink, report over the Confluent wire format: every message has exactly one
    outcome, some sent and some halted, and the report equals a plain count of the event
    topics."""
    report = downstream.report
    planned = RECIPIENTS * len(CHANNELS)
    assert report["state"] == "Stopped"
    assert (report["total"], report["accounted"], report["pending"]) == (planned, planned, 0)
    assert report["sent"] >= STOP_AFTER_SENT
    assert report["not_sent"] > 0
    assert report["stops"][0]["command_id"] == downstream.stop["command_id"]
    oracle = count_outcomes(downstream.settings, downstream.campaign_id)
    assert sum(c.sent for c in oracle.counts.values()) == report["sent"]
    assert sum(c.not_sent_total for c in oracle.counts.values()) == report["not_sent"]


def test_the_jdbc_sink_tables_hold_what_estop_report_counts(downstream: Downstream) -> None:
    """Kafka Connect's Debezium JDBC sink, reading estop's Avro through Apicurio's converter,
    wrote one row per sent and per notSent message, with the events' fields: the tables' counts
    (in all, per channel, per stage) are `estop report`'s."""
    report, sent, not_sent = downstream.report, downstream.tables["sent"], downstream.tables["notsent"]
    assert len(sent) == report["sent"]
    assert len(not_sent) == report["not_sent"]
    for channel, counts in report["by_channel"].items():
        assert sum(r["channel"] == channel for r in sent) == counts["sent"]
        assert sum(r["channel"] == channel for r in not_sent) == counts["not_sent"]
    by_stage = {stage: sum(r["stage"] == stage for r in not_sent) for stage in report["not_sent_by_stage"]}
    assert by_stage == report["not_sent_by_stage"]
    assert {r["event"] for r in sent} == {f"{'message' if c == 'email' else c}.sent" for c in CHANNELS}
    assert {r["stop_command_id"] for r in not_sent} == {downstream.stop["command_id"]}
    assert len({r["message_id"] for r in sent} | {r["message_id"] for r in not_sent}) == report["accounted"]


def test_kcat_counts_the_campaign_s_events_by_their_headers(downstream: Downstream) -> None:
    """Debian's kcat (no Avro support) reads each event's key and headers, as docs/consumers.md
    shows: per stage, the campaign's notSent events are `estop report`'s, and one per key."""
    settings, report = downstream.settings, downstream.report
    counts: dict[str, Counter[str]] = {}
    for topic in (settings.topics.sent, settings.topics.notsent):
        read = subprocess.run(
            ["kcat", "-b", settings.bootstrap_servers, "-C", "-t", topic, "-o", "beginning", "-e",
             "-q", "-X", "isolation.level=read_committed", "-f", "%k\t%h\n"],
            capture_output=True, text=True, timeout=60, check=False)
        assert read.returncode == 0, read.stderr
        keys: set[str] = set()
        counts[topic] = Counter()
        for line in read.stdout.splitlines():
            key, headers = line.split("\t")
            fields = dict(h.split("=", 1) for h in headers.split(","))
            if fields["campaign_id"] == downstream.campaign_id:
                keys.add(key)
                counts[topic][fields.get("stage", "sent")] += 1
        assert len(keys) == sum(counts[topic].values())
    assert counts[settings.topics.sent] == {"sent": report["sent"]}
    assert counts[settings.topics.notsent] == {
        stage: n for stage, n in report["not_sent_by_stage"].items() if n}
