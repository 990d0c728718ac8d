"""Hostile records and pages against the console in Chromium, a real worker, control service
and broker: a Stopped status that no stop command backs (the campaign engine may write
campaign-status) does not hide a campaign's emergency stop or take it off the kill switch; a
campaign whose id no stop can name is reported by the kill switch, which stops all the others;
a page of another site whose name resolves to this service (DNS rebinding) gets 421. A module
of its own: the kill switch stops every campaign there is."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from streams.models import STATE_SENDING, STATE_STOPPED
from streams.serde import Serdes
from tests.console.conftest import REBIND_HOST
from tests.console.support import Stack
from tests.controlplane.support import control_commands
from tests.pipeline.support import announce

pytestmark = pytest.mark.broker

SERDES = Serdes()
REASON = "wrong discount code in every campaign"
INVISIBLE = "promo\u00a0"


def test_a_forged_stopped_status_hides_nothing_and_the_kill_switch_reports_what_it_cannot_stop(
        stack: Stack, page: Page, alerts: list[str]) -> None:
    announce(stack.settings, SERDES, "looks-stopped", ["email"], 10, STATE_SENDING)
    announce(stack.settings, SERDES, "looks-stopped", ["email"], 10, STATE_STOPPED)  # forged
    announce(stack.settings, SERDES, "plain", ["sms"], 10, STATE_SENDING)
    announce(stack.settings, SERDES, INVISIBLE, ["email"], 10, STATE_SENDING)

    # "Stopped" comes from campaign-control alone: nothing stopped it, so it can be stopped.
    page.goto(f"{stack.base}/console/campaigns/looks-stopped")
    expect(page.locator("[data-state]")).to_have_text(STATE_SENDING)
    expect(page.get_by_role("button", name="Emergency stop")).to_be_visible()

    page.goto(f"{stack.base}/console")
    expect(page.locator("tr[data-campaign]")).to_have_count(3)
    page.get_by_role("button", name="Stop all sending").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_role("listitem")).to_have_text(["looks-stopped", "plain"])
    dialog.get_by_label("Reason").fill(REASON)
    dialog.get_by_label("Type STOP ALL to confirm").fill("STOP ALL")
    dialog.get_by_role("button", name="Stop all campaigns").click()

    banner = page.locator("#list-status")
    expect(banner).to_contain_text("Stop all sending: 2 campaign(s) stopped")
    expect(banner).to_contain_text(f"Could not stop 1: {INVISIBLE} (invalid campaign id "
                                   "'promo\\xa0': character 6 is U+00A0 NO-BREAK SPACE")
    for campaign in ("looks-stopped", "plain"):
        expect(page.locator(f'tr[data-campaign="{campaign}"] [data-state]')).to_have_text(STATE_STOPPED)
    commands = control_commands(stack.settings, SERDES)
    assert sorted((c["campaign_id"], c["channels"], c["reason"]) for c in commands) == [
        ("looks-stopped", [], REASON), ("plain", [], REASON)]
    assert alerts == []


def test_a_page_of_another_site_resolving_to_the_service_is_misdirected(stack: Stack, page: Page) -> None:
    """DNS rebinding: the browser resolves another site's name to this service's address and
    sends that name in Host; the service answers 421 to the page and to its script's requests."""
    announce(stack.settings, SERDES, "rebound", ["email"], 10, STATE_SENDING)
    before = control_commands(stack.settings, SERDES)
    port = stack.base.rsplit(":", 1)[1]
    response = page.goto(f"http://{REBIND_HOST}:{port}/console")
    assert response is not None and response.status == 421
    expect(page.locator("body")).to_contain_text(f"does not answer for host '{REBIND_HOST}'")
    assert page.evaluate("fetch('/campaigns').then((r) => r.status)") == 421
    stop = """fetch('/campaigns/rebound/stop', {method: 'POST', headers: {'Content-Type':
               'application/json'}, body: JSON.stringify({reason: 'rebound'})}).then((r) => r.status)"""
    assert page.evaluate(stop) == 421
    assert control_commands(stack.settings, SERDES) == before
