"""Canary launches against the real broker and real workers: a canary stopped during its hold
leaves the rest never queued (notSent, stage sending: one outcome per planned message); one
released, by an operator or by its hold passing, queues every recipient exactly once, also when
the launcher was killed during the hold and started again (its state is on Kafka)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections import Counter

import pytest

from streams.campaigns import canary
from streams.campaigns.launcher import LaunchResult, launch, message_id
from streams.control.stop import issue_stop
from streams.guardrails import feedback
from streams.guardrails.rules import set_rule
from streams.models import HEADER_CAMPAIGN, STAGE_SENDING, STATE_FINISHED, STATE_STOPPED
from streams.security import audit
from streams.serde import Serdes
from streams.settings import Settings
from tests.pipeline.support import (
    WAIT_S,
    Workers,
    cli_env,
    control_records,
    header,
    read_events,
    records,
    wait_for,
    wait_outcomes,
)
from tests.support import ESTOP, run_estop

pytestmark = pytest.mark.broker

CHANNELS = ["email", "sms"]
N = 1000


def queued(settings: Settings, campaign: str) -> Counter[str]:
    """How many times each message id of the campaign is on its send-requests topics."""
    return Counter(m.key().decode() for c in CHANNELS  # type: ignore[union-attr]
                   for m in records(settings, settings.topics.send_requests(c))
                   if header(m, HEADER_CAMPAIGN) == campaign)


def holding(settings: Settings, serdes: Serdes, campaign: str) -> bool:
    state = canary.read_state(settings, serdes, campaign)
    return state is not None and state["state"] == canary.HOLDING


class Background:
    def __init__(self, *args: object, **kwargs: object) -> None:
        self.result: LaunchResult | None = None
        self.thread = threading.Thread(target=self._run, args=args, kwargs=kwargs, daemon=True)
        self.thread.start()

    def _run(self, *args: object, **kwargs: object) -> None:
        self.result = launch(*args, **kwargs)  # type: ignore[arg-type]

    def join(self) -> LaunchResult:
        self.thread.join(WAIT_S)
        assert self.result is not None, "the launcher did not finish"
        return self.result


def test_a_canary_stopped_during_its_hold_never_queues_the_rest(
        settings: Settings, serdes: Serdes, workers: Workers) -> None:
    workers.start()
    campaign = "canary-trip"
    launcher = Background(settings, serdes, campaign, CHANNELS, N, canary=0.02, hold_s=600)
    wait_for(lambda: holding(settings, serdes, campaign), "the canary cohort to be queued")
    # What a guardrail's stop would be: the same command, another requester.
    stop = issue_stop(settings, serdes, campaign, "bounce rate 12% over 5%", [],
                      "guardrail:bounces", 60)
    assert stop.confirmed
    result = launcher.join()
    assert result.released_by is None and result.state == STATE_STOPPED
    cohort = {c: 20 for c in CHANNELS}
    assert result.queued == cohort
    assert result.never_queued == {c: N - 20 for c in CHANNELS}
    on_topics = queued(settings, campaign)
    assert set(on_topics) == {message_id(campaign, c, i) for c in CHANNELS for i in range(20)}
    assert set(on_topics.values()) == {1}

    wait_outcomes(settings, campaign, len(CHANNELS) * N)
    events = read_events(settings, serdes, campaign)
    assert len(events) == len({e.message_id for e in events}) == len(CHANNELS) * N
    never = [e for e in events if e.kind == "notsent" and "never queued" in e.record["reason"]]
    assert len(never) == len(CHANNELS) * (N - 20)
    assert all(e.record["stage"] == STAGE_SENDING and e.record["stop_command_id"] == stop.command_id
               for e in never)
    assert canary.read_state(settings, serdes, campaign)["state"] == canary.DONE  # type: ignore[index]
    # Nothing left to release.
    refused = run_estop("release", campaign, env=cli_env(settings))
    assert refused.returncode == 2 and "not holding" in refused.stderr, refused.stderr


def test_a_released_canary_queues_everything_once_across_a_launcher_restart(
        settings: Settings, serdes: Serdes, workers: Workers) -> None:
    workers.start()
    campaign = "canary-release"
    command = [str(ESTOP), "launch", "--campaign", campaign, "--channel", "email", "--channel",
               "sms", "--recipients", str(N), "--canary", "5%", "--hold", "600"]
    env = {**os.environ, **cli_env(settings)}
    first = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: holding(settings, serdes, campaign), "the canary cohort to be queued")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    assert queued(settings, campaign).total() == len(CHANNELS) * 50

    released = run_estop("release", campaign, env=cli_env(settings))
    assert released.returncode == 0, released.stderr
    again = run_estop(*command[1:], env=cli_env(settings))
    assert again.returncode == 0, again.stderr
    assert "canary released by" in again.stdout and STATE_FINISHED in again.stdout, again.stdout

    on_topics = queued(settings, campaign)
    assert set(on_topics) == {message_id(campaign, c, i) for c in CHANNELS for i in range(N)}
    assert set(on_topics.values()) == {1}, "a request was queued twice"
    state = canary.read_state(settings, serdes, campaign)
    assert state is not None and state["state"] == canary.DONE
    assert state["released_by"] not in (None, canary.RELEASED_BY_HOLD)
    assert wait_outcomes(settings, campaign, len(CHANNELS) * N).total == len(CHANNELS) * N
    # A finished canary is not launched again.
    repeated = run_estop(*command[1:], env=cli_env(settings))
    assert repeated.returncode == 2 and "launched already" in repeated.stderr


def test_a_canary_whose_hold_passes_queues_the_rest(settings: Settings, serdes: Serdes) -> None:
    result = launch(settings, serdes, "canary-hold", CHANNELS, 200, canary=0.1, hold_s=1)
    assert result.released_by == canary.RELEASED_BY_HOLD and result.state == STATE_FINISHED
    assert result.queued == {c: 200 for c in CHANNELS}
    on_topics = queued(settings, "canary-hold")
    assert len(on_topics) == 400 and set(on_topics.values()) == {1}


def test_bad_canaries_are_refused_before_anything_is_written(settings: Settings) -> None:
    for share, problem in [("0%", "more than 0%"), ("100%", "less than 100%"),
                           ("two", "percentage of the audience")]:
        answer = run_estop("launch", "--campaign", "bad-canary", "--channel", "email",
                           "--recipients", "10", "--canary", share, env=cli_env(settings))
        assert answer.returncode == 2 and problem in answer.stderr, answer.stderr
    hold_alone = run_estop("launch", "--campaign", "bad-canary", "--channel", "email",
                           "--recipients", "10", "--hold", "5", env=cli_env(settings))
    assert hold_alone.returncode == 2 and "--canary" in hold_alone.stderr
    assert records(settings, settings.topics.status) == []
    unknown = run_estop("release", "never-launched", env=cli_env(settings))
    assert unknown.returncode == 2 and "not launched with a canary" in unknown.stderr


def test_a_guardrail_trip_during_the_canary_leaves_the_rest_never_queued(
        settings: Settings, serdes: Serdes, workers: Workers) -> None:
    """The guardrail processor, not a person: complaints on the first cohort trip a complaint
    rule during the hold, its stop (requested by guardrail:complaint) ends the canary, and the
    rest is never queued."""
    campaign = "canary-guarded"
    set_rule(settings, serdes, audit.Actor("tester", "cli", "test"),
             {"name": "complaint", "scope": campaign, "threshold": 0.05, "min_sample": 50,
              "window": "first", "window_size": 100})
    workers.start(delay_s=0.0)
    workers.start("--role", "guardrail")
    launcher = Background(settings, serdes, campaign, ["email"], 500, canary=0.2, hold_s=600)
    wait_for(lambda: holding(settings, serdes, campaign), "the canary cohort to be queued")
    feedback.publish(settings, serdes, [
        feedback.check({"kind": "complaint", "message_id": message_id(campaign, "email", i),
                        "campaign_id": campaign, "channel": "email"}, "test-webhook")
        for i in range(10)])
    result = launcher.join()
    assert result.released_by is None and result.state == STATE_STOPPED
    assert (result.queued, result.never_queued) == ({"email": 100}, {"email": 400})
    stops = [serdes.control_command.decode(m.value()) for m in control_records(settings, campaign)
             if m.value() is not None]
    assert {s["requested_by"] for s in stops} == {"guardrail:complaint"}
    assert len(queued(settings, campaign)) == 100
    wait_outcomes(settings, campaign, 500)
    never = [e for e in read_events(settings, serdes, campaign)
             if e.kind == "notsent" and "never queued" in e.record["reason"]]
    assert len(never) == 400 and {e.record["stage"] for e in never} == {STAGE_SENDING}
