"""Guardrail windows without Kafka: a sliding window counts the last N seconds of event time and
forgets what falls out of it (a rule trips only while its window holds the minimum sample at the
threshold); a first-N window counts outcomes up to N (the batch that reaches N whole) and
feedback whenever it comes."""

from __future__ import annotations

from streams.guardrails.processor import Window
from streams.guardrails.rules import FIRST, SLIDING, Rule

SECOND = 1000
MINUTE = 60 * SECOND
T0 = 1_796_000_001_000  # a multiple of the 3 s buckets of a one-minute window


def window(rule: Rule) -> Window:
    return Window("spring", "email", rule.name, rule.window_id, 0)


def test_a_sliding_window_trips_on_the_last_minute_and_forgets_what_left_it() -> None:
    rule = Rule("complaint", "complaint", 0.05, 150, SLIDING, 60)
    counts = window(rule)
    counts.add(rule, 100, 10, T0)
    assert counts.totals() == (100, 10) and not counts.trips(rule)  # 10% under the minimum sample
    counts.add(rule, 100, 0, T0 + 30 * SECOND)
    assert counts.totals() == (200, 10) and counts.trips(rule)  # 5% of 200 within the minute
    counts.age(rule, T0 + 59 * SECOND)
    assert counts.totals() == (200, 10)
    counts.age(rule, T0 + MINUTE + 3 * SECOND)  # the first bucket is older than the minute
    assert counts.totals() == (100, 0) and not counts.trips(rule)
    counts.add(rule, 50, 8, T0 + 80 * SECOND)
    assert counts.totals() == (150, 8) and counts.trips(rule)
    counts.age(rule, T0 + 10 * MINUTE)
    assert counts.totals() == (0, 0) and counts.value() == 0.0


def test_counts_older_than_a_sliding_window_count_for_nothing() -> None:
    """A report that arrives late, about a time already out of the window, is not counted."""
    rule = Rule("complaint", "complaint", 0.05, 1, SLIDING, 60)
    counts = window(rule)
    counts.add(rule, 100, 0, T0 + 5 * MINUTE)
    counts.add(rule, 0, 50, T0)
    assert counts.totals() == (100, 0)


def test_a_window_survives_its_changelog_record() -> None:
    rule = Rule("complaint", "complaint", 0.05, 150, SLIDING, 60)
    counts = window(rule)
    counts.add(rule, 100, 10, T0)
    counts.add(rule, 100, 0, T0 + 30 * SECOND)
    again = Window.from_record(counts.record(), 0)
    assert again.totals() == (200, 10) and again.buckets == counts.buckets
    again.age(rule, T0 + MINUTE + 3 * SECOND)
    assert again.totals() == (100, 0)


def test_a_first_n_window_counts_outcomes_up_to_n_and_feedback_always() -> None:
    rule = Rule("bounce", "bounce", 0.10, 50, FIRST, 100)
    counts = window(rule)
    counts.add(rule, 60, 3, T0)
    counts.add(rule, 60, 3, T0 + SECOND)  # the batch that reaches 100 counts whole
    assert counts.totals() == (120, 6) and not counts.trips(rule)
    counts.add(rule, 500, 400, T0 + 2 * SECOND)  # outcomes past the window: not counted
    assert counts.totals() == (120, 6)
    counts.add(rule, 0, 6, T0 + 10 * MINUTE)  # feedback about its messages, however late
    assert counts.totals() == (120, 12) and counts.trips(rule)
    counts.age(rule, T0 + 24 * 60 * MINUTE)  # a first-N window never ages
    assert counts.totals() == (120, 12)
