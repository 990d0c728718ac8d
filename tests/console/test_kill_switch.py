"""The kill switch ("Stop all sending") in the browser and `estop stop --all`, against a real
worker, control service and broker. A module of its own: it stops every campaign there is."""

from __future__ import annotations

import getpass
import json

import pytest
from playwright.sync_api import Page, expect

from streams.models import STATE_FINISHED, STATE_SENDING, STATE_STOPPED
from streams.serde import Serdes
from tests.console.support import Stack
from tests.controlplane.support import control_commands, wait_for
from tests.pipeline.support import announce

pytestmark = pytest.mark.broker

SERDES = Serdes()
REASON = "wrong discount code in every campaign"


def test_stop_all_sending_stops_every_sending_or_finished_campaign(stack: Stack, page: Page,
                                                                  alerts: list[str]) -> None:
    announce(stack.settings, SERDES, "kill-sending", ["email", "sms"], 10, STATE_SENDING)
    announce(stack.settings, SERDES, "kill-finished", ["push"], 10, STATE_FINISHED)
    announce(stack.settings, SERDES, "kill-earlier", ["email"], 10, STATE_SENDING)
    earlier = stack.api.stop("kill-earlier", {"reason": "stopped before"})
    assert earlier.status == 202, earlier.body

    page.goto(f"{stack.base}/console")
    expect(page.locator("tr[data-campaign]")).to_have_count(3)
    expect(page.locator('tr[data-campaign="kill-earlier"] [data-state]')).to_have_text(STATE_STOPPED)
    page.get_by_role("button", name="Stop all sending").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("listitem")).to_have_text(["kill-finished", "kill-sending"])
    confirm = dialog.get_by_role("button", name="Stop all campaigns")
    dialog.get_by_label("Reason").fill(REASON)
    phrase = dialog.get_by_label("Type STOP ALL to confirm")
    phrase.fill("stop all")  # the phrase exactly, not a look-alike
    expect(confirm).to_be_disabled()
    phrase.fill("STOP ALL")
    expect(confirm).to_be_enabled()
    confirm.click()

    expect(dialog).to_be_hidden()
    expect(page.locator("#list-status")).to_have_text(
        "Stop all sending: 2 campaign(s) stopped, confirmed for 2 of 2.")
    for campaign in ("kill-sending", "kill-finished", "kill-earlier"):
        expect(page.locator(f'tr[data-campaign="{campaign}"] [data-state]')).to_have_text(STATE_STOPPED)
    commands = control_commands(stack.settings, SERDES)
    by_campaign = {c["campaign_id"]: c for c in commands}
    assert len(commands) == 3  # one record per campaign; none for the one already stopped
    assert by_campaign["kill-earlier"]["reason"] == "stopped before"
    for campaign in ("kill-sending", "kill-finished"):
        assert (by_campaign[campaign]["reason"], by_campaign[campaign]["channels"]) == (REASON, [])
    assert alerts == []

    # Nothing left to stop: the switch says so and writes nothing.
    page.get_by_role("button", name="Stop all sending").click()
    expect(dialog.get_by_role("listitem")).to_have_text(["Every campaign is stopped already."])
    dialog.get_by_label("Reason").fill(REASON)
    phrase.fill("STOP ALL")
    confirm.click()
    expect(page.locator("#list-status")).to_contain_text("nothing was written")
    assert len(control_commands(stack.settings, SERDES)) == 3


def test_the_kill_switch_refuses_a_request_without_its_confirmation_or_reason(stack: Stack) -> None:
    announce(stack.settings, SERDES, "kill-refused", ["email"], 10, STATE_SENDING)
    before = len(control_commands(stack.settings, SERDES))
    for body, words in [({"reason": REASON}, "STOP ALL"),
                        ({"reason": REASON, "confirm": "yes"}, "STOP ALL"),
                        ({"confirm": "STOP ALL"}, "reason"),
                        ({"reason": "  ", "confirm": "STOP ALL"}, "reason")]:
        reply = stack.api.post("/stop-all", json.dumps(body).encode())
        assert reply.status == 400 and words in reply.json()["error"], (body, reply.body)
    assert len(control_commands(stack.settings, SERDES)) == before


def test_estop_stop_all_on_the_command_line(stack: Stack) -> None:
    announce(stack.settings, SERDES, "kill-cli", ["sms"], 10, STATE_FINISHED)
    wait_for(lambda: "kill-cli" in stack.api.campaigns(), "the control service to list kill-cli")
    stoppable = sorted(c for c, listed in stack.api.campaigns().items() if listed["stoppable"])
    assert "kill-cli" in stoppable
    stopped = stack.estop("stop", "--all", "--reason", REASON, "--json")
    assert stopped.returncode == 0, stopped.stderr
    results = json.loads(stopped.stdout)["stopped"]
    assert [r["campaign_id"] for r in results] == stoppable
    assert all(r["confirmed"] and not r["already_stopped"] for r in results)
    assert stack.api.campaign("kill-cli")["state"] == STATE_STOPPED
    commands = [c for c in control_commands(stack.settings, SERDES) if c["campaign_id"] == "kill-cli"]
    # No Kafka authentication here: the command line stops as the OS user.
    assert [(c["reason"], c["requested_by"], c["channels"]) for c in commands] == [
        (REASON, getpass.getuser(), [])]

    again = stack.estop("stop", "--all", "--reason", REASON)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "every campaign is stopped already; nothing written"
    mixed = stack.estop("stop", "kill-cli", "--all", "--reason", REASON)
    assert mixed.returncode == 2 and "--all" in mixed.stderr and "Traceback" not in mixed.stderr
