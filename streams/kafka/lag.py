"""Consumer lag as a gauge: how far a stage is behind the end of its input, per topic."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streams.metrics import CONSUMER_LAG
from streams.settings import Settings

INTERVAL_S = 5.0


class LagGauge:
    def __init__(self, source: Consumer, role: str, topic: str, settings: Settings) -> None:
        self.source = source
        self.topic = topic
        self.gauge = CONSUMER_LAG.labels(role, topic)
        self.timeout = settings.admin_timeout_s
        self._next = 0.0

    def maybe_update(self) -> None:
        """At most every few seconds: watermarks cost a broker round trip per partition, taken
        on the stage's own thread (the cached watermarks lag behind transaction markers)."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + INTERVAL_S
        try:
            assigned = [tp for tp in self.source.assignment() if tp.topic == self.topic]
            lag = 0
            for tp in self.source.position(assigned):
                _, high = self.source.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), timeout=self.timeout, cached=False)
                lag += max(high - tp.offset, 0) if tp.offset >= 0 else high
            self.gauge.set(lag)
        except KafkaException:
            return  # a rebalance in progress; the next batch measures again
