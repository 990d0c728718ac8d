"""When a stop is confirmed.

A stop command sits at an offset of ``campaign-control``. It is **confirmed** when every partition
of the gate topic (``send-requests.<channel>``) and of the dispatch topic (``dispatch.<channel>``)
of every channel it halts is held, right now, by a process whose acknowledgement covers that
offset on that partition. A process covers a partition once it has applied every command below
the offset there: for a gate, its view holds them; for a dispatcher, also its ledger of the
partition is restored and what its provider held of those campaigns is cancelled. Processes say
so in ``campaign-control-acks`` (``streams.control.feed``): after applying commands (naming the
partitions they hold), and after preparing partitions newly assigned to them.

So "confirmed" stays true across rebalances: a partition that moves afterwards is prepared by its
new holder, which makes its view current first, before its first record. A partition in transit
(between two holders) is not held, so a stop issued during a rebalance waits for the new holder.
A role that has never run for a channel (its consumer group does not exist) holds nothing and is
reported as not running; a group that ran and has no member now (every process of it down)
holds its partitions in transit: the stop waits for a process to take them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import ConsumerGroupState, KafkaException
from confluent_kafka.admin import AdminClient

from streams.models import CHANNELS
from streams.security.refusals import refused
from streams.settings import Settings


@dataclass(frozen=True)
class GroupHolding:
    """Who holds the partitions of one stage's input topic right now."""

    role: str  # gate.email, dispatcher.sms, ...
    topic: str
    partitions: int  # of the topic
    running: bool  # the group exists (it ran); False: never ran for this channel
    holders: dict[int, str]  # partition -> client.id (process id) of its member
    members: frozenset[str]


@dataclass(frozen=True)
class Holdings:
    groups: list[GroupHolding]

    @property
    def live(self) -> set[str]:
        """Every member of the gate and dispatcher groups."""
        return {m for g in self.groups for m in g.members}

    def not_running(self, channels: Iterable[str]) -> list[str]:
        wanted = set(channels)
        return [g.role for g in self.groups if not g.running and g.role.split(".")[1] in wanted]


def holdings(settings: Settings, client: AdminClient, channels: Iterable[str] = CHANNELS) -> Holdings:
    """Describe the gate and dispatcher groups of ``channels`` and their topics; raises when
    Kafka cannot say (unknown is never read as "nobody holds it")."""
    topics = settings.topics
    wanted = [(f"{role}.{channel}", group, topic)
              for channel in channels
              for role, group, topic in (
                  ("gate", topics.gate_group(channel), topics.send_requests(channel)),
                  ("dispatcher", topics.dispatcher_group(channel), topics.dispatch(channel)))]
    timeout = settings.admin_timeout_s
    futures = client.describe_consumer_groups([g for _, g, _ in wanted], request_timeout=timeout)
    metadata = client.list_topics(timeout=timeout).topics
    groups = []
    for role, group, topic in wanted:
        try:
            description = futures[group].result(timeout=timeout + 5)
        except KafkaException as exc:
            denied = refused(settings, exc, "describe the gate and dispatcher consumer groups")
            if denied is not None:
                raise denied from exc
            raise
        holders = {tp.partition: m.client_id for m in description.members
                   for tp in (m.assignment.topic_partitions if m.assignment else [])
                   if tp.topic == topic}
        info = metadata.get(topic)
        groups.append(GroupHolding(
            role, topic, len(info.partitions) if info is not None and info.partitions else 0,
            description.state not in (ConsumerGroupState.DEAD, ConsumerGroupState.UNKNOWN)
            or bool(description.members),
            holders, frozenset(m.client_id for m in description.members)))
    return Holdings(groups)


@dataclass
class Coverage:
    """What acknowledgements say: for each process and input partition, how far it applied
    campaign-control (per control partition, the next offset)."""

    applied: dict[tuple[str, str], list[int]] = field(default_factory=dict)

    def add(self, ack: Mapping[str, Any]) -> None:
        offsets = list(ack.get("control_offsets") or [])
        for partition in ack.get("partitions") or []:
            key = (ack["process_id"], partition)
            known = self.applied.get(key, [])
            self.applied[key] = [max(a, b) for a, b in zip(
                known + [0] * (len(offsets) - len(known)),
                offsets + [0] * (len(known) - len(offsets)), strict=True)]

    def covers(self, process_id: str, partition: str, control_partition: int, offset: int) -> bool:
        applied = self.applied.get((process_id, partition))
        return applied is not None and control_partition < len(applied) and \
            applied[control_partition] > offset


@dataclass(frozen=True)
class Verdict:
    confirmed: bool
    waiting: list[tuple[str, str | None]]  # (topic:partition, its holder or None in transit)
    not_running: list[str]  # roles that never ran for a channel of the stop
    holders: list[str]  # processes whose acknowledgement the stop needs
    uncovered: list[str]  # those of them that have not acknowledged it on a partition they hold

    @property
    def waiting_for(self) -> list[str]:
        return describe_waiting(self.waiting)


def describe_waiting(waiting: list[tuple[str, str | None]]) -> list[str]:
    return [f"{tp} (held by {holder})" if holder else f"{tp} (in transit: no process holds it)"
            for tp, holder in waiting]


def verdict(holding: Holdings, coverage: Coverage, channels: Iterable[str], control_partition: int,
            offset: int) -> Verdict:
    """Whether the command at ``offset`` of ``control_partition`` is confirmed on every input
    partition of ``channels`` (see the module's note)."""
    wanted = set(channels)
    waiting: list[tuple[str, str | None]] = []
    needed: set[str] = set()
    uncovered: set[str] = set()
    for group in holding.groups:
        if group.role.split(".")[1] not in wanted or not group.running:
            continue
        for partition in range(group.partitions):
            name = f"{group.topic}:{partition}"
            holder = group.holders.get(partition)
            if holder is None:
                waiting.append((name, None))
                continue
            needed.add(holder)
            if not coverage.covers(holder, name, control_partition, offset):
                waiting.append((name, holder))
                uncovered.add(holder)
    return Verdict(not waiting, waiting, holding.not_running(wanted), sorted(needed),
                   sorted(uncovered))
