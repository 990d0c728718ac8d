"""The topic plan and ``estop topics create``: idempotent, and loud about drift."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from streams.kafka.clients import admin, wait_for_broker
from streams.kafka.exceptions import TopicPlanError
from streams.models import CHANNELS
from streams.settings import Settings

DAY_MS = 24 * 3600 * 1000

# Compacted topics: roll segments hourly so the cleaner can run, keep tombstones a week so a
# process that was down for days still sees them, compact as soon as a tenth is dirty.
COMPACTED = {
    "cleanup.policy": "compact",
    "segment.ms": str(3600 * 1000),
    "min.cleanable.dirty.ratio": "0.1",
    "delete.retention.ms": str(7 * DAY_MS),
    "min.compaction.lag.ms": "0",
}
# campaign-control and campaign-status: a record that would erase a stop or hide a campaign once
# compacted (a tombstone, a record keyed by another campaign) cannot make Kafka drop what it
# replaces for a week; the control plane restates the stop or the status over it well before
# (streams.controlplane.app), so a process that starts after compaction still finds them.
PROTECTED = {**COMPACTED, "min.compaction.lag.ms": str(7 * DAY_MS)}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Replication:
    """Replicas of every topic, and how many must have a write before it is acknowledged
    (producers send with acks=all, so a write survives the loss of ``min_insync - 1`` brokers
    and is refused, not lost, when fewer than ``min_insync`` replicas are in sync)."""

    factor: int
    min_insync: int

    def config(self) -> dict[str, str]:
        return {"min.insync.replicas": str(self.min_insync)} if self.factor > 1 else {}


def replication(settings: Settings, brokers: int | None = None) -> Replication:
    """ESTOP_REPLICATION_FACTOR and ESTOP_MIN_INSYNC_REPLICAS when set; otherwise from the size
    of the cluster (asked when ``brokers`` is not given): 3 replicas and 2 in sync on three
    brokers or more, one replica per broker below that."""
    if brokers is None:
        brokers = wait_for_broker(settings)
    factor = settings.replication_factor or min(3, brokers)
    min_insync = settings.min_insync_replicas or (2 if factor >= 3 else 1)
    if factor > brokers:
        raise TopicPlanError(
            f"ESTOP_REPLICATION_FACTOR={factor} needs {factor} brokers; the cluster at "
            f"{settings.bootstrap_servers} has {brokers}"
        )
    if min_insync > factor:
        raise TopicPlanError(
            f"ESTOP_MIN_INSYNC_REPLICAS={min_insync} is more than the replication factor {factor}: "
            "no write could ever be acknowledged"
        )
    return Replication(factor, min_insync)


@dataclass
class TopicReport:
    created: list[str] = field(default_factory=list)
    existed: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)


def plan(settings: Settings, replication: Replication | None = None) -> list[TopicSpec]:
    """Every topic the pipeline uses, with its partitions and config (``min.insync.replicas``
    too when ``replication`` is given and replicates)."""
    t = settings.topics
    data = settings.partitions
    insync = replication.config() if replication else {}
    specs = [
        TopicSpec(t.control, settings.control_partitions, {**PROTECTED, **insync}),
        TopicSpec(t.status, 1, {**PROTECTED, **insync}),
        TopicSpec(t.acks, 1, {"cleanup.policy": "delete", "retention.ms": str(DAY_MS), **insync}),
        *(TopicSpec(t.send_requests(c), data, dict(insync)) for c in CHANNELS),
        *(TopicSpec(t.dispatch(c), data, dict(insync)) for c in CHANNELS),
        # The handoff ledger follows its dispatch partition from process to process; receipts
        # reach the partition's owner wherever the provider sent them.
        *(TopicSpec(t.ledger(c), data, {**COMPACTED, **insync}) for c in CHANNELS),
        *(TopicSpec(t.receipts(c), data, {"retention.ms": str(7 * DAY_MS), **insync})
          for c in CHANNELS),
        TopicSpec(t.sent, data, dict(insync)),
        TopicSpec(t.notsent, data, dict(insync)),
        TopicSpec(t.failed, data, dict(insync)),
        # Who stopped what, and who was refused: kept long, the store holds the trail too.
        TopicSpec(t.audit, 1, {"retention.ms": str(365 * DAY_MS), **insync}),
        # Guardrails: feedback partitioned like the outcomes (keyed by message id); the rules,
        # and the processor's state, by key.
        TopicSpec(t.feedback, data, {"retention.ms": str(7 * DAY_MS), **insync}),
        TopicSpec(t.guardrail_rules, 1, {**COMPACTED, **insync}),
        TopicSpec(t.guardrail_state, data, {**COMPACTED, **insync}),
        TopicSpec(t.guardrail_counts, data, {"retention.ms": str(DAY_MS), **insync}),
        # Canary launches: the cohort, the hold and who released the rest (streams.campaigns.canary).
        TopicSpec(t.canary, 1, {**COMPACTED, **insync}),
    ]
    consumed = set(t.inputs())
    dead_letters = [
        TopicSpec(t.dead_letter(s.name), 1, {"retention.ms": str(14 * DAY_MS), **insync})
        for s in specs if s.name in consumed
    ]
    return specs + dead_letters


def create_topics(settings: Settings, say: Callable[[str], None] = print) -> TopicReport:
    """Create what is missing; report what existed and what differs from the plan."""
    replicas = replication(settings, wait_for_broker(settings))
    with admin(settings) as client:
        timeout = settings.admin_timeout_s
        existing = client.list_topics(timeout=timeout).topics
        specs = plan(settings, replicas)
        report = TopicReport()
        missing = [s for s in specs if s.name not in existing]
        if missing:
            futures = client.create_topics(
                [NewTopic(s.name, s.partitions, replicas.factor, config=s.config) for s in missing],
                operation_timeout=timeout,
                request_timeout=timeout,
            )
            for name, future in futures.items():
                try:
                    future.result()
                    report.created.append(name)
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise
                    report.existed.append(name)  # created concurrently by another process
        if report.created:
            # A broker serves metadata from its own copy, which can lag the controller a moment:
            # return once the new topics have leaders, so the next client (a worker) finds them.
            _metadata_showing(client, report.created, timeout)
        present = [s for s in specs if s.name in existing]
        raced = [s for s in missing if s.name in report.existed]
        report.existed.extend(s.name for s in present)
        if raced:
            # Topics that appeared after our metadata snapshot are checked for drift too, once the
            # broker's metadata shows them.
            existing = _metadata_showing(client, [s.name for s in raced], timeout)
            present.extend(s for s in raced if s.name in existing)
        report.drift.extend(_drift(client, present, existing, timeout, replicas.factor))
    for name in report.created:
        say(f"created  {name}")
    for name in report.existed:
        say(f"exists   {name}")
    for line in report.drift:
        say(f"DIFFERS  {line}")
    return report


def _metadata_showing(client: AdminClient, names: list[str], timeout: float) -> dict[str, Any]:
    """Topic metadata once it lists ``names``, each partition with a leader (or as it is when
    ``timeout`` runs out)."""
    deadline = time.monotonic() + timeout
    while True:
        topics: dict[str, Any] = client.list_topics(timeout=timeout).topics
        if all(_has_leaders(topics.get(name)) for name in names) or time.monotonic() > deadline:
            return topics
        time.sleep(0.1)


def _has_leaders(topic: Any) -> bool:
    return bool(topic is not None and topic.error is None and topic.partitions
                and all(p.leader >= 0 and p.error is None for p in topic.partitions.values()))


def _drift(client, specs: list[TopicSpec], existing: dict, timeout: float,  # type: ignore[no-untyped-def]
           factor: int) -> list[str]:
    lines = []
    for spec in specs:
        partitions = existing[spec.name].partitions
        if len(partitions) != spec.partitions:
            lines.append(f"{spec.name}: {len(partitions)} partitions, settings say {spec.partitions}")
        replicas = {len(p.replicas) for p in partitions.values()}
        if replicas and replicas != {factor}:
            lines.append(f"{spec.name}: replication factor {'/'.join(map(str, sorted(replicas)))}, "
                         f"settings say {factor}")
    resources = [ConfigResource(ConfigResource.Type.TOPIC, s.name) for s in specs if s.config]
    if not resources:
        return lines
    by_name = {s.name: s for s in specs}
    for resource, future in client.describe_configs(resources, request_timeout=timeout).items():
        entries = future.result()
        for key, wanted in by_name[resource.name].config.items():
            actual_value = entries[key].value if key in entries else None
            if actual_value != wanted:
                lines.append(f"{resource.name}: {key}={actual_value}, settings say {wanted}")
    return lines
