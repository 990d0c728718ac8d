"""The guardrails' HTTP routes on a control plane that asks for tokens, against the real broker
and real workers: a viewer may read the rules and a campaign's values but not set rules nor post
feedback (refused naming the user and the role it needs, nothing written); a bad rule is a 400 of
one line, nothing written; an operator's rules apply, and feedback posted to ``POST /feedback``
as a webhook would trips the complaint rule, which writes one stop that
``GET /campaigns/{id}/guardrails`` shows with the rule's live value, and the campaign's account
(``GET /campaigns/{id}``, ``estop status``) names who stopped it."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest

from streams.guardrails.rules import read_rules
from streams.serde import Serdes
from streams.settings import Settings
from tests.controlplane.support import Api, ControlProcess, Processes, http
from tests.guardrails.test_processor import CAMPAIGN, guardrail_stops, run_campaign
from tests.pipeline.support import Workers, cli_env, records
from tests.support import run_estop, wait_for

pytestmark = pytest.mark.broker

OPERATOR, VIEWER = secrets.token_hex(16), secrets.token_hex(16)
REFUSED = "user 'watcher' (role viewer) may not {} {}: needs role operator"


@pytest.fixture
def api(settings: Settings) -> Any:
    processes = Processes()
    control = ControlProcess(settings, env={
        "ESTOP_HTTP_OPEN": "false",
        "ESTOP_HTTP_TOKENS": f"hook:operator:{OPERATOR},watcher:viewer:{VIEWER}"})
    processes.add(control)
    try:
        yield control.start()
    finally:
        processes.stop_all()


def call(api: Api, method: str, path: str, token: str | None,
         body: Any = None) -> tuple[int, dict[str, Any]]:
    reply = http(method, api.base + path, None if body is None else json.dumps(body).encode(),
                 token=token)
    return reply.status, reply.json()


def test_rules_and_feedback_over_http_trip_the_complaint_rule(
        settings: Settings, serdes: Serdes, workers: Workers, api: Api) -> None:
    rule = {"name": "complaint", "threshold": 0.05, "min_sample": 50, "window": "first",
            "window_size": 100}
    assert call(api, "POST", "/guardrails/rules", VIEWER, rule) == (
        403, {"error": REFUSED.format("POST", "/guardrails/rules")})
    assert call(api, "DELETE", "/guardrails/rules?name=bounce", VIEWER) == (
        403, {"error": REFUSED.format("DELETE", "/guardrails/rules")})
    status, bad = call(api, "POST", "/guardrails/rules", OPERATOR, {**rule, "threshold": 2})
    assert status == 400 and "threshold" in bad["error"] and "\n" not in bad["error"]
    status, bad = call(api, "POST", "/guardrails/rules", OPERATOR, {**rule, "colour": "red"})
    assert status == 400 and "unknown field(s) colour" in bad["error"]
    assert read_rules(settings, serdes).stored == {}

    for name in ("bounce", "provider-failure", "unsubscribe"):
        assert call(api, "POST", "/guardrails/rules", OPERATOR, {"name": name, "enabled": False})[0] == 200
    status, stored = call(api, "POST", "/guardrails/rules", OPERATOR, rule)
    assert status == 200 and stored["rule"]["updated_by"] == "hook"
    status, listed = call(api, "GET", "/guardrails/rules", VIEWER)
    assert status == 200
    (complaint,) = [r for r in listed["defaults"] if r["name"] == "complaint"]
    assert (complaint["threshold"], complaint["builtin"]) == (0.05, False)

    ids = run_campaign(settings, serdes, workers)
    workers.start("--role", "guardrail")
    reports = [{"kind": "complaint", "message_id": m, "campaign_id": CAMPAIGN, "channel": "email"}
               for m in ids[:10]]  # 10 of the first 100 or more: 5% or more
    assert http("POST", api.base + "/feedback", json.dumps({"feedback": reports}).encode()).status == 401
    assert call(api, "POST", "/feedback", VIEWER, {"feedback": reports}) == (
        403, {"error": REFUSED.format("POST", "/feedback")})
    huge = {"feedback": [{**reports[0], "detail": "x" * 1000}] * 100}  # past the 64 KiB cap
    status, refused = call(api, "POST", "/feedback", OPERATOR, huge)
    assert status == 413 and "larger than" in refused["error"]
    assert records(settings, settings.topics.feedback) == []
    assert call(api, "POST", "/feedback", OPERATOR, {"feedback": reports}) == (202, {"written": 10})
    feedback = [serdes.feedback.decode(m.value()) for m in records(settings, settings.topics.feedback)]
    assert {f["source"] for f in feedback} == {"hook"}

    def stop_shown() -> bool:
        tripped = call(api, "GET", f"/campaigns/{CAMPAIGN}/guardrails", VIEWER)[1]["tripped"]
        return bool(tripped and tripped["stop_command_id"])

    wait_for(stop_shown, "the trip's stop shown by the API")
    (stop,) = guardrail_stops(settings, serdes)
    assert stop["requested_by"] == "guardrail:complaint"
    status, shown = call(api, "GET", f"/campaigns/{CAMPAIGN}/guardrails", VIEWER)
    assert status == 200 and [r["name"] for r in shown["rules"]] == ["complaint"]
    (window,) = shown["rules"][0]["windows"]
    assert window["channel"] == "email" and window["hits"] == 10 and window["sample"] >= 100
    assert window["value"] == 10 / window["sample"] and window["threshold"] == 0.05
    assert window["sample_reached"] and window["stop_command_id"] == stop["command_id"]
    assert shown["tripped"]["rule"] == "complaint"
    assert shown["tripped"]["requested_by"] == "guardrail:complaint"
    assert shown["tripped"]["stop_command_id"] == stop["command_id"]
    # Who stopped it, in the campaign's account: the API (and so the console) and `estop status`.
    status, detail = call(api, "GET", f"/campaigns/{CAMPAIGN}", VIEWER)
    assert status == 200 and detail["stopped_by"] == "guardrail:complaint"
    listed_campaign = call(api, "GET", "/campaigns", VIEWER)[1]["campaigns"]
    assert [c["stopped_by"] for c in listed_campaign] == ["guardrail:complaint"]
    printed = run_estop("status", CAMPAIGN, "--json", env=cli_env(settings))
    assert printed.returncode == 0 and json.loads(printed.stdout)["stopped_by"] == "guardrail:complaint"

    assert call(api, "DELETE", "/guardrails/rules?name=complaint", OPERATOR) == (
        200, {"deleted": {"scope": "*", "name": "complaint"}})
    status, gone = call(api, "DELETE", "/guardrails/rules?name=complaint", OPERATOR)
    assert status == 400 and gone["error"] == "no rule 'complaint' is stored for every campaign"
    (complaint,) = [r for r in call(api, "GET", "/guardrails/rules", VIEWER)[1]["defaults"]
                    if r["name"] == "complaint"]
    assert complaint["builtin"] and complaint["threshold"] == 0.003
