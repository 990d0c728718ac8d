"""The console against a control service that requires bearer tokens: the page asks for a token
once, sends it with every request, and a stop made from the page is recorded under the token's
user; a viewer's token shows the campaigns but its stop is refused and nothing is written. A
module of its own: its control service has tokens, the others' do not."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from streams.lab.broker import BrokerHandle
from streams.models import STATE_SENDING, STATE_STOPPED
from streams.serde import Serdes
from tests.console.support import Stack, stack_settings, start_stack
from tests.controlplane.support import control_commands
from tests.pipeline.support import announce
from tests.support import wait_for

pytestmark = pytest.mark.broker

SERDES = Serdes()
OPERATOR_TOKEN = "operator-token-" + "o" * 16
VIEWER_TOKEN = "viewer-token-" + "v" * 16


@pytest.fixture(scope="module")
def stack(broker: BrokerHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tokens = f"ann:operator:{OPERATOR_TOKEN},vic:viewer:{VIEWER_TOKEN}"
    yield from start_stack(stack_settings(broker, tmp_path_factory), {"ESTOP_HTTP_TOKENS": tokens})


def answer_prompts(page: Page, token: str) -> list[str]:
    """Answer the page's token prompt with ``token``; returns every dialog's message."""
    asked: list[str] = []

    def answer(dialog: Any) -> None:
        asked.append(dialog.message)
        if dialog.type == "prompt":
            dialog.accept(token)
        else:
            dialog.dismiss()

    page.on("dialog", answer)
    return asked


def stop_from_the_page(page: Page, campaign: str) -> None:
    page.get_by_role("button", name="Emergency stop").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Reason").fill("wrong discount code")
    dialog.get_by_label("Type the campaign id to confirm").fill(campaign)
    dialog.get_by_role("button", name="Stop campaign").click()


def url(stack: Stack, campaign: str) -> str:
    return f"{stack.base}/console/campaigns/{urllib.parse.quote(campaign, safe='')}"


def test_an_operator_token_stops_as_its_user(stack: Stack, page: Page, tmp_path: Path) -> None:
    campaign = "token-operator"
    announce(stack.settings, SERDES, campaign, ["email"], 10, STATE_SENDING)
    asked = answer_prompts(page, OPERATOR_TOKEN)

    page.goto(url(stack, campaign))

    expect(page.locator("[data-state]")).to_have_text(STATE_SENDING)
    assert asked == ["Access token for the estop control service"]  # once, then kept
    stop_from_the_page(page, campaign)
    expect(page.locator("[data-state]")).to_have_text(STATE_STOPPED)
    expect(page.locator("#audit-by")).to_have_text("ann")
    commands = [c for c in control_commands(stack.settings, SERDES) if c["campaign_id"] == campaign]
    assert [c["requested_by"] for c in commands] == ["ann"]

    # The export needs the token as well: the page's download carries it, and saves the same
    # file `estop export` writes.
    exported = tmp_path / "exported.csv"
    wait_for(lambda: stack.estop("export", campaign, "--status", "not_sent", "--out",
                                 str(exported)).returncode == 0,
             "the analytics store to know the campaign", timeout_s=60)
    with page.expect_download() as download:
        page.get_by_role("link", name="Download notSent recipients (CSV)").click()
    downloaded = tmp_path / "downloaded.csv"
    download.value.save_as(downloaded)
    assert download.value.suggested_filename == f"{campaign}-not_sent.csv"
    assert downloaded.read_bytes() == exported.read_bytes()
    expect(page.locator("#export-error")).to_have_text("")


def test_a_viewer_token_reads_but_cannot_stop(stack: Stack, page: Page) -> None:
    campaign = "token-viewer"
    announce(stack.settings, SERDES, campaign, ["email"], 10, STATE_SENDING)
    answer_prompts(page, VIEWER_TOKEN)

    page.goto(url(stack, campaign))

    expect(page.locator("[data-state]")).to_have_text(STATE_SENDING)
    stop_from_the_page(page, campaign)
    expect(page.get_by_role("dialog")).to_contain_text("needs role operator")
    assert [c for c in control_commands(stack.settings, SERDES) if c["campaign_id"] == campaign] == []
