"""The guardrail's fence against a partition moving while a trip's stop is written, in one
process against the real broker, with the write itself held in flight (the processor's own
``_stop`` replaced by one that waits: Kafka, the consumer and its revocation are real): a
revocation of the trip's partition returns only once the stop is written, and a trip whose
partition is no longer held here is left to its new owner, never written."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from confluent_kafka import TopicPartition

from streams.guardrails.processor import Judge, Window
from streams.serde import Serdes
from streams.settings import Settings
from tests.support import wait_for

pytestmark = pytest.mark.broker

HELD_S = 1.0  # how long the test keeps the write in flight before letting it finish


@pytest.fixture
def judge(settings: Settings, serdes: Serdes) -> Iterator[Judge]:
    stage = Judge(settings, serdes, "fence-test")
    try:
        yield stage
    finally:
        stage.rules.close()
        stage.consumer.close()


def trip(partition: int) -> Window:
    return Window(f"spring-{partition}", "email", "bounce", "first:100", partition, tripped_at=1,
                  trip_reason="guardrail bounce: test")


def test_a_revocation_waits_for_the_stop_in_flight_and_a_moved_trip_is_not_stopped(
        settings: Settings, judge: Judge) -> None:
    started, finish = threading.Event(), threading.Event()
    written: list[str] = []
    events: list[str] = []

    def write(window: Window) -> str:
        started.set()
        finish.wait(60)
        events.append("written")
        judge._wrote()  # the stop is on campaign-control (as audited_stop's on_written says)
        written.append(window.campaign_id)
        return f"command-{window.campaign_id}"

    judge._stop = write  # type: ignore[method-assign]
    running = threading.Event()
    running.set()
    stopper = threading.Thread(target=judge._stop_trips, args=(running,), daemon=True)
    stopper.start()
    try:
        judge.ready = frozenset({0, 1})
        judge.trips.put(trip(0))
        assert started.wait(60), "the stop was not written"

        def revoke() -> None:
            judge._dropped([TopicPartition(settings.topics.guardrail_counts, 0)], lost=False)
            events.append("revoked")

        revocation = threading.Thread(target=revoke)
        revocation.start()
        revocation.join(HELD_S)
        finish.set()
        revocation.join(60)
        assert events == ["written", "revoked"]  # the revocation waited for the write

        judge.trips.put(trip(0))  # partition 0 moved: its new owner restores this trip
        judge.trips.put(trip(1))  # partition 1 is still held here
        wait_for(lambda: "spring-1" in written, "the stop of the held partition's trip")
        assert written == ["spring-0", "spring-1"]
    finally:
        running.clear()
        stopper.join(5)
