"""A bounce rule against the real broker and the private Postfix: a campaign whose audience holds
addresses the receiver refuses (550 5.1.1 at ``refused.estop.test``: Postfix bounces them, the
MTA agent ships the bounce, the dispatcher reports a ``failed`` event) is stopped by the bounce
rule, with exactly one stop command, requested by ``guardrail:bounce``, audited, and every
message exactly one outcome; the same campaign with a share under the threshold is not stopped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streams.dispatch.dispatcher import UNDELIVERED_ERROR
from streams.guardrails.processor import read_windows
from streams.mta.agent_process import AgentProcess
from streams.mta.local import LocalMta
from streams.mta.postfix import REFUSED_DOMAIN
from streams.security import audit
from streams.serde import Serdes
from streams.settings import Settings
from tests.guardrails.support import only_rule, produce_campaign, stop_audit, stop_commands
from tests.pipeline.support import Workers, announce, wait_outcomes
from tests.reliability.support import campaign_events
from tests.support import wait_for

pytestmark = pytest.mark.broker

PLANNED = 600
RATE = 100  # messages a second through Postfix: the rule trips while the campaign still sends
WINDOW = 200  # the bounce rule looks at the first 200 outcomes, from 50 on, for 10%


@pytest.fixture
def through_postfix(smtp_settings: Settings, receiver_up: LocalMta,
                    agent: AgentProcess) -> Iterator[Workers]:
    """Workers sending email through the private Postfix, stopped at teardown."""
    started = Workers(smtp_settings)
    try:
        yield started
    finally:
        started.stop_all()


def campaign(settings: Settings, serdes: Serdes, workers: Workers, name: str, every: int) -> set[str]:
    """A campaign of PLANNED emails, every ``every``-th to an address the receiver refuses, with
    the bounce rule and the guardrail processor running; its message ids."""
    only_rule(settings, serdes, "bounce", threshold=0.10, min_sample=50, window="first",
              window_size=WINDOW)
    workers.start("--role", "guardrail")
    workers.start("--channel", "email", rate=RATE, delay_s=0.0)
    announce(settings, serdes, name, ["email"], PLANNED)
    return set(produce_campaign(
        settings, serdes, name, "email", PLANNED,
        lambda i: f"r{i}@{REFUSED_DOMAIN}" if i % every == 0 else f"r{i}@example.test"))


def test_a_campaign_bouncing_through_postfix_is_stopped_once_by_the_bounce_rule(
        smtp_settings: Settings, serdes: Serdes, through_postfix: Workers) -> None:
    settings, name = smtp_settings, "bouncing"
    ids = campaign(settings, serdes, through_postfix, name, every=4)  # 25% refused
    wait_for(lambda: bool(stop_commands(settings, serdes, name)), "the guardrail's stop")
    wait_outcomes(settings, name, PLANNED)
    events = campaign_events(settings, serdes, name)
    assert events.duplicates() == {}, "a message has more than one outcome"
    assert set(events.ids()) == ids, "a message has no outcome"
    bounced = [e for e in events.failed if e["error"].startswith(UNDELIVERED_ERROR)]
    assert bounced and all("550 5.1.1" in e["error"] for e in bounced)
    (stop,) = stop_commands(settings, serdes, name)
    assert stop["requested_by"] == "guardrail:bounce"
    assert "bounce rate" in stop["reason"] and "threshold 10.00%" in stop["reason"]
    assert {e["stop_command_id"] for e in events.not_sent} <= {stop["command_id"]}
    # Recorded once the stop returned: its audit event is written by then.
    wait_for(lambda: any(w.stop_command_id for w in read_windows(settings, serdes, name)),
             "the trip's stop recorded")
    assert stop_audit(settings, serdes, name) == [("guardrail:bounce", audit.ACCEPTED, "guardrail")]
    (window,) = read_windows(settings, serdes, name)
    assert window.rule == "bounce" and window.stop_command_id == stop["command_id"]


def test_bounces_under_the_threshold_stop_nothing(
        smtp_settings: Settings, serdes: Serdes, through_postfix: Workers) -> None:
    settings, name = smtp_settings, "bouncing-little"
    ids = campaign(settings, serdes, through_postfix, name, every=25)  # 4% refused
    wait_outcomes(settings, name, PLANNED)
    events = campaign_events(settings, serdes, name)
    assert events.duplicates() == {} and set(events.ids()) == ids
    assert len(events.failed) == PLANNED // 25 and events.not_sent == []

    def window_full() -> bool:
        return any(w.totals()[0] >= WINDOW for w in read_windows(settings, serdes, name))

    wait_for(window_full, "the bounce rule's window full")
    (window,) = read_windows(settings, serdes, name)
    sample, hits = window.totals()
    assert hits > 0 and hits / sample < 0.10 and window.tripped_at is None
    assert stop_commands(settings, serdes, name) == []
