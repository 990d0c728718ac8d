"""The operator console in Debian's Chromium, against a real worker, control service and broker.

One worker (gates, dispatchers, analytics sink; slow providers) and one control service serve
the whole module; each test uses its own campaigns. The browser does what an operator does:
finds the campaign in the live list, stops it through the dialog, follows the confirmation,
compares the counts with `estop report`, downloads the export and relaunches the unsent
audience."""

from __future__ import annotations

import csv
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from confluent_kafka import Message
from playwright.sync_api import Page, expect

from streams.campaigns.launcher import launch
from streams.control.stop import issue_stop
from streams.kafka.clients import headers_of
from streams.kafka.reader import read_topic
from streams.models import HEADER_CAMPAIGN, STATE_FINISHED, STATE_SENDING, STATE_STOPPED
from streams.serde import Serdes
from tests.console.support import ARTIFACTS, Stack
from tests.controlplane.support import control_commands, wait_for
from tests.pipeline.support import announce
from tests.support import free_port

pytestmark = pytest.mark.broker

XSS_REASON = "<img src=x onerror=alert(1)>"
XSS_ID = "promo-<img src=x onerror=alert(2)>"
XSS_NAME = "<script>alert(3)</script>"
SERDES = Serdes()


def campaign_url(stack: Stack, campaign_id: str) -> str:
    return f"{stack.base}/console/campaigns/{urllib.parse.quote(campaign_id, safe='')}"


def commands_of(stack: Stack, campaign_id: str) -> list[dict[str, object]]:
    return [c for c in control_commands(stack.settings, SERDES) if c["campaign_id"] == campaign_id]


def launch_in_background(stack: Stack, campaign_id: str, channels: list[str],
                         recipients: int) -> threading.Thread:
    thread = threading.Thread(target=launch, daemon=True,
                              args=(stack.settings, SERDES, campaign_id, channels, recipients))
    thread.start()
    return thread


def test_the_list_shows_a_launched_campaign_live_and_filters_it(stack: Stack, page: Page,
                                                                 alerts: list[str]) -> None:
    page.goto(f"{stack.base}/console")
    page.evaluate("window.notReloaded = true")
    launched = launch_in_background(stack, "live-list", ["email", "sms"], 300)

    row = page.locator('tr[data-campaign="live-list"]')
    expect(row).to_be_visible()  # appeared without reloading the page
    expect(row.locator('[data-count="planned"]')).to_have_text("600")
    expect(row.get_by_role("progressbar")).to_be_visible()
    launched.join(60)
    expect(row.locator("[data-state]")).to_have_text(STATE_FINISHED)
    first = int(row.locator('[data-count="sent"]').inner_text().replace(",", ""))
    # The sent count keeps moving while the providers deliver, still without a reload.
    page.wait_for_function(
        "([first]) => Number(document.querySelector('tr[data-campaign=\"live-list\"] "
        "[data-count=\"sent\"]').textContent.replace(/,/g, '')) > first", arg=[first], timeout=120_000)
    assert page.evaluate("window.notReloaded") is True

    # An id and a requester name that are markup show as text, in the list and on the page. No
    # stop, launch or API call accepts such an id (streams/models/ids.py), but anyone who may
    # write campaign-status can announce one: the console shows it as text, and its page says
    # why the service refuses it.
    announce(stack.settings, SERDES, XSS_ID, ["email"], 5, STATE_SENDING)
    announce(stack.settings, SERDES, "markup-names", ["email"], 5, STATE_SENDING)
    # Any Kafka producer may name the requester on a cluster without authentication (the HTTP API
    # records its caller's identity instead): the console must show such a name as text.
    stopped = issue_stop(stack.settings, SERDES, "markup-names", XSS_REASON, [], XSS_NAME, timeout_s=0)
    assert stopped.command_id and not stopped.already_stopped
    escaped = page.get_by_role("link", name=XSS_ID, exact=True)
    expect(escaped).to_be_visible()
    assert page.locator("main img").count() == 0

    page.get_by_label("Search by id").fill("live-")
    expect(page.locator("tr[data-campaign]")).to_have_count(1)
    page.get_by_label("State").select_option(STATE_STOPPED)
    expect(page.locator('tr[data-campaign="live-list"]')).to_have_count(0)
    page.get_by_label("Search by id").fill("")
    expect(page.locator("tr[data-campaign]")).to_have_count(1)
    expect(page.locator("tr[data-campaign]").first).to_have_attribute("data-campaign", "markup-names")

    page.get_by_label("State").select_option("")
    escaped.click()
    expect(page.get_by_role("heading", name="Unknown campaign")).to_be_visible()
    expect(page.locator("main")).to_contain_text("invalid campaign id 'promo-<img src=x onerror=alert(2)>'")
    assert page.locator("main img, main script").count() == 0
    page.goto(campaign_url(stack, "markup-names"))
    expect(page.locator("#audit-by")).to_have_text(XSS_NAME)
    expect(page.locator("#audit-reason")).to_have_text(XSS_REASON)
    expect(page.locator("#campaign-id")).to_have_text("markup-names")
    assert page.locator("main img, main script").count() == 0
    assert alerts == []


def test_stop_through_the_dialog_is_confirmed_counted_exported_and_relaunched(
        stack: Stack, page: Page, alerts: list[str], tmp_path: Path) -> None:
    campaign = "console-stop"
    assert launch(stack.settings, SERDES, campaign, ["email", "sms"], 300).state == STATE_FINISHED
    page.goto(campaign_url(stack, campaign))
    expect(page.locator("[data-state]")).to_have_text(STATE_FINISHED)
    # Stopped once some messages went out: the page then shows both sides of the split.
    expect(page.locator('tr[data-channel="total"] [data-count="sent"]')).not_to_have_text("0")

    page.get_by_role("button", name="Emergency stop").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    confirm = dialog.get_by_role("button", name="Stop campaign")
    boxes = dialog.get_by_role("checkbox")
    expect(boxes).to_have_count(2)
    assert all(boxes.nth(i).is_checked() for i in range(2))
    dialog.get_by_label("Reason").fill(XSS_REASON)
    expect(confirm).to_be_disabled()
    dialog.get_by_label("Type the campaign id to confirm").fill(campaign[:-1])
    expect(confirm).to_be_disabled()
    dialog.get_by_label("Type the campaign id to confirm").fill(campaign)
    expect(confirm).to_be_enabled()
    confirm.click()

    expect(dialog).to_be_hidden()
    expect(page.locator("#stop-status")).to_contain_text("confirmed by 1 of 1 processes in")
    expect(page.get_by_role("button", name="Emergency stop")).to_have_count(0)
    expect(page.locator("[data-state]")).to_have_text(STATE_STOPPED)
    [command] = commands_of(stack, campaign)
    assert (command["reason"], command["channels"]) == (XSS_REASON, [])
    expect(page.locator("#audit-command")).to_have_text(str(command["command_id"]))
    expect(page.locator("#audit-reason")).to_have_text(XSS_REASON)
    processes = page.get_by_role("table", name="Processes that confirmed the stop")
    expect(processes).to_contain_text(stack.worker_id)

    # Once every message has its outcome, the page shows exactly what `estop report` says.
    expect(page.locator('tr[data-channel="total"] [data-count="pending"]')).to_have_text("0")
    expect(page.locator("#audit-last-halted")).to_contain_text("s after the stop")
    expect(page.locator("#outcome-chart .stop-line")).to_have_count(1)
    page.wait_for_timeout(1500)  # one more refresh, so the screenshot shows the chart's last slice
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console-campaign-after-stop.png"), full_page=True)
    report = stack.report(campaign)
    assert report["not_sent"] > 0 and report["pending"] == 0
    for channel, counts in [*report["by_channel"].items(), ("total", report)]:
        row = page.locator(f'tr[data-channel="{channel}"]')
        stages = counts["not_sent_by_stage"]
        for key, value in [("sent", counts["sent"]), ("not_sent", counts["not_sent"]),
                           ("sending", stages["sending"]), ("provider", stages["provider"]),
                           ("cancel_unconfirmed", counts["cancel_unconfirmed"]),
                           ("failed", counts["failed"]), ("pending", counts["pending"])]:
            expect(row.locator(f'[data-count="{key}"]')).to_have_text(f"{value:,}")
    assert alerts == []

    # The export downloads the notSent rows, byte for byte what `estop export` writes.
    with page.expect_download() as download:
        page.get_by_role("link", name="Download notSent recipients (CSV)").click()
    downloaded = tmp_path / "downloaded.csv"
    download.value.save_as(downloaded)
    exported = tmp_path / "exported.csv"
    result = stack.estop("export", campaign, "--status", "not_sent", "--out", str(exported))
    assert result.returncode == 0, result.stderr
    assert downloaded.read_bytes() == exported.read_bytes()
    rows = list(csv.DictReader(downloaded.open()))
    assert len(rows) == report["not_sent"]
    assert {r["outcome"] for r in rows} == {"not_sent"}
    unsent = {(r["channel"], r["recipient_id"]) for r in rows}

    # Relaunch: exactly the notSent recipients, queued as a new campaign by the launcher.
    page.get_by_label("New campaign id").fill(campaign)
    page.get_by_role("button", name="Relaunch unsent audience").click()
    expect(page.locator("#relaunch-result")).to_contain_text("already exists")
    page.get_by_label("New campaign id").fill(f"{campaign}-again")
    page.get_by_role("button", name="Relaunch unsent audience").click()
    expect(page.locator("#relaunch-result")).to_contain_text(f"Queued {len(rows):,} unsent recipient(s)")
    wait_for(lambda: stack.api.campaigns().get(f"{campaign}-again", {}).get("state") == STATE_FINISHED,
             "the relaunched campaign to be queued")
    assert queued_recipients(stack, f"{campaign}-again") == unsent

    # The same from the command line, and its refusals.
    cli = stack.estop("relaunch", campaign, "--as", f"{campaign}-cli")
    assert cli.returncode == 0, cli.stderr
    assert queued_recipients(stack, f"{campaign}-cli") == unsent
    taken = stack.estop("relaunch", campaign, "--as", f"{campaign}-again")
    assert taken.returncode == 2 and "already exists" in taken.stderr
    assert len(taken.stderr.strip().splitlines()) == 1 and "Traceback" not in taken.stderr


def queued_recipients(stack: Stack, campaign_id: str) -> set[tuple[str, str]]:
    """(channel, recipient) of every send request of a campaign on the send-requests topics."""
    found: list[tuple[str, str]] = []

    def handle(message: Message) -> None:
        if dict(headers_of(message)).get(HEADER_CAMPAIGN) == campaign_id.encode():
            request = SERDES.send_request.decode(message.value())
            found.append((request["channel"], request["recipient_id"]))

    for channel in ("email", "sms"):
        read_topic(stack.settings, stack.settings.topics.send_requests(channel), handle)
    assert len(found) == len(set(found)), "a recipient was queued twice"
    return set(found)


def test_validation_errors_show_in_the_dialog_and_write_nothing(stack: Stack, page: Page) -> None:
    campaign = "console-invalid"
    announce(stack.settings, SERDES, campaign, ["email", "sms"], 10, STATE_SENDING)
    page.goto(campaign_url(stack, campaign))
    page.get_by_role("button", name="Emergency stop").click()
    dialog = page.get_by_role("dialog")
    error = dialog.get_by_role("alert")
    confirm = dialog.get_by_role("button", name="Stop campaign")
    dialog.get_by_label("Type the campaign id to confirm").fill(campaign)

    dialog.get_by_label("Reason").fill("   ")
    confirm.click()
    expect(error).to_contain_text("reason")
    expect(dialog).to_be_visible()

    # A channel the server does not know (the page only offers real ones: altered here).
    dialog.get_by_label("Reason").fill("wrong audience")
    page.evaluate("document.querySelector('#stop-dialog input[value=email]').value = 'fax'")
    dialog.get_by_role("checkbox", name="sms").uncheck()
    confirm.click()
    expect(error).to_contain_text("unknown channel 'fax'")

    # The campaign leaves Sending for a state a stop does not know while the dialog is open:
    # refused, not stopped. (A Stopped status that no command backs is no such state: "Stopped"
    # comes from campaign-control alone, test_hostile.py.)
    announce(stack.settings, SERDES, campaign, ["email", "sms"], 10, "Draft")
    dialog.get_by_role("checkbox", name="sms").check()
    confirm.click()
    expect(error).to_contain_text("not Sending or Finished")
    expect(dialog).to_be_visible()
    assert commands_of(stack, campaign) == [], "a refused stop wrote to campaign-control"


class CrossSitePage(BaseHTTPRequestHandler):
    """Another site that tries to make the operator's browser stop a campaign: a script posting
    JSON, then a plain-text form whose body is a well-formed stop request
    (``{"reason": "forged", "by": "="}``)."""

    target = ""

    def do_GET(self) -> None:
        body = f"""<!doctype html><html><body>
<form id="f" method="POST" action="{self.target}" enctype="text/plain">
<input name='{{"reason": "forged", "by": "' value='"}}'></form>
<script>
fetch("{self.target}", {{method: "POST", mode: "no-cors",
       headers: {{"Content-Type": "application/json"}}, body: JSON.stringify({{reason: "by fetch"}})}})
  .finally(() => document.getElementById("f").submit());
</script></body></html>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def cross_site(stack: Stack) -> Iterator[tuple[str, str]]:
    campaign = "console-csrf"
    announce(stack.settings, SERDES, campaign, ["email"], 10, STATE_SENDING)
    handler = type("Handler", (CrossSitePage,),
                   {"target": f"{stack.base}/campaigns/{campaign}/stop"})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", campaign
    finally:
        server.shutdown()


def test_a_stop_from_another_site_is_refused(stack: Stack, page: Page, cross_site: tuple[str, str]) -> None:
    url, campaign = cross_site
    page.goto(url)
    # The forged form lands on the control service, which refuses it.
    expect(page.locator("body")).to_contain_text("cross-site request refused")
    assert commands_of(stack, campaign) == []

    # A form-encoded body (curl's default type, a cross-site form's) is refused too.
    form = urllib.request.Request(f"{stack.base}/campaigns/{campaign}/stop", data=b'{"reason": "x"}',
                                  method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(form, timeout=60)
    assert refused.value.code == 415 and b"application/json" in refused.value.read()
    assert commands_of(stack, campaign) == []
    # The same request as JSON from a non-browser client is a stop: the check is what refused.
    accepted = stack.api.stop(campaign, {"reason": "real"})
    assert accepted.status == 202, accepted.body
    assert [c["reason"] for c in commands_of(stack, campaign)] == ["real"]


def test_pages_load_nothing_from_other_hosts(stack: Stack, page: Page) -> None:
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{stack.base}/console")
    expect(page.get_by_role("heading", name="Campaigns")).to_be_visible()
    page.goto(campaign_url(stack, "console-stop"))
    expect(page.get_by_role("heading", name="Counts per channel and stage")).to_be_visible()
    assert requested and all(url.startswith(stack.base + "/") for url in requested), requested
    headers = page.request.get(f"{stack.base}/console").headers
    assert "script-src 'self'" in headers["content-security-policy"]
