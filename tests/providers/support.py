"""Helpers of the provider tests: handoffs, where the MTA agent's receipts landed, and the
partition each message's request has on dispatch.email."""

from __future__ import annotations

from collections import Counter

from confluent_kafka import Message

from streams.dispatch.receipts import delivery_of
from streams.kafka.clients import producer
from streams.kafka.reader import assign_all, read_until
from streams.providers.base import Delivery, Handoff, ProviderAdapter, SubmitStatus
from streams.serde import Serdes
from streams.settings import Settings


def handoffs(campaign: str, count: int, payload: str = "Hello") -> list[Handoff]:
    return [Handoff(f"{campaign}:email:{i}", campaign, "email", f"r{i:08d}", payload)
            for i in range(count)]


def submitted(smtp: ProviderAdapter, batch: list[Handoff]) -> dict[str, str]:
    """Hand the messages to Postfix over SMTP: message id -> queue id, every one accepted."""
    answers = smtp.submit(batch)
    assert all(a.status == SubmitStatus.ACCEPTED for a in answers), answers
    return {a.message_id: a.provider_id or "" for a in answers}


def dispatch_partitions(settings: Settings, message_ids: list[str]) -> dict[str, int]:
    """Write a record keyed by each message id to dispatch.email, as the gate does with a
    request, and return the partition Kafka put each on."""
    placed: dict[str, int] = {}

    def delivered(error: object, message: Message) -> None:
        assert error is None, error
        key = message.key()
        assert key is not None
        placed[key.decode()] = _partition(message)

    client = producer(settings)
    for message_id in message_ids:
        client.produce(settings.topics.dispatch("email"), key=message_id.encode(), value=b"",
                       on_delivery=delivered)
    assert client.flush(30) == 0
    return placed


def _partition(message: Message) -> int:
    partition = message.partition()
    assert partition is not None
    return partition


def receipts_now(settings: Settings) -> list[tuple[int, Delivery]]:
    """Every record on dispatch.email.receipts up to its end as of now: (partition, delivery)."""
    topic = settings.topics.receipts("email")
    reader, ends = assign_all(settings, topic)
    found: list[tuple[int, Delivery]] = []
    serdes = Serdes()
    try:
        read_until(reader, topic, ends,
                   lambda m: found.append((_partition(m), delivery_of(serdes, m.value()))))
    finally:
        reader.close()
    return found


def receipts_of(settings: Settings, message_ids: set[str] | dict[str, str]) -> list[tuple[int, Delivery]]:
    """The receipts of these messages on dispatch.email.receipts as of now."""
    return [(p, d) for p, d in receipts_now(settings) if d.message_id in message_ids]


def times(settings: Settings, message_ids: set[str] | dict[str, str]) -> Counter[str]:
    """How many receipts each of these messages has as of now."""
    return Counter(d.message_id for _, d in receipts_of(settings, message_ids))
