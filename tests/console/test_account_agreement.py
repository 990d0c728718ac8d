"""`estop report --json`, `estop status --json`, `GET /campaigns/{id}` and the console's campaign
page show one campaign account: the same state, the same stopper and the same figures per
channel and in total, for a stopped campaign, one never stopped, and one whose campaign-status
says Stopped with no stop command behind it (a forged status: not stopped anywhere). Against a
real worker (gates, dispatchers, sink), control service, broker and Chromium."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from streams.campaigns.launcher import launch
from streams.control.stop import issue_stop
from streams.models import STAGES, STATE_FINISHED, STATE_SENDING, STATE_STOPPED
from streams.serde import Serdes
from tests.console.support import Stack
from tests.console.test_console import campaign_url
from tests.controlplane.support import wait_for
from tests.pipeline.support import announce

pytestmark = pytest.mark.broker

SERDES = Serdes()
CHANNELS = ["email", "sms"]
FIGURES = ("planned", "sent", "not_sent", *STAGES, "cancel_unconfirmed", "failed", "pending")

Account = dict[str, Any]  # state, stopped_by, and per channel and "total" the FIGURES


def from_report(report: dict[str, Any]) -> Account:
    rows = {**report["by_channel"], "total": {**report, "planned": report["total"]}}
    return {"state": report["state"], "stopped_by": report["stopped_by"],
            "figures": {name: {**{k: row[k] for k in FIGURES if k not in STAGES},
                               **row["not_sent_by_stage"]} for name, row in rows.items()}}


def from_status(status: dict[str, Any]) -> Account:
    rows = {name: {**{k: row[k] for k in FIGURES if k not in STAGES and k != "not_sent"},
                   "not_sent": sum(row["not_sent"].values()), **row["not_sent"]}
            for name, row in status["channels"].items()}
    rows["total"] = {k: sum(row[k] for row in rows.values()) for k in FIGURES}
    assert {k: rows["total"][k] for k in status["totals"]} == status["totals"]
    return {"state": status["state"],
            "stopped_by": status["stopped_by"],
            "figures": rows}


def from_api(detail: dict[str, Any]) -> Account:
    rows = {**detail["counts"], "total": {**detail, "not_sent_by_stage": {
        stage: sum(c["not_sent_by_stage"][stage] for c in detail["counts"].values())
        for stage in STAGES}}}
    return {"state": detail["state"], "stopped_by": detail["stopped_by"],
            "figures": {name: {**{k: row[k] for k in FIGURES if k not in STAGES},
                               **row["not_sent_by_stage"]} for name, row in rows.items()}}


def cli_json(stack: Stack, *args: str) -> dict[str, Any]:
    done = stack.estop(*args, "--json")
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def accounts(stack: Stack, campaign_id: str) -> list[Account]:
    return [from_report(cli_json(stack, "report", campaign_id)),
            from_status(cli_json(stack, "status", campaign_id)),
            from_api(stack.api.campaign(campaign_id))]


def settled(stack: Stack, campaign_id: str) -> Account:
    """The account once every message has its outcome and the analytics store, the status and
    the API agree (they read the same records at slightly different moments)."""
    found: list[Account] = []

    def agree() -> bool:
        found[:] = accounts(stack, campaign_id)
        return found[0]["figures"]["total"]["pending"] == 0 and found[0] == found[1] == found[2]

    wait_for(agree, f"{campaign_id}: report, status and API to agree with nothing pending")
    return found[0]


def console_shows(stack: Stack, page: Page, campaign_id: str, account: Account) -> None:
    page.goto(campaign_url(stack, campaign_id))
    expect(page.locator("[data-state]").first).to_have_text(account["state"])
    for name, row in account["figures"].items():
        cells = page.locator(f'tr[data-channel="{name}"]')
        for key in FIGURES:
            if key != "planned":
                expect(cells.locator(f'[data-count="{key}"]')).to_have_text(f"{row[key]:,}")
    if account["stopped_by"]:
        expect(page.locator("#audit-by")).to_have_text(account["stopped_by"])


def sent_so_far(stack: Stack, campaign_id: str) -> int:
    reply = stack.api.get(f"/campaigns/{campaign_id}")
    return int(reply.json()["sent"]) if reply.status == 200 else 0


def test_a_stopped_campaign_reads_the_same_everywhere(stack: Stack, page: Page) -> None:
    campaign = "agree-stopped"
    thread = threading.Thread(target=launch, daemon=True,
                              args=(stack.settings, SERDES, campaign, CHANNELS, 200))
    thread.start()
    wait_for(lambda: sent_so_far(stack, campaign) > 0, f"{campaign} to send")
    result = issue_stop(stack.settings, SERDES, campaign, "wrong price", [], "alice", 60)
    assert result.error is None
    thread.join(120)

    account = settled(stack, campaign)

    assert account["state"] == STATE_STOPPED and account["stopped_by"] == "alice"
    total = account["figures"]["total"]
    assert total["planned"] == 400 and total["sent"] > 0 and total["not_sent"] > 0
    console_shows(stack, page, campaign, account)


def test_a_campaign_never_stopped_and_a_forged_stopped_status_read_sending_everywhere(
        stack: Stack, page: Page) -> None:
    campaign = "agree-sent"
    launch(stack.settings, SERDES, campaign, CHANNELS, 20)

    account = settled(stack, campaign)

    assert account["state"] == STATE_FINISHED and account["stopped_by"] is None
    assert account["figures"]["total"]["sent"] == 40
    console_shows(stack, page, campaign, account)

    # The campaign engine may write campaign-status: a Stopped there stops nothing.
    announce(stack.settings, SERDES, campaign, CHANNELS, 20, STATE_STOPPED)
    wait_for(lambda: stack.api.campaign(campaign)["state"] == STATE_SENDING,
             "the control service to read the forged status")
    wait_for(lambda: stack.estop("status", campaign).stdout.startswith(f"{campaign}: Sending"),
             "estop status to read it")

    forged = settled(stack, campaign)

    assert forged["state"] == STATE_SENDING and forged["stopped_by"] is None
    assert forged["figures"] == account["figures"]
    assert stack.api.campaign(campaign)["stop"] is None
    console_shows(stack, page, campaign, forged)
