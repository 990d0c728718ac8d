"""A canary launch on the campaign page, in Debian's Chromium against a real broker, worker and
control service: the page shows the first cohort and the hold, and its button releases the
rest, which the launcher then queues once; the API refuses a release with nothing to release."""

from __future__ import annotations

import json
import threading
import urllib.parse

import pytest
from playwright.sync_api import Page, expect

from streams.campaigns import canary
from streams.campaigns.launcher import LaunchResult, launch
from streams.models import STATE_FINISHED
from streams.serde import Serdes
from tests.console.support import Stack
from tests.controlplane.support import wait_for

pytestmark = pytest.mark.broker

SERDES = Serdes()


def test_the_page_shows_a_holding_canary_and_releases_it(gates_only: Stack, page: Page) -> None:
    stack = gates_only
    campaign = "canary-page"
    done: list[LaunchResult] = []
    launcher = threading.Thread(target=lambda: done.append(launch(
        stack.settings, SERDES, campaign, ["email", "sms"], 500, canary=0.1, hold_s=600)), daemon=True)
    launcher.start()
    wait_for(lambda: (canary.read_state(stack.settings, SERDES, campaign) or {}).get("state")
             == canary.HOLDING, "the canary cohort to be queued")
    state = stack.api.get(f"/campaigns/{campaign}/canary").json()
    assert state["cohort"] == {"email": 50, "sms": 50}

    page.goto(f"{stack.base}/console/campaigns/{urllib.parse.quote(campaign)}")
    banner = page.locator("#canary-status")
    expect(banner).to_contain_text("Canary 10%: 100 of 1,000 queued; the rest is held")
    # The dry run counts the held rest as never queued.
    preview = stack.api.get(f"/campaigns/{campaign}/stop-preview").json()
    assert preview["totals"]["not_queued"] == 900
    banner.get_by_role("button", name="Release the rest now").click()
    expect(banner).to_contain_text("the rest released by anonymous")
    launcher.join(120)
    assert done and done[0].state == STATE_FINISHED and done[0].released_by == "anonymous"
    assert done[0].queued == {"email": 500, "sms": 500}

    again = stack.api.post(f"/campaigns/{campaign}/release", b"{}")
    assert again.status == 409 and "not holding" in again.json()["error"]
    assert stack.api.get("/campaigns/never-seen/canary").status == 404
    bad = stack.api.post(f"/campaigns/{campaign}/relaunch",
                         json.dumps({"as": "canary-page-2", "canary": "150%"}).encode())
    assert bad.status == 400 and "less than 100%" in bad.json()["error"]
