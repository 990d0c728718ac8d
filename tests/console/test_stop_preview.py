"""The stop dialog shows what the stop would halt (the dry run) before it is pressed, in Debian's
Chromium against a real broker, worker and control service. The worker runs the gates and the
sink but no dispatcher, so a launched campaign waits at the dispatchers and the figures hold
still while the test compares them with `estop stop --dry-run`."""

from __future__ import annotations

import json
import urllib.parse

import pytest
from playwright.sync_api import Page, expect

from streams.campaigns.launcher import launch
from streams.control.preview import preview_stop
from streams.serde import Serdes
from tests.console.support import Stack
from tests.controlplane.support import wait_for

pytestmark = pytest.mark.broker

SERDES = Serdes()
N = 120


def test_the_stop_dialog_shows_the_dry_run(gates_only: Stack, page: Page) -> None:
    stack = gates_only
    campaign = "preview-dialog"
    launch(stack.settings, SERDES, campaign, ["email", "sms"], N)
    wait_for(lambda: preview_stop(stack.settings, SERDES, campaign).as_dict()["totals"]
             ["at_dispatchers"] == 2 * N, "the gates to pass the campaign to the dispatchers")
    dry = stack.estop("stop", campaign, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    figures = json.loads(dry.stdout)

    page.goto(f"{stack.base}/console/campaigns/{urllib.parse.quote(campaign)}")
    page.get_by_role("button", name="Emergency stop").click()
    dialog = page.get_by_role("dialog")
    table = dialog.get_by_role("table", name="What this stop would halt now")
    expect(table).to_be_visible()
    rows = [*((c["channel"], c) for c in figures["channels"]), ("total", figures["totals"])]
    for channel, counts in rows:
        row = table.locator(f'tr[data-channel="{channel}"]')
        for key in ("not_queued", "before_gate", "at_dispatchers", "handing_over",
                    "at_provider_cancellable", "at_provider_not_cancellable", "delivered",
                    "would_halt", "may_still_leak"):
            expect(row.locator(f'[data-count="{key}"]')).to_have_text(f"{counts[key]:,}")
    expect(table.locator('tr[data-channel="total"] [data-count="at_dispatchers"]')).to_have_text(f"{2 * N:,}")

    # Unticking a channel previews the stop of the other one alone.
    dialog.get_by_role("checkbox", name="sms").uncheck()
    expect(table.locator('tr[data-channel="sms"]')).to_have_count(0)
    expect(table.locator('tr[data-channel="total"] [data-count="would_halt"]')).to_have_text(f"{N:,}")

    # The dialog's stop then halts exactly that: every message waiting at the dispatchers
    # becomes a notSent once a dispatcher starts (none runs here), and nothing else was written.
    dialog.get_by_label("Reason").fill("wrong audience")
    dialog.get_by_label("Type the campaign id to confirm").fill(campaign)
    dialog.get_by_role("button", name="Stop campaign").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#stop-status")).to_contain_text("Stop confirmed")
    after = stack.api.get(f"/campaigns/{campaign}/stop-preview").json()
    assert [c["already_stopped"] for c in after["channels"]] == [True, False]
    assert after["totals"]["would_halt"] == N  # sms: still waiting, not stopped


def test_the_preview_endpoint_refuses_bad_requests(gates_only: Stack) -> None:
    api = gates_only.api
    assert api.get("/campaigns/never-seen/stop-preview").status == 404
    bad = api.get("/campaigns/promo/stop-preview?channels=fax")
    assert bad.status == 400 and "unknown channel 'fax'" in bad.json()["error"]
    assert api.get("/campaigns/promo%C2%A0/stop-preview").status == 400
