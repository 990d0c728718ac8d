"""The dispatcher's outbox records when a message was handed over. A message whose submission
answer was lost (timeout) and which the provider is found to hold only later, after its
campaign was stopped, was handed over at its submission, before the stop: the leak count
(handoffs after the confirmed stop) must not count it."""

from __future__ import annotations

import time
from pathlib import Path

from streams.clock import now_ms
from streams.dispatch.outbox import Outbox, OutboxStats
from streams.providers.base import Handoff


def handoff(n: int) -> Handoff:
    return Handoff(f"m{n}", "spring-promo", "email", f"r{n}", "hello")


def test_a_message_found_at_the_provider_later_was_handed_over_at_its_submission(
        tmp_path: Path) -> None:
    outbox = Outbox.for_channel(tmp_path, "email")
    try:
        reserved = outbox.reserve([handoff(1), handoff(2)])
        assert [h.message_id for h in reserved.fresh] == ["m1", "m2"]
        # Both answers were lost. Then the stop is confirmed...
        time.sleep(0.01)
        confirmed_at = now_ms()
        time.sleep(0.01)
        # ... and settling the held-back messages finds m1 at the provider after all.
        assert outbox.states(["m1", "m2"]) == {"m1": "submitting", "m2": "submitting"}
        outbox.accepted({"m1": "q-1"}, None)
        outbox.not_held(["m2"])
        stats = OutboxStats(tmp_path, "email")
        assert stats.handed("spring-promo") == 1
        assert stats.handed_after("spring-promo", confirmed_at) == 0
        # A handoff the provider confirms after the stop is one, and is counted.
        outbox.reserve([handoff(3)])
        outbox.accepted({"m3": "q-3"}, now_ms())
        assert stats.handed_after("spring-promo", confirmed_at) == 1
    finally:
        outbox.close()


def test_a_resubmission_moves_the_handoff_time_to_the_latest_attempt(tmp_path: Path) -> None:
    outbox = Outbox.for_channel(tmp_path, "email")
    try:
        outbox.reserve([handoff(1)])  # answer lost
        time.sleep(0.01)
        before_retry = now_ms()
        time.sleep(0.01)
        again = outbox.reserve([handoff(1)])  # retried: in doubt, submitted again
        assert [h.message_id for h in again.in_doubt] == ["m1"]
        outbox.accepted({"m1": "q-1"}, None)
        assert OutboxStats(tmp_path, "email").handed_after("spring-promo", before_retry) == 1
    finally:
        outbox.close()
