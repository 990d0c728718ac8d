"""The guardrail panel in Debian's Chromium, against a real broker, worker, guardrail processor
and control service: the campaign page shows each rule's live value against its threshold; when
a complaint rule trips (on feedback posted as an ESP's webhook would), the page names the rule,
marks the automatic stop on the chart, and the list shows the campaign's guardrail badge."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from streams.campaigns.launcher import launch
from streams.lab.harness import WorkerProcess
from streams.serde import Serdes
from tests.console.support import ARTIFACTS, Stack
from tests.controlplane.support import wait_for

pytestmark = pytest.mark.broker

SERDES = Serdes()
CAMPAIGN = "guarded-page"


@pytest.fixture
def guardrail(stack: Stack) -> Iterator[WorkerProcess]:
    """The guardrail processor (`estop worker --role guardrail`) for the stack's topics."""
    process = WorkerProcess(stack.settings, extra_args=["--role", "guardrail"],
                            env={"ESTOP_METRICS_PORT": "0"})
    try:
        process.wait_ready()
        yield process
    finally:
        if process.process.poll() is None:
            process.stop()
        print("".join(process.lines[-40:]))


def test_the_guardrail_panel_shows_the_rule_and_its_automatic_stop(
        stack: Stack, guardrail: WorkerProcess, page: Page) -> None:
    rule = {"name": "complaint", "scope": CAMPAIGN, "metric": "complaint", "threshold": 0.05,
            "min_sample": 20, "window": "first", "window_size": 50}
    stored = stack.api.post("/guardrails/rules", json.dumps(rule).encode())
    assert stored.status == 200, stored.body
    threading.Thread(target=launch, args=(stack.settings, SERDES, CAMPAIGN, ["email"], 300),
                     daemon=True).start()
    wait_for(lambda: stack.api.get(f"/campaigns/{CAMPAIGN}").status == 200,
             "the control service to know the campaign")

    page.goto(f"{stack.base}/console/campaigns/{urllib.parse.quote(CAMPAIGN)}")
    row = page.locator('#guardrail-table tr[data-rule="complaint"]')
    expect(row.first.locator('[data-field="threshold"]')).to_have_text("5.00%")
    expect(page.locator("#guardrail-tripped")).to_have_count(0)

    # Complaints as an ESP's webhook reports them: 5 of the first 50 outcomes is 10%.
    reports = [{"kind": "complaint", "message_id": f"{CAMPAIGN}:email:{i}", "campaign_id": CAMPAIGN,
                "channel": "email"} for i in range(5)]
    posted = stack.api.post("/feedback", json.dumps({"feedback": reports}).encode())
    assert posted.status == 202, posted.body

    tripped = page.locator("#guardrail-tripped")
    expect(tripped).to_contain_text("Stopped automatically by the guardrail rule complaint (email)")
    emailed = page.locator('#guardrail-table tr[data-rule="complaint"][data-channel="email"]')
    expect(emailed.locator('[data-field="state"]')).to_have_text("tripped")
    live = stack.api.get(f"/campaigns/{CAMPAIGN}/guardrails").json()
    [window] = [w for r in live["rules"] if r["name"] == "complaint" for w in r["windows"]]
    assert window["value"] >= 0.05 and window["tripped_at"] is not None
    expect(emailed.locator('[data-field="value"]')).to_have_text(f"{window['value'] * 100:.2f}%")
    expect(page.locator("h1 .badge.guardrail")).to_have_text("Guardrail: complaint")
    expect(page.locator("#audit-by")).to_have_text("guardrail:complaint")
    marker = page.locator('#outcome-chart .stop-line.automatic[data-guardrail="complaint"]')
    expect(marker).to_have_count(1)
    expect(page.locator("#outcome-chart .stop-label")).to_have_text("automatic stop: complaint")
    page.screenshot(path=str(ARTIFACTS / "console-guardrail-stop.png"), full_page=True)

    page.goto(f"{stack.base}/console")
    listed = page.locator(f'tr[data-campaign="{CAMPAIGN}"] .badge.guardrail')
    expect(listed).to_have_text("Guardrail: complaint")
    expect(listed).to_have_attribute("data-guardrail", "complaint")
