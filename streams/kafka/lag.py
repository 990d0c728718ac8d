"""Consumer lag as a gauge: how far a stage is behind the end of its input, per topic."""

from __future__ import annotations

import threading

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streams.metrics import CONSUMER_LAG
from streams.settings import Settings

INTERVAL_S = 5.0


class LagGauge:
    """Refreshed every few seconds on a thread of its own: uncached watermarks cost a broker
    round trip per partition (the cached ones lag behind transaction markers), 50 to 100 ms
    each under load, which the stage's thread must not wait for. ``close`` it before the stage
    closes the consumer it reads positions from."""

    def __init__(self, source: Consumer, role: str, topics: list[str], settings: Settings) -> None:
        self.source = source
        self.gauges = {topic: CONSUMER_LAG.labels(role, topic) for topic in topics}
        self.timeout = settings.admin_timeout_s
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lag {role}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop refreshing; returns once no query of the consumer is under way."""
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while True:
            self.update()
            if self._closed.wait(INTERVAL_S):
                return

    def update(self) -> None:
        try:
            positions = self.source.position(self.source.assignment())
            lags = dict.fromkeys(self.gauges, 0)
            for tp in positions:
                if tp.topic not in lags:
                    continue
                if self._closed.is_set():
                    return
                _, high = self.source.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), timeout=self.timeout, cached=False)
                lags[tp.topic] += max(high - tp.offset, 0) if tp.offset >= 0 else high
        except KafkaException:
            return  # a rebalance in progress; the next round measures again
        for topic, lag in lags.items():
            self.gauges[topic].set(lag)
