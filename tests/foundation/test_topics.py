"""Topics: `create_topics` is idempotent, compacts the control topic, and reports drift; an
unreachable broker is a clear error, from the library and from the command line."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import ConfigResource, NewTopic

from streams.kafka.clients import admin
from streams.kafka.exceptions import KafkaUnavailableError
from streams.kafka.topics import PROTECTED, create_topics, plan, replication
from streams.models import CHANNELS
from streams.settings import Settings, load_settings
from tests.support import run_estop

UNREACHABLE = {"ESTOP_BOOTSTRAP_SERVERS": "localhost:1", "ESTOP_ADMIN_TIMEOUT_S": "3"}


def topic_configs(settings: Settings, topic: str) -> dict[str, str | None]:
    """The broker's view of a topic's config (describe_configs), not what we asked for."""
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    with admin(settings) as client:
        future = client.describe_configs([resource], request_timeout=30)[resource]
        return {name: entry.value for name, entry in future.result().items()}


def partition_counts(settings: Settings) -> dict[str, int]:
    with admin(settings) as client:
        topics = client.list_topics(timeout=30).topics
    return {name: len(meta.partitions) for name, meta in topics.items()}


def test_plan_names_every_topic_the_pipeline_needs() -> None:
    """The issue's topic list, each input with a dead-letter topic; no broker needed."""
    t = load_settings(topic_prefix="p-").topics
    inputs = [
        "p-campaign-control", "p-campaign-status", "p-campaign-control-acks", "p-sent",
        "p-notsent", "p-failed", "p-audit",
        *(f"p-send-requests.{c}" for c in CHANNELS),
        *(f"p-dispatch.{c}" for c in CHANNELS),
        *(f"p-dispatch.{c}.receipts" for c in CHANNELS),
        "p-feedback",
    ]
    # The dispatchers' ledgers: changelogs, read back by their owners, with no dead letters; the
    # guardrail's rules, windows and counts, and the canary launches, likewise.
    ledgers = [f"p-dispatch.{c}.ledger" for c in CHANNELS]
    state = ["p-guardrail-rules", "p-guardrail-state", "p-guardrail-counts", "p-campaign-canary"]
    names = [s.name for s in plan(load_settings(topic_prefix="p-"))]
    assert sorted(names) == sorted(inputs + ledgers + state + [t.dead_letter(n) for n in inputs])
    assert len(names) == len(set(names))


@pytest.mark.broker
def test_create_topics_twice_creates_then_changes_nothing(bare_settings: Settings) -> None:
    """The second run (and every deploy after) finds everything in place and touches nothing."""
    wanted = {s.name: s.partitions for s in plan(bare_settings)}

    first = create_topics(bare_settings, say=lambda _: None)
    assert sorted(first.created) == sorted(wanted)
    assert first.existed == []
    assert first.drift == []
    counts = partition_counts(bare_settings)
    assert {name: counts.get(name) for name in wanted} == wanted

    said: list[str] = []
    second = create_topics(bare_settings, say=said.append)
    assert second.created == []
    assert sorted(second.existed) == sorted(wanted)
    assert second.drift == []
    assert sorted(said) == sorted(f"exists   {name}" for name in wanted)


@pytest.mark.broker
def test_compacted_topics_have_the_compaction_settings(settings: Settings) -> None:
    """campaign-control must be compact only (never delete), or a stop could age out; and keep
    every record a week before compaction may drop what a newer one replaces (the control
    plane's time to restate a stop a record would lift)."""
    for topic in (settings.topics.control, settings.topics.status):
        configs = topic_configs(settings, topic)
        assert configs["cleanup.policy"] == "compact"
        assert {key: configs[key] for key in PROTECTED} == PROTECTED
        assert configs["min.compaction.lag.ms"] == str(7 * 24 * 3600 * 1000)


@pytest.mark.broker
def test_existing_topic_with_other_partitions_is_reported_as_drift(
    bare_settings: Settings,
) -> None:
    """A topic made by hand (or by an older version) is left alone but reported, not hidden."""
    sent = bare_settings.topics.sent
    with admin(bare_settings) as client:
        client.create_topics([NewTopic(sent, 1, replication(bare_settings).factor)])[sent].result()

    report = create_topics(bare_settings, say=lambda _: None)

    assert sent in report.existed
    assert sent not in report.created
    assert report.drift == [f"{sent}: 1 partitions, settings say {bare_settings.partitions}"]
    assert partition_counts(bare_settings)[sent] == 1  # reported, not changed


@pytest.mark.broker
def test_existing_control_topic_with_delete_policy_is_reported_as_drift(
    bare_settings: Settings,
) -> None:
    """A control topic that deletes old records could lose a stop: it must show up loudly."""
    control = bare_settings.topics.control
    wrong = NewTopic(
        control, 1, replication(bare_settings).factor, config={"cleanup.policy": "delete"}
    )
    with admin(bare_settings) as client:
        client.create_topics([wrong])[control].result()

    report = create_topics(bare_settings, say=lambda _: None)

    assert f"{control}: cleanup.policy=delete, settings say compact" in report.drift


def test_unreachable_broker_raises_kafka_unavailable() -> None:
    """No broker: a KafkaUnavailableError saying so, after the bounded admin wait."""
    settings = load_settings(bootstrap_servers="localhost:1", admin_timeout_s=3)
    with pytest.raises(KafkaUnavailableError, match="no Kafka broker answered at localhost:1"):
        create_topics(settings, say=lambda _: None)


def test_cli_topics_create_unreachable_broker_is_one_line() -> None:
    """What a user sees: one line saying what is wrong and what to do, non-zero exit."""
    result = run_estop("topics", "create", env=UNREACHABLE)

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "no Kafka broker answered" in lines[0]
    assert "created" not in result.stdout


@pytest.mark.broker
def test_cli_topics_create_twice(bare_settings: Settings) -> None:
    """`estop topics create` run twice: everything created, then everything found."""
    env = {
        "ESTOP_BOOTSTRAP_SERVERS": bare_settings.bootstrap_servers,
        "ESTOP_TOPIC_PREFIX": bare_settings.topic_prefix,
        "ESTOP_PARTITIONS": str(bare_settings.partitions),
    }
    total = len(plan(bare_settings))

    first = run_estop("topics", "create", env=env)
    assert first.returncode == 0, first.stderr
    assert f"{total} created, 0 existed, 0 differ from the settings" in first.stdout

    second = run_estop("topics", "create", env=env)
    assert second.returncode == 0, second.stderr
    assert f"0 created, {total} existed, 0 differ from the settings" in second.stdout
    assert "DIFFERS" not in second.stdout
