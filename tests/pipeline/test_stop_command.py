"""The stop command as an operator uses it: validation that writes nothing, idempotence, and
`estop stop` / `estop status` on the command line."""

from __future__ import annotations

import getpass
import json
import subprocess

import pytest

from streams.campaigns.launcher import launch
from streams.clock import now_ms
from streams.control.exceptions import InvalidStopError
from streams.control.stop import issue_stop
from streams.dispatch.changelog import LedgerStats
from streams.models import (
    CHANNELS,
    HEADER_CAMPAIGN,
    HEADER_CHANNEL,
    STAGE_PROVIDER,
    STAGE_SENDING,
    STATE_FINISHED,
    STATE_STOPPED,
)
from streams.serde import Serdes
from streams.settings import Settings
from streams.sink.store import FAILED, NOT_SENT, SENT, Batch, OutcomeRow, open_store
from tests.pipeline.support import (
    StuckGate,
    Workers,
    announce,
    cli_env,
    control_records,
    end_offsets,
    produce_values,
    read_events,
    stored_outcomes,
    wait_for,
    wait_joined,
    wait_outcomes,
)
from tests.support import holders, run_estop

pytestmark = pytest.mark.broker


def written(settings: Settings) -> dict[str, dict[int, int]]:
    """End offsets of every topic a stop writes to."""
    topics = settings.topics
    return {t: end_offsets(settings, t) for t in (topics.control, topics.status, topics.acks)}


def assert_one_line_usage_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("estop: ")
    for needle in needles:
        assert needle in lines[0]
    assert result.stdout == ""


BAD_STOPS = [
    pytest.param("sale", "", [], "reason", id="empty reason"),
    pytest.param("sale", "   ", [], "reason", id="blank reason"),
    pytest.param("sale", "wrong code", ["email", "fax"], "fax", id="unknown channel"),
    pytest.param("never-seen", "wrong code", [], "never-seen", id="unknown campaign"),
]


@pytest.mark.parametrize(("campaign", "reason", "channels", "named"), BAD_STOPS)
def test_a_bad_stop_is_refused_and_writes_nothing(settings: Settings, serdes: Serdes,
                                                  campaign: str, reason: str, channels: list[str],
                                                  named: str) -> None:
    announce(settings, serdes, "sale", ["email", "sms"], 100)
    before = written(settings)

    with pytest.raises(InvalidStopError, match=named):
        issue_stop(settings, serdes, campaign, reason, channels, by="ops", timeout_s=5)
    args = ["stop", campaign, "--reason", reason, "--timeout", "5"]
    for channel in channels:
        args += ["--channel", channel]
    cli = run_estop(*args, env=cli_env(settings))

    assert_one_line_usage_error(cli, named)
    assert written(settings) == before
    # The check above can see a write: a valid stop moves the control topic's end.
    issue_stop(settings, serdes, "sale", "wrong code", [], by="ops", timeout_s=5)
    assert sum(end_offsets(settings, settings.topics.control).values()) == (
        sum(before[settings.topics.control].values()) + 1)


def test_a_campaign_no_longer_sending_needs_force(settings: Settings, serdes: Serdes) -> None:
    announce(settings, serdes, "old", ["email"], 10, state="Draft")
    before = written(settings)

    cli = run_estop("stop", "old", "--reason", "wrong code", env=cli_env(settings))

    assert_one_line_usage_error(cli, "old", "--force")
    assert written(settings) == before
    forced = run_estop("stop", "old", "--reason", "wrong code", "--force", "--json",
                       env=cli_env(settings))
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["confirmed"] is True
    assert len(control_records(settings, "old")) == 1


def test_a_repeated_stop_is_idempotent(settings: Settings, serdes: Serdes) -> None:
    announce(settings, serdes, "twice", list(CHANNELS), 100)

    first = issue_stop(settings, serdes, "twice", "wrong code", [], by="ops", timeout_s=10)
    second = issue_stop(settings, serdes, "twice", "wrong code again", [], by="ops", timeout_s=10)
    narrower = issue_stop(settings, serdes, "twice", "only sms", ["sms"], by="ops", timeout_s=10)
    cli = run_estop("stop", "twice", "--reason", "third time", env=cli_env(settings))

    assert first.already_stopped is False and first.confirmed
    assert second.already_stopped is True and second.confirmed
    assert second.command_id == first.command_id
    assert narrower.already_stopped is True
    assert cli.returncode == 0, cli.stderr
    assert "already stopped" in cli.stdout
    assert first.command_id is not None and first.command_id in cli.stdout
    records = control_records(settings, "twice")
    assert len(records) == 1
    assert serdes.control_command.decode(records[0].value())["command_id"] == first.command_id


def test_a_wider_stop_after_a_channel_stop_writes_one_more_command(settings: Settings,
                                                                   serdes: Serdes) -> None:
    announce(settings, serdes, "widen", ["email", "sms"], 100)

    sms = issue_stop(settings, serdes, "widen", "bad sms text", ["sms"], by="ops", timeout_s=10)
    again = issue_stop(settings, serdes, "widen", "bad sms text", ["sms"], by="ops", timeout_s=10)
    both = issue_stop(settings, serdes, "widen", "bad email too", ["email"], by="ops", timeout_s=10)

    assert (sms.already_stopped, again.already_stopped, both.already_stopped) == (False, True, False)
    assert both.channels == ["email", "sms"]
    commands = [serdes.control_command.decode(r.value()) for r in control_records(settings, "widen")]
    assert [c["channels"] for c in commands] == [["sms"], ["email", "sms"]]


def test_estop_stop_and_status_on_the_command_line(settings: Settings, serdes: Serdes,
                                                   workers: Workers) -> None:
    """`estop stop --json` prints one confirmed JSON object; `estop status --json` then adds
    up: every planned message sent or notSent, and the stop details match. The worker runs the
    analytics sink too: `estop status` counts outcomes from the analytics store."""
    campaign, recipients = "cli-promo", 600
    _, worker_id = workers.start("--channel", "email", rate=300, delay_s=1.0, everything=True)
    wait_joined(settings, [worker_id], [settings.topics.gate_group("email"),
                                        settings.topics.dispatcher_group("email")])
    assert launch(settings, serdes, campaign, ["email"], recipients).state == STATE_FINISHED
    wait_for(lambda: LedgerStats(settings, "email").at_provider(campaign) > 0,
             "messages at the provider", every_s=0.02)

    stopped = run_estop("stop", campaign, "--reason", "wrong link", "--json",
                        env=cli_env(settings))

    assert stopped.returncode == 0, stopped.stderr
    lines = stopped.stdout.strip().splitlines()
    assert len(lines) == 1, stopped.stdout
    stop = json.loads(lines[0])
    assert stop["confirmed"] is True
    assert stop["already_stopped"] is False
    assert stop["campaign_id"] == campaign
    assert stop["live_processes"] == [worker_id]
    assert [a["process_id"] for a in stop["acks"]] == [worker_id]

    wait_outcomes(settings, campaign, recipients)
    wait_for(lambda: stored_outcomes(settings, campaign) == recipients, "the sink to store every outcome")
    shown = run_estop("status", campaign, "--json", env=cli_env(settings))
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)

    events = read_events(settings, serdes, campaign)
    sent = sum(1 for e in events if e.kind == "sent")
    at = {s: sum(1 for e in events if e.kind == "notsent" and e.record["stage"] == s)
          for s in (STAGE_SENDING, STAGE_PROVIDER)}
    email = status["channels"]["email"]
    assert status["state"] == STATE_STOPPED
    assert list(status["channels"]) == ["email"]
    assert email["planned"] == email["requested"] == recipients
    assert email["sent"] == sent
    assert email["not_sent"] == at
    assert email["sent"] + sum(email["not_sent"].values()) == recipients
    assert email["pending"] == 0
    assert email["passed_gate"] == recipients - at[STAGE_SENDING]
    assert email["handed_to_provider"] == LedgerStats(settings, "email").handed(campaign)
    assert email["sent"] <= email["handed_to_provider"] <= email["passed_gate"]
    assert at[STAGE_PROVIDER] > 0
    totals = status["totals"]
    assert (totals["planned"], totals["sent"], totals["not_sent"]) == (recipients, sent, recipients - sent)
    assert totals.get("failed", 0) == email.get("failed", 0) == 0  # the simulated provider accepts all
    assert len(status["stops"]) == 1
    details = status["stops"][0]
    assert details["command_id"] == stop["command_id"]
    # No Kafka authentication on this cluster: the stop is recorded under the OS user.
    assert (details["reason"], details["requested_by"]) == ("wrong link", getpass.getuser())
    assert details["channels"] == sorted(CHANNELS)


def test_a_live_process_that_did_not_apply_the_stop_keeps_it_unconfirmed(
    settings: Settings, serdes: Serdes, workers: Workers
) -> None:
    """Confirmation needs every partition held by a process that applied the stop: a gate that
    holds partitions and never acknowledges keeps the stop unconfirmed (exit 3), the stop stays
    in force, and the command line names it and the partitions it holds."""
    _, worker_id = workers.start("--channel", "email")
    wait_joined(settings, [worker_id], [settings.topics.gate_group("email")])
    stuck = StuckGate(settings)
    try:
        wait_joined(settings, [StuckGate.client_id], [settings.topics.gate_group("email")])
        wait_for(lambda: StuckGate.client_id in holders(settings, "gate", "email"),
                 "the stuck gate to hold a partition")
        announce(settings, serdes, "hung", ["email"], 10)
        announce(settings, serdes, "hung-cli", ["email"], 10)

        result = issue_stop(settings, serdes, "hung", "wrong code", [], by="ops", timeout_s=3)
        cli = run_estop("stop", "hung-cli", "--reason", "wrong code", "--timeout", "3",
                        env=cli_env(settings))
    finally:
        stuck.close()

    assert result.confirmed is False
    assert set(result.live) == {worker_id, StuckGate.client_id}
    assert [a.process_id for a in result.acks] == [worker_id]
    assert len(control_records(settings, "hung")) == 1  # in force all the same
    assert cli.returncode == 3, (cli.stdout, cli.stderr)
    assert "Traceback" not in cli.stderr
    assert "not confirmed" in cli.stderr
    assert f"{StuckGate.client_id}" in cli.stdout and "has not acknowledged" in cli.stdout
    assert len(control_records(settings, "hung-cli")) == 1


def test_estop_status_of_an_unknown_campaign_exits_2(settings: Settings) -> None:
    result = run_estop("status", "no-such-campaign", env=cli_env(settings))

    assert_one_line_usage_error(result, "no-such-campaign")


def test_estop_status_counts_outcomes_from_the_analytics_store(settings: Settings, serdes: Serdes) -> None:
    """`estop status` reads outcomes from the analytics store, never the history of the event
    topics: outcomes only the store holds are counted, an event only on `sent` is not."""
    campaign = "status-store"
    announce(settings, serdes, campaign, ["email"], 10)
    rows = [OutcomeRow(f"{campaign}:email:{i}", campaign, "email", f"r{i}", outcome, "e", stage, None,
                       None, None, now_ms())
            for i, (outcome, stage) in enumerate([(SENT, None), (SENT, None), (NOT_SENT, STAGE_PROVIDER),
                                                  (FAILED, None)])]
    store = open_store(settings)
    try:
        store.write(Batch(rows, [], [], []))
    finally:
        store.close()
    sent = {"event": "message.sent", "message_id": f"{campaign}:email:9", "campaign_id": campaign,
            "channel": "email", "recipient_id": "r9", "handed_at": now_ms(), "occurred_at": now_ms()}
    produce_values(settings, settings.topics.sent, [serdes.sent.encode(sent)],  # never stored
                   headers=[(HEADER_CAMPAIGN, campaign.encode()), (HEADER_CHANNEL, b"email")])

    shown = run_estop("status", campaign, "--json", env=cli_env(settings))

    assert shown.returncode == 0, shown.stderr
    email = json.loads(shown.stdout)["channels"]["email"]
    assert (email["sent"], email["not_sent"], email["failed"]) == (2, {"sending": 0, "provider": 1}, 1)
    assert email["pending"] == 6
