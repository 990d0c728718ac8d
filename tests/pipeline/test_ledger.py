"""The handoff ledger's own rules, without Kafka: when a message counts as handed over, and how
a message's entry moves from reserved to accepted to reported.

A message whose submission answer was lost (timeout) and which the provider is found to hold
only later, after its campaign was stopped, was handed over at its submission, before the stop:
the leak count (handoffs after the confirmed stop) must not count it."""

from __future__ import annotations

import time

from streams.clock import now_ms
from streams.dispatch.ledger import (
    ACCEPTED,
    CANCELLED,
    DELIVERED,
    REPORTED,
    SUBMITTING,
    UNCONFIRMED,
    Entry,
    Ledger,
    Outcome,
    PartitionLedger,
)
from streams.providers.base import Delivery, Handoff


def handoff(n: int) -> Handoff:
    return Handoff(f"m{n}", "spring-promo", "email", f"r{n}", "hello")


def ledger() -> Ledger:
    """A ledger holding partition 0, whose outcome events name the entry they report."""
    held = Ledger("email", lambda e: ("events", e.message_id.encode(), e.outcome.encode(), []))
    held.add([PartitionLedger(0)])
    return held


def at(*numbers: int) -> dict[str, tuple[int, int]]:
    return {f"m{n}": (0, n) for n in numbers}


def handed_after(held: Ledger, at_ms: int) -> int:
    return sum(1 for e in held.entries() if e.handed_at is not None and e.handed_at > at_ms)


def test_a_message_found_at_the_provider_later_was_handed_over_at_its_submission() -> None:
    held = ledger()
    reserved = held.reserve([handoff(1), handoff(2)], at(1, 2))
    assert [h.message_id for h in reserved.fresh] == ["m1", "m2"]
    # Both answers were lost. Then the stop is confirmed...
    time.sleep(0.01)
    confirmed_at = now_ms()
    time.sleep(0.01)
    # ... and settling the held-back messages finds m1 at the provider after all.
    assert held.states(["m1", "m2"]) == {"m1": SUBMITTING, "m2": SUBMITTING}
    held.accepted({"m1": "q-1"}, None)
    held.not_held(["m2"])
    assert sum(1 for e in held.entries() if e.handed_at is not None) == 1
    assert handed_after(held, confirmed_at) == 0
    # A handoff the provider confirms after the stop is one, and is counted.
    held.reserve([handoff(3)], at(3))
    held.accepted({"m3": "q-3"}, now_ms())
    assert handed_after(held, confirmed_at) == 1
    # What the changelog gets: m2's reservation is withdrawn (a tombstone), the others recorded.
    changes = held.take_pending().changes
    assert changes[(0, "m2")] is None
    assert {m: c.state for (_, m), c in changes.items() if c is not None} == {
        "m1": ACCEPTED, "m3": ACCEPTED}


def test_a_resubmission_moves_the_handoff_time_to_the_latest_attempt() -> None:
    held = ledger()
    held.reserve([handoff(1)], at(1))  # answer lost
    time.sleep(0.01)
    before_retry = now_ms()
    time.sleep(0.01)
    again = held.reserve([handoff(1)], at(1))  # retried: in doubt, submitted again
    assert [h.message_id for h in again.in_doubt] == ["m1"]
    held.accepted({"m1": "q-1"}, None)
    assert handed_after(held, before_retry) == 1
    assert next(held.entries()).attempts == 2


def test_an_accepted_message_is_never_submitted_again_and_reports_once() -> None:
    held = ledger()
    held.reserve([handoff(1)], at(1))
    held.accepted({"m1": "q-1"}, now_ms())
    again = held.reserve([handoff(1)], at(1))  # redelivered after a crash
    assert (again.fresh, again.in_doubt, again.already) == ([], [], 1)
    assert held.at_provider("spring-promo") == {"m1": "q-1"}
    # The provider's receipt names only its own id: the ledger finds the message by it.
    assert held.delivered(Delivery("", "q-1", True, now_ms())) == "applied"
    assert held.delivered(Delivery("m1", "q-1", True, now_ms())) == "done"
    assert held.at_provider("spring-promo") == {}
    pending = held.take_pending()
    [reported] = [c for c in pending.changes.values() if c is not None]
    assert (reported.state, reported.outcome) == (REPORTED, DELIVERED)
    assert list(pending.events.values()) == [("events", b"m1", b"delivered", [])]


def test_a_receipt_before_the_acceptance_is_recorded_waits() -> None:
    held = ledger()
    held.reserve([handoff(1)], at(1))
    assert held.delivered(Delivery("m1", "q-1", True, now_ms())) == "early"
    held.accepted({"m1": "q-1"}, now_ms())
    assert held.delivered(Delivery("m1", "q-1", True, now_ms())) == "applied"


def test_a_cancelled_message_is_reported_with_the_stop_and_pruned_once_its_input_is_committed(
) -> None:
    held = ledger()
    held.reserve([handoff(1), handoff(2)], at(1, 2))
    held.accepted({"m1": "q-1", "m2": "q-2"}, now_ms())
    found = held.find("m1")
    assert found is not None
    held.report(found[0], found[1], Outcome(CANCELLED, now_ms(), "wrong code", "cmd-1", 1))
    assert held.at_provider("spring-promo") == {"m2": "q-2"}
    assert held.prune({0: 2}) == 1  # m1 reported, its request (offset 1) committed
    assert [e.message_id for e in held.entries()] == ["m2"]
    assert held.prune({0: 3}) == 0  # m2 still has no outcome


def test_a_failed_transaction_keeps_its_changes_for_the_next_one_unless_the_partition_left() -> None:
    held = ledger()
    held.add([PartitionLedger(1)])
    held.reserve([handoff(1)], at(1))
    held.reserve([handoff(2)], {"m2": (1, 2)})
    failed = held.take_pending()
    held.reserve([handoff(3)], at(3))
    held.remove([1])
    held.restore_pending(failed)
    assert set(held.pending.changes) == {(0, "m1"), (0, "m3")}


def test_an_entry_round_trips_through_its_changelog_record() -> None:
    entry = Entry("m1", "c", "r1", 7, ACCEPTED, "q-1", 1, 2, 3, None, None, None, None, None)
    assert Entry.from_record(entry.record()) == entry


def test_a_delivery_receipt_after_a_cancel_wins_and_reports_the_message_sent() -> None:
    """A provider that delivered a message after all (its cancel came too late, or it was only
    taken, not proven) says so in a receipt: the message is reported sent, once."""
    held = ledger()
    held.reserve([handoff(1), handoff(2)], at(1, 2))
    held.accepted({"m1": "q-1", "m2": "q-2"}, now_ms())
    for message_id, outcome in (("m1", CANCELLED), ("m2", UNCONFIRMED)):
        found = held.find(message_id)
        assert found is not None
        held.report(found[0], found[1], Outcome(outcome, now_ms(), "wrong code", "cmd-1", 1))
    held.take_pending()
    # The receipts name only the provider's ids, as an SMSC's do.
    assert held.delivered(Delivery("", "q-2", True, now_ms())) == "applied"
    assert held.delivered(Delivery("", "q-2", True, now_ms())) == "done"
    assert held.delivered(Delivery("", "q-1", False, now_ms())) == "done"  # undelivered: stays
    assert list(held.take_pending().events.values()) == [("events", b"m2", b"delivered", [])]
    # A cancel the provider did not confirm stays open to a receipt after its request is
    # committed; a proven one is reduced to its id.
    found = held.find("m2")
    assert found is not None
    held.report(found[0], found[1], Outcome(UNCONFIRMED, now_ms(), "again", "cmd-2", 2))
    assert held.prune({0: 3}) == 1
    assert [e.message_id for e in held.entries()] == ["m2"]
    assert held.states(["m1", "m2"]) == {"m1": REPORTED, "m2": REPORTED}
    # Past the retention both are forgotten, tombstoned in the changelog.
    assert held.expire(now_ms() + 1) == 2
    assert held.take_pending().changes == {(0, "m1"): None, (0, "m2"): None}
    assert held.states(["m1", "m2"]) == {}


def test_a_request_queued_again_long_after_its_outcome_is_not_handed_over_again() -> None:
    held = ledger()
    held.reserve([handoff(1)], at(1))
    held.accepted({"m1": "q-1"}, now_ms())
    assert held.delivered(Delivery("m1", "q-1", True, now_ms())) == "applied"
    held.prune({0: 2})
    assert list(held.entries()) == []
    again = held.reserve([handoff(1)], {"m1": (0, 9)})  # the engine queued it again
    assert (again.fresh, again.in_doubt, again.already) == ([], [], 1)
    assert held.has_campaign(["spring-promo"])
