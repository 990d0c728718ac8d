"""The guardrail processor against the real broker: a rule that trips writes exactly one real
stop (requested by guardrail:<rule>, audited, every message one outcome); under the threshold
nothing is stopped; a processor SIGKILLed after it recorded a trip neither misses it nor stops
twice."""

from __future__ import annotations

import json
import signal
from typing import Any

from streams.guardrails import feedback
from streams.guardrails.processor import read_windows, trip_command_id
from streams.guardrails.rules import parse, set_rule
from streams.security import audit
from streams.serde import Serdes
from streams.settings import Settings
from tests.pipeline.support import (
    Workers,
    announce,
    cli_env,
    control_records,
    produce_requests,
    records,
    wait_for,
    wait_outcomes,
)
from tests.support import run_estop

CAMPAIGN = "guarded"
PLANNED = 200
ACTOR = audit.Actor("tester", "cli", "test")


def complaint_rule(settings: Settings, serdes: Serdes, threshold: float) -> None:
    """Only the complaint rule, over the first 100 outcomes, from 50 on."""
    for name in ("bounce", "provider-failure", "unsubscribe"):
        set_rule(settings, serdes, ACTOR, {"name": name, "enabled": False})
    set_rule(settings, serdes, ACTOR, {"name": "complaint", "threshold": threshold,
                                       "min_sample": 50, "window": "first", "window_size": 100})


def complaints(message_ids: list[str], count: int) -> list[dict[str, Any]]:
    return [feedback.check({"kind": "complaint", "message_id": m, "campaign_id": CAMPAIGN,
                            "channel": "email"}, "test-webhook")
            for m in message_ids[:count]]


def guardrail_stops(settings: Settings, serdes: Serdes) -> list[dict[str, Any]]:
    return [serdes.control_command.decode(m.value()) for m in control_records(settings, CAMPAIGN)
            if m.value() is not None
            and serdes.control_command.decode(m.value())["requested_by"].startswith("guardrail:")]


def run_campaign(settings: Settings, serdes: Serdes, workers: Workers) -> list[str]:
    workers.start("--channel", "email", delay_s=0.0)
    announce(settings, serdes, CAMPAIGN, ["email"], PLANNED)
    ids = produce_requests(settings, serdes, settings.topics.send_requests("email"), CAMPAIGN,
                           "email", range(PLANNED))
    wait_outcomes(settings, CAMPAIGN, PLANNED)
    return ids


def test_a_complaint_rule_trips_once_and_stops_the_campaign(settings: Settings, serdes: Serdes,
                                                            workers: Workers) -> None:
    complaint_rule(settings, serdes, 0.05)
    ids = run_campaign(settings, serdes, workers)
    workers.start("--role", "guardrail")
    feedback.publish(settings, serdes, complaints(ids, 10))  # 10 of the first 100+: 5% or more
    wait_for(lambda: bool(guardrail_stops(settings, serdes)), "the guardrail's stop")
    wait_for(lambda: any(w.stop_command_id for w in read_windows(settings, serdes, CAMPAIGN)),
             "the trip's stop recorded")
    (stop,) = guardrail_stops(settings, serdes)
    assert stop["requested_by"] == "guardrail:complaint"
    assert "complaint rate" in stop["reason"] and "threshold 5.00%" in stop["reason"]
    (window,) = [w for w in read_windows(settings, serdes, CAMPAIGN) if w.tripped_at]
    assert window.stop_command_id == stop["command_id"]
    trail = [serdes.audit.decode(m.value()) for m in records(settings, settings.topics.audit)]
    stops = [e for e in trail if e["action"] == audit.STOP]
    assert [(e["actor"], e["outcome"], e["via"]) for e in stops] == [
        ("guardrail:complaint", audit.ACCEPTED, "guardrail")]
    # `estop report` says who stopped it, in its JSON and its table.
    workers.start("--role", "sink")
    wait_for(lambda: reported(settings)["stops"] != [], "the stop in the analytics store")
    assert reported(settings)["stopped_by"] == "guardrail:complaint"
    table = run_estop("report", CAMPAIGN, env={**cli_env(settings), "COLUMNS": "200"})
    assert f"{CAMPAIGN}: Stopped by guardrail:complaint" in table.stdout


def reported(settings: Settings) -> dict[str, Any]:
    """`estop report CAMPAIGN --json`."""
    done = run_estop("report", CAMPAIGN, "--json", env=cli_env(settings))
    if done.returncode == 2:  # the analytics store has nothing of it yet
        return {"stops": []}
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_under_the_threshold_nothing_is_stopped(settings: Settings, serdes: Serdes,
                                               workers: Workers) -> None:
    complaint_rule(settings, serdes, 0.05)
    ids = run_campaign(settings, serdes, workers)
    workers.start("--role", "guardrail")
    feedback.publish(settings, serdes, complaints(ids, 3))  # 3 of 200: 1.5%
    # The processor reads the outcomes and the feedback side by side: the complaints may be
    # counted before every sent event is.
    wait_for(lambda: any(w.totals() == (PLANNED, 3) for w in read_windows(settings, serdes, CAMPAIGN)),
             "every sent event and the complaints counted")
    (window,) = read_windows(settings, serdes, CAMPAIGN)
    assert window.totals() == (PLANNED, 3) and window.tripped_at is None
    assert guardrail_stops(settings, serdes) == []


def test_a_processor_killed_after_the_trip_stops_once(settings: Settings, serdes: Serdes,
                                                      workers: Workers) -> None:
    """SIGKILLed right after it committed the trip, before writing the stop: the next processor
    restores the trip from the changelog and writes the one stop; killed again after that, the
    one after writes none."""
    complaint_rule(settings, serdes, 0.05)
    ids = run_campaign(settings, serdes, workers)
    first, _ = workers.start("--role", "guardrail", env={"ESTOP_CRASH_AT": "guardrail-tripped"})
    feedback.publish(settings, serdes, complaints(ids, 5))
    wait_for(lambda: any(w.totals()[1] == 5 for w in read_windows(settings, serdes, CAMPAIGN)),
             "half the complaints counted")
    feedback.publish(settings, serdes, complaints(ids[5:], 5))
    wait_for(lambda: first.process.poll() is not None, "the processor killed at its trip")
    assert first.process.returncode == -signal.SIGKILL
    assert guardrail_stops(settings, serdes) == []
    second, _ = workers.start("--role", "guardrail")
    wait_for(lambda: any(w.stop_command_id for w in read_windows(settings, serdes, CAMPAIGN)),
             "the trip's stop recorded")
    second.process.send_signal(signal.SIGKILL)
    second.process.wait()
    workers.start("--role", "guardrail")
    feedback.publish(settings, serdes, complaints(ids[10:], 5))
    wait_for(lambda: any(w.totals()[1] == 15 for w in read_windows(settings, serdes, CAMPAIGN)),
             "the later complaints counted")
    assert len(guardrail_stops(settings, serdes)) == 1


def test_a_processor_killed_in_the_middle_of_the_window_trips_once_later(
        settings: Settings, serdes: Serdes, workers: Workers) -> None:
    """SIGKILLed with part of the window counted (5 complaints, under the threshold): the next
    processor restores those counts from the changelog, so 5 more complaints trip the rule (not
    missed, not counted twice: the window holds exactly 10) and write exactly one stop, whose
    id is the trip's."""
    complaint_rule(settings, serdes, 0.05)
    ids = run_campaign(settings, serdes, workers)
    first, _ = workers.start("--role", "guardrail")
    feedback.publish(settings, serdes, complaints(ids, 5))
    wait_for(lambda: any(w.totals()[1] == 5 for w in read_windows(settings, serdes, CAMPAIGN)),
             "half the complaints counted")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    (window,) = read_windows(settings, serdes, CAMPAIGN)
    assert window.tripped_at is None and guardrail_stops(settings, serdes) == []
    workers.start("--role", "guardrail")
    feedback.publish(settings, serdes, complaints(ids[5:], 5))
    wait_for(lambda: any(w.stop_command_id for w in read_windows(settings, serdes, CAMPAIGN)),
             "the trip's stop recorded")
    (window,) = read_windows(settings, serdes, CAMPAIGN)
    assert window.totals()[1] == 10
    (stop,) = guardrail_stops(settings, serdes)
    assert stop["command_id"] == window.stop_command_id == trip_command_id(window)


def test_a_rule_is_checked_before_anything_is_written() -> None:
    for data, problem in [({"name": "x", "metric": "nope", "threshold": 0.1, "min_sample": 1},
                           "unknown metric"),
                          ({"name": "x", "metric": "bounce", "threshold": 2, "min_sample": 1},
                           "threshold"),
                          ({"name": "x y", "metric": "bounce", "threshold": 0.1, "min_sample": 1},
                           "rule name"),
                          ({"name": "x", "metric": "bounce", "threshold": 0.1, "min_sample": 5000,
                            "window_size": 100}, "never trip")]:
        try:
            parse({"scope": "*", **data}, "tester")
        except Exception as exc:
            assert problem in str(exc), (data, exc)
        else:
            raise AssertionError(f"{data} accepted")
