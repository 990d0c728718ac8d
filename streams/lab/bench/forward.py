"""Consume-and-forward between two topics with nothing else in the loop: the raw baseline
(confluent-kafka, batched) and the same job on plain aiokafka, as evidence for the choice of
confluent-kafka as the data plane's client. Runs until SIGTERM; the benchmark measures it from
the outside by watching the target topic's end offsets, exactly as it measures the gate.

    python -m streams.lab.bench.forward confluent|aiokafka BOOTSTRAP SOURCE TARGET GROUP
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading

from confluent_kafka import Consumer, Producer


def forward_confluent(bootstrap: str, source: str, target: str, group: str,
                      running: threading.Event) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "fetch.wait.max.ms": 50})
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "linger.ms": 5, "compression.type": "lz4", "batch.num.messages": 10000,
                         "queue.buffering.max.messages": 1000000})
    consumer.subscribe([source])
    while running.is_set():
        first = consumer.poll(0.2)
        if first is None:
            continue
        batch = [first, *consumer.consume(1999, timeout=0)]
        for message in batch:
            if message.error():
                continue
            while True:
                try:
                    producer.produce(target, value=message.value(), key=message.key(),
                                     headers=message.headers())
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.flush()
        consumer.commit(asynchronous=True)
    consumer.close()


async def forward_aiokafka(bootstrap: str, source: str, target: str, group: str,
                           running: threading.Event) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    consumer = AIOKafkaConsumer(source, bootstrap_servers=bootstrap, group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True,
                                linger_ms=5, compression_type="lz4")
    await consumer.start()
    await producer.start()
    try:
        while running.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=2000)
            futures = []
            for records in batches.values():
                for record in records:
                    futures.append(await producer.send(target, value=record.value, key=record.key,
                                                       headers=list(record.headers)))
            if futures:
                await asyncio.gather(*futures)
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


def main(argv: list[str]) -> None:
    impl, bootstrap, source, target, group = argv
    running = threading.Event()
    running.set()
    signal.signal(signal.SIGTERM, lambda *_: running.clear())
    if impl == "confluent":
        forward_confluent(bootstrap, source, target, group, running)
    elif impl == "aiokafka":
        asyncio.run(forward_aiokafka(bootstrap, source, target, group, running))
    else:
        raise SystemExit(f"unknown forwarder {impl!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
