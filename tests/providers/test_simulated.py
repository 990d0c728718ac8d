"""The simulated provider's cancel, on its own queue file: a cancel repeated for a message it
already cancelled (a new owner of the outbox after a crash) is answered cancelled, as its queue
proves, and a delivered message is too late."""

from __future__ import annotations

from pathlib import Path

from streams.providers.base import CancelStatus, Handoff, SubmitStatus
from streams.providers.simulated import CANCELLED, DELIVERED, SimulatedAdapter, queue_path
from tests.support import wait_for


def test_a_cancel_repeated_after_a_crash_is_cancelled(tmp_path: Path) -> None:
    queue = queue_path(tmp_path, "sms")
    held = SimulatedAdapter(queue, "sms", delay_s=600)
    answers = held.submit([Handoff(f"c1:sms:{i}", "c1", "sms", f"r{i}", "offer") for i in range(2)])
    assert [a.status for a in answers] == [SubmitStatus.ACCEPTED] * 2
    ids = {a.message_id: str(a.provider_id) for a in answers}
    assert set(held.cancel("c1", ids).values()) == {CancelStatus.CANCELLED}
    held.close()  # the process dies before its outbox recorded the cancellations
    again = SimulatedAdapter(queue, "sms", delay_s=600)
    try:
        assert set(again.cancel("c1", ids).values()) == {CancelStatus.CANCELLED}
        again.delay_ms = 0  # the next one is delivered at once
        [late] = again.submit([Handoff("c1:sms:9", "c1", "sms", "r9", "offer")])
        wait_for(lambda: bool(again.deliveries()), "the simulated delivery", timeout_s=10)
        assert again.cancel("c1", {late.message_id: str(late.provider_id)}) == {
            late.message_id: CancelStatus.TOO_LATE}
        states = dict(again._db.execute("SELECT message_id, state FROM queue").fetchall())
        assert states == {**dict.fromkeys(ids, CANCELLED), late.message_id: DELIVERED}
    finally:
        again.close()
