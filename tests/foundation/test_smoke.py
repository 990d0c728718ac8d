"""Smoke: Avro send requests through the real broker with both Kafka clients of the project.

confluent-kafka (librdkafka) carries the data plane, aiokafka sits under faust-streaming in the
control plane; records cross between them (acks, status), so every producer/consumer pairing
must work against the broker version the project runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import KafkaError, KafkaException, Message

from streams.kafka.clients import consumer, producer
from streams.models import CHANNELS
from streams.serde import Serdes
from streams.settings import Settings

pytestmark = pytest.mark.broker

COUNT = 60
WAIT_S = 60.0  # upper bound on waiting for records, so a broken setup fails instead of hanging

Records = list[dict[str, Any]]
T = TypeVar("T")


def run_on_own_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run aiokafka's clients on an event loop of their own thread: Playwright's sync API (the
    console tests) keeps a loop running on the main thread for the rest of the session, where
    asyncio.run() refuses to start another."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def send_requests(tag: str) -> Records:
    """Realistic, compressible records (the producer's lz4 only kicks in on such batches)."""
    return [
        {
            "message_id": f"{tag}-{i:04d}",
            "campaign_id": "smoke",
            "channel": CHANNELS[i % len(CHANNELS)],
            "recipient_id": f"r-{i}",
            "payload": "Spring sale! Use code SPRING25 at checkout for 25% off. " * 8,
            "requested_at": 1_732_600_000_000 + i,
        }
        for i in range(COUNT)
    ]


# -- producers ------------------------------------------------------------------------------


def produce_confluent(settings: Settings, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    """The project's data-plane producer: idempotent, acks=all, lz4."""
    errors: list[KafkaError] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            errors.append(error)

    client = producer(settings)
    for key, value in values:
        client.produce(topic, key=key, value=value, on_delivery=delivered)
    assert client.flush(WAIT_S) == 0, "records still queued after flush"
    assert errors == []


def produce_aiokafka(settings: Settings, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    """aiokafka as faust-streaming drives it (idempotent producer, acks=all)."""

    async def run() -> None:
        client = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers, enable_idempotence=True, acks="all"
        )
        await client.start()
        try:
            for key, value in values:
                await client.send(topic, key=key, value=value)
            await client.flush()
        finally:
            await client.stop()

    run_on_own_loop(run())


# -- consumers ------------------------------------------------------------------------------


def consume_confluent(settings: Settings, topic: str, group_id: str) -> list[bytes]:
    """The project's data-plane consumer (read_committed, manual commits) in a fresh group."""
    client = consumer(settings, **{"group.id": group_id})
    client.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + WAIT_S
    try:
        while len(values) < COUNT and time.monotonic() < deadline:
            for message in client.consume(COUNT, timeout=0.5):
                if message.error():
                    raise KafkaException(message.error())
                value = message.value()
                assert value is not None
                values.append(value)
    finally:
        client.close()
    return values


def consume_aiokafka(settings: Settings, topic: str, group_id: str) -> list[bytes]:
    """aiokafka consumer in a fresh group, reading from the beginning."""

    async def run() -> list[bytes]:
        client = AIOKafkaConsumer(
            topic,
            bootstrap_servers=settings.bootstrap_servers,
            group_id=group_id,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await client.start()
        values: list[bytes] = []
        deadline = time.monotonic() + WAIT_S
        try:
            while len(values) < COUNT and time.monotonic() < deadline:
                batches = await client.getmany(timeout_ms=500)
                values.extend(m.value for batch in batches.values() for m in batch if m.value)
        finally:
            await client.stop()
        return values

    return run_on_own_loop(run())


Producer = Callable[[Settings, str, list[tuple[bytes, bytes]]], None]
Consumer = Callable[[Settings, str, str], list[bytes]]
PRODUCERS: dict[str, Producer] = {"confluent": produce_confluent, "aiokafka": produce_aiokafka}
CONSUMERS: dict[str, Consumer] = {"confluent": consume_confluent, "aiokafka": consume_aiokafka}


@pytest.mark.parametrize("consumed_by", sorted(CONSUMERS))
@pytest.mark.parametrize("produced_by", sorted(PRODUCERS))
def test_send_requests_round_trip_through_the_broker(
    settings: Settings, group_id: str, produced_by: str, consumed_by: str
) -> None:
    """Every record produced by one client is consumed by the other, decoded, unchanged."""
    serde = Serdes().send_request
    topic = settings.topics.send_requests("email")
    records = send_requests(f"{produced_by}-{consumed_by}")

    PRODUCERS[produced_by](
        settings, topic, [(r["message_id"].encode(), serde.encode(r)) for r in records]
    )
    received = [serde.decode(v) for v in CONSUMERS[consumed_by](settings, topic, group_id)]

    assert sorted(received, key=lambda r: r["message_id"]) == records
