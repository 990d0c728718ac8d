"""Provider receipts on their way to the dispatcher that owns the message.

A provider tells what became of a message wherever it chooses: an SMSC sends a delivery receipt
to any bind of the system id, Postfix writes its log on the MTA's host, a push service answers the
process that asked. The message belongs to whichever dispatcher holds its partition of
``dispatch.<channel>`` now, and only that one may change its ledger entry. So a receipt learned
anywhere else is written to ``dispatch.<channel>.receipts``, partitioned like ``dispatch``:

* keyed by the message id when the sender knows it: Kafka's partitioner puts it on the partition
  number its request has on ``dispatch.<channel>``, which the owner reads;
* a receipt that names only the provider's id (an SMSC's receipt on another process's bind) is
  written to every partition: each owner looks the id up in its own ledger and the one that holds
  it applies it.

The owner applies each receipt once (its ledger entry changes state in the same transaction as
the outcome event), so a receipt written twice does no harm."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streams.kafka.clients import producer
from streams.kafka.exceptions import KafkaUnavailableError
from streams.providers.base import Delivery
from streams.serde import Serdes
from streams.settings import Settings

# One receipt as it goes on the topic: key, value, and the partition it is written to (a receipt
# by provider id goes to each), or BY_KEY: the partitioner places it by its key.
ReceiptRecord = tuple[bytes, bytes, int]
BY_KEY = -1  # librdkafka's "unassigned partition"


def receipt_records(serdes: Serdes, channel: str, deliveries: Sequence[Delivery], source: str,
                    partitions: int) -> Iterator[ReceiptRecord]:
    """The records that carry ``deliveries`` to their owners (see the module's note)."""
    for delivery in deliveries:
        value = serdes.receipt.encode({
            "channel": channel,
            "message_id": delivery.message_id,
            "provider_id": delivery.provider_id,
            "delivered": delivery.delivered,
            "occurred_at": delivery.at_ms,
            "detail": delivery.detail,
            "source": source,
        })
        if delivery.message_id:
            yield delivery.message_id.encode(), value, BY_KEY
        else:
            key = delivery.provider_id.encode()
            for partition in range(partitions):
                yield key, value, partition


def delivery_of(serdes: Serdes, value: bytes | None) -> Delivery:
    """The delivery a receipt record carries (SerdeError when it is not one)."""
    receipt = serdes.receipt.decode(value)
    return Delivery(receipt["message_id"], receipt["provider_id"], receipt["delivered"],
                    receipt["occurred_at"], receipt["detail"])


def partition_count(client: Producer, topic: str, timeout_s: float) -> int:
    """Partitions of ``topic`` (it must exist: `estop topics create`)."""
    info = client.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        raise KafkaUnavailableError(f"topic {topic} does not exist; run `estop topics create`")
    return len(info.partitions)


class ReceiptShipper:
    """Writes the receipts a process learns for messages it does not own (the MTA agent ships
    Postfix's log with it). ``ship`` returns once Kafka acknowledged every record, so a sender
    may then forget them (e.g. acknowledge them to the provider)."""

    def __init__(self, settings: Settings, serdes: Serdes, channel: str, source: str) -> None:
        self.settings = settings
        self.serdes = serdes
        self.channel = channel
        self.source = source
        self.topic = settings.topics.receipts(channel)
        self._producer: Producer = producer(settings)
        self.partitions = partition_count(self._producer, self.topic, settings.admin_timeout_s)

    def ship(self, deliveries: Sequence[Delivery]) -> None:
        """Write the receipts; KafkaUnavailableError when Kafka did not acknowledge them all."""
        if not deliveries:
            return
        errors: list[KafkaError] = []

        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                errors.append(error)

        try:
            for key, value, partition in receipt_records(self.serdes, self.channel, deliveries,
                                                         self.source, self.partitions):
                while True:
                    try:
                        self._producer.produce(self.topic, value=value, key=key,
                                               partition=partition, on_delivery=delivered)
                        break
                    except BufferError:
                        self._producer.poll(0.05)
            unsent = self._producer.flush(self.settings.admin_timeout_s)
        except KafkaException as exc:
            raise KafkaUnavailableError(f"receipts not written to {self.topic}: {exc}") from exc
        if unsent or errors:
            raise KafkaUnavailableError(
                f"receipts not written to {self.topic}: "
                f"{errors[0].str() if errors else f'{unsent} not acknowledged'}")

    def close(self) -> None:
        self._producer.flush(self.settings.admin_timeout_s)
