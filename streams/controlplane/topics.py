"""Faust's internal topics (leader election, table changelogs, the app's own topics), created
by the control service before Faust starts.

Faust creates them itself too, but joins its consumer group right after: when the brokers'
metadata does not list a just-created topic yet, Faust's assignor ignores it, and a table's
changelog or an agent's topic then stays unassigned until the next rebalance. Creating them
first and waiting until the metadata shows them avoids that. Faust then finds them and skips
creation (same partitions and cleanup policy as it would use)."""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic

from streams.kafka.clients import admin
from streams.kafka.exceptions import KafkaUnavailableError
from streams.kafka.topics import TopicSpec, replication
from streams.settings import Settings


def faust_topic_spec(topic: Any) -> TopicSpec:
    """The spec Faust's aiokafka transport would create ``topic`` (a faust Topic) with."""
    config: dict[str, str] = {}
    policies = [p for p, on in (("compact", topic.compacting), ("delete", topic.deleting)) if on]
    if policies:
        config["cleanup.policy"] = ",".join(policies)
    if topic.retention:
        config["retention.ms"] = str(int(float(topic.retention) * 1000))
    config.update({k: str(v) for k, v in (topic.config or {}).items()})
    return TopicSpec(topic.get_topic_name(), topic.partitions or 1, config)


def ensure_topics(settings: Settings, specs: list[TopicSpec]) -> list[str]:
    """Create the missing topics and wait until the cluster metadata lists all of them;
    returns the names created."""
    with admin(settings) as client:
        timeout = settings.admin_timeout_s
        existing = client.list_topics(timeout=timeout).topics
        missing = [s for s in specs if s.name not in existing]
        created: list[str] = []
        if missing:
            factor = replication(settings).factor
            futures = client.create_topics(
                [NewTopic(s.name, s.partitions, factor, config=s.config)
                 for s in missing], operation_timeout=timeout, request_timeout=timeout)
            for name, future in futures.items():
                try:
                    future.result()
                    created.append(name)
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise
        deadline = time.monotonic() + timeout
        names = {s.name for s in specs}
        while True:
            topics = client.list_topics(timeout=timeout).topics
            if all(name in topics and topics[name].partitions for name in names):
                return created
            if time.monotonic() > deadline:
                raise KafkaUnavailableError(f"topics {sorted(names - set(topics))} do not show in the "
                                            "cluster metadata")
            time.sleep(0.1)
