"""The emergency stop through a real MTA: a worker hands email to the private Postfix over SMTP;
the receiver (the internet) goes down, so the rest of the campaign waits in Postfix's deferred
queue after the campaign Finished; the stop deletes it there, through the MTA agent. Once the
receiver is back, not one message of the stopped campaign arrives (counted at the receiver),
every message has exactly one outcome, sent is exactly what arrived, and the report says how
many were cancelled at the provider. And a dispatcher SIGKILLed between an SMTP submission and
its record in the ledger neither delivers a message twice nor loses one.

Deliveries reach the dispatcher only through dispatch.email.receipts, where the agent ships
Postfix's log."""

from __future__ import annotations

import json
import threading

import pytest

from streams.campaigns.launcher import LaunchResult, launch
from streams.control.stop import issue_stop
from streams.dispatch.changelog import LedgerStats
from streams.models import REASON_CANCELLED, REASON_HELD, STAGE_PROVIDER
from streams.mta.agent_process import AgentProcess
from streams.mta.local import LocalMta
from streams.mta.maillog import MAYBE_SENT
from streams.serde import Serdes
from streams.settings import Settings
from tests.providers.support import receipts_of
from tests.reliability.support import WAIT_S, Fleet, assert_exact, env_of, wait_for
from tests.support import ESTOP, run_estop

pytestmark = pytest.mark.broker

RECIPIENTS = 600
ARRIVED_BEFORE_OUTAGE = 60
ENV = {"ESTOP_PROVIDER_RATE": "300", "ESTOP_BATCH_SIZE": "100"}


def launched_in_background(settings: Settings, campaign: str, count: int) -> tuple[threading.Thread,
                                                                                  list[LaunchResult]]:
    results: list[LaunchResult] = []
    thread = threading.Thread(target=lambda: results.append(
        launch(settings, Serdes(), campaign, ["email"], count)), daemon=True)
    thread.start()
    return thread, results


def test_a_stop_deletes_the_mail_waiting_in_postfix_and_none_of_it_arrives(
    smtp_settings: Settings, receiver_up: LocalMta, agent: AgentProcess
) -> None:
    settings, mta = smtp_settings, receiver_up
    campaign = "mta-stop"
    fleet = Fleet(settings, **ENV)
    try:
        fleet.start("worker", "--channel", "email")
        launcher, launched = launched_in_background(settings, campaign, RECIPIENTS)
        wait_for(lambda: mta.receiver.arrivals().count(campaign) >= ARRIVED_BEFORE_OUTAGE,
                 f"{ARRIVED_BEFORE_OUTAGE} messages at the receiver")
        mta.receiver_down()
        outbox = LedgerStats(settings, "email")

        def all_accepted() -> bool:
            fleet.check()
            return outbox.handed(campaign) == RECIPIENTS

        # The campaign Finished: Postfix accepted all of it; what did not get out waits there.
        wait_for(all_accepted, "Postfix to accept every message of the campaign")
        launcher.join(WAIT_S)
        assert launched, "the launcher did not finish"
        wait_for(lambda: mta.postfix.counts().by_queue.get("deferred", 0) > 0,
                 "mail to wait in the deferred queue")
        waiting = mta.postfix.counts().total
        assert waiting > 0

        result = issue_stop(settings, Serdes(), campaign, "wrong discount code", [],
                            by="test operator", timeout_s=60)
        assert result.confirmed
        events, found = assert_exact(settings, Serdes(), campaign, {"email": RECIPIENTS}, result)

        # The internet is back: whatever Postfix still held goes out, and the queue empties.
        mta.receiver_up()
        wait_for(lambda: mta.postfix.counts().total == 0, "Postfix's queue to empty")
        arrived = mta.receiver.arrivals()
        sent_ids = {e["message_id"] for e in events.sent}
        # Sent means it reached the receiver; nothing else did. Taking the receiver down can cut
        # a message after its data and before the answer: the receiver may or may not have
        # written it, and it counts as sent (Postfix's log: "may be sent more than once"; the
        # agent ships its removal as its delivery).
        uncertain = {d.message_id for _, d in receipts_of(settings, sent_ids) if d.detail == MAYBE_SENT}
        assert arrived.ids(campaign) <= sent_ids
        assert sent_ids - arrived.ids(campaign) <= uncertain
        assert arrived.twice(campaign) == 0
        assert arrived.count(campaign) < RECIPIENTS

        cancelled = [e for e in events.not_sent if e["reason"].startswith(REASON_CANCELLED)]
        held = [e for e in events.not_sent if e["reason"].startswith(REASON_HELD)]
        assert all(e["stage"] == STAGE_PROVIDER for e in events.not_sent)
        assert len(cancelled) > 0 and not held  # all of it had reached Postfix: Finished
        assert len(cancelled) + len(sent_ids) == RECIPIENTS
        # The workers' acknowledgements, the report and `estop report` agree on the count.
        assert result.halted == len(cancelled)
        assert found["cancelled_at_provider"] == len(cancelled)
        printed = json.loads(run_estop("report", campaign, "--json", env=env_of(settings)).stdout)
        assert printed["cancelled_at_provider"] == len(cancelled)
        table = run_estop("report", campaign, env={**env_of(settings), "COLUMNS": "120"}).stdout
        assert f"{len(cancelled):,} cancelled at the provider" in table
    finally:
        fleet.stop_all()


def test_a_dispatcher_killed_between_smtp_submission_and_its_ledger_record(
    smtp_settings: Settings, receiver_up: LocalMta, agent: AgentProcess
) -> None:
    settings, mta = smtp_settings, receiver_up
    campaign = "mta-kill"
    count = 400
    fleet = Fleet(settings, **ENV)
    try:
        fleet.start("gate", "--role", "gate", "--channel", "email")
        fleet.start("dispatcher", "--role", "dispatcher", "--channel", "email",
                    crash_at="handoff-submitted")
        fleet.start("sink", "--role", "sink")
        launcher, launched = launched_in_background(settings, campaign, count)
        # Postfix accepted a slice; the process died before the ledger recorded its queue ids.
        fleet.crashed("dispatcher")
        fleet.restart("dispatcher")
        launcher.join(WAIT_S)
        assert launched, "the launcher did not finish"

        _, found = assert_exact(settings, Serdes(), campaign, {"email": count}, None)
        assert found["sent"] == count
        wait_for(lambda: mta.postfix.counts().total == 0, "Postfix's queue to empty")
        arrived = mta.receiver.arrivals()
        assert arrived.count(campaign) == count  # none lost
        assert arrived.twice(campaign) == 0  # none delivered twice
        # The restarted dispatcher found the messages in doubt in Postfix's log (asking the
        # agent) instead of submitting them again.
        output = fleet.procs["dispatcher"].output()
        assert "messages in doubt were found at the provider" in output
        assert LedgerStats(settings, "email").resubmitted(campaign) > 0
    finally:
        fleet.stop_all()


def test_a_worker_refuses_to_start_with_a_provider_it_cannot_use(settings: Settings) -> None:
    """One line naming the setting, a non-zero exit, no traceback."""
    for url, code, words in [("kumo://mta:8000", 2, "unknown provider"),
                             ("smtp://127.0.0.1:1", 2, "needs its token"),
                             ("smtp://127.0.0.1:1?agent=http://127.0.0.1:1", 1,
                              "the MTA agent at http://127.0.0.1:1 does not answer")]:
        env = {**env_of(settings), "ESTOP_EMAIL_PROVIDER": url}
        if "agent=" in url:
            env["ESTOP_MTA_AGENT_TOKEN"] = "a-token"
        done = run_estop("worker", "--role", "dispatcher", "--channel", "email", env=env,
                         timeout_s=120)
        assert done.returncode == code, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("estop:")]
        assert len(errors) == 1 and "ESTOP_EMAIL_PROVIDER" in errors[0] and words in errors[0]
        assert "Traceback" not in done.stderr
    assert ESTOP.exists()
