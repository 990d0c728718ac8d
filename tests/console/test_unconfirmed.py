"""The console's warning when not every live process confirms a stop in time, against a real
worker, control service and broker, with a member of the email gate group that never applies a
command (a hung worker). A module of its own: that member holds up every stop here."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from streams.lab.broker import BrokerHandle
from streams.models import STATE_FINISHED
from streams.serde import Serdes
from tests.console.support import Stack, stack_settings, start_stack
from tests.controlplane.support import control_commands
from tests.pipeline.support import StuckGate, announce, wait_joined

pytestmark = pytest.mark.broker

SERDES = Serdes()


@pytest.fixture(scope="module")
def stack(broker: BrokerHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The module's stack, with the console's confirmation timeout at 2 s (default 30 s)."""
    yield from start_stack(stack_settings(broker, tmp_path_factory), {"ESTOP_STOP_TIMEOUT_S": "2"})


def test_a_stop_not_confirmed_in_time_shows_a_warning_until_it_is(stack: Stack, page: Page) -> None:
    campaign = "console-hung"
    stuck = StuckGate(stack.settings)
    try:
        wait_joined(stack.settings, [StuckGate.client_id], [stack.settings.topics.gate_group("email")])
        announce(stack.settings, SERDES, campaign, ["email"], 10, STATE_FINISHED)
        page.goto(f"{stack.base}/console/campaigns/{urllib.parse.quote(campaign)}")
        page.get_by_role("button", name="Emergency stop").click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_label("Reason").fill("wrong link")
        dialog.get_by_label("Type the campaign id to confirm").fill(campaign)
        dialog.get_by_role("button", name="Stop campaign").click()

        status = page.locator("#stop-status")
        expect(status).to_have_text(
            "Warning: the stop was not confirmed by every process in time: 1 of 2 acknowledged; "
            f"still waiting for {StuckGate.client_id}. The stop stays in force.")
        assert len(control_commands(stack.settings, SERDES)) == 1  # in force all the same
    finally:
        stuck.close()
    # The hung member left its group: every live process has now applied the stop.
    expect(status).to_contain_text("Stop confirmed by 1 of 1 processes")
