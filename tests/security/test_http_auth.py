"""The control plane's HTTP API on the secured broker, itself running as the `control`
principal: 401 without a valid token, 403 without the route's role, nothing written either
way, every attempt on the stop route in the audit trail; an operator's stop is recorded under
the token's user, never under a name from the request body."""

from __future__ import annotations

import json
from typing import Any

from streams.lab.harness import WorkerProcess
from streams.models import STATE_SENDING
from streams.security import credentials
from streams.serde import Serdes
from tests.controlplane.support import Api, ControlProcess, Processes, http
from tests.pipeline.support import announce, records
from tests.security.support import Principals
from tests.support import wait_for

WAIT_S = 120.0
REASON = "wrong discount code"


def start_control(secured: Principals, processes: Processes) -> Api:
    tokens = credentials.read_env(secured.env_files["control"].parent / "http-tokens.env")
    control = ControlProcess(secured.admin, env={**secured.env("control"), **tokens})
    processes.add(control)
    return control.start(WAIT_S)


def stop_as(api: Api, token: str | None, campaign: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    reply = http("POST", f"{api.base}/campaigns/{campaign}/stop", json.dumps(body).encode(),
                 token=token)
    return reply.status, reply.json()


def test_http_roles_refuse_without_writing_and_audit_every_attempt(
        secured: Principals, serdes: Serdes, processes: Processes) -> None:
    campaign = "autumn-sale"
    announce(secured.roles["engine"], serdes, campaign, ["email"], 100, STATE_SENDING)
    sink = WorkerProcess(secured.admin.model_copy(update={"metrics_port": 0}), ["--role", "sink"],
                         env=secured.env("analytics"))
    processes.add(sink)
    sink.wait_ready(WAIT_S)
    api = start_control(secured, processes)
    tokens = secured.http_tokens

    refused = [
        stop_as(api, None, campaign, {"reason": REASON}),
        stop_as(api, "x" * 32, campaign, {"reason": REASON}),
        stop_as(api, tokens["viewer"], campaign, {"reason": REASON}),
    ]

    assert [status for status, _ in refused] == [401, 401, 403]
    assert refused[0][1]["error"] == ("authentication required: no bearer token "
                                      "(Authorization: Bearer <token>)")
    assert refused[1][1]["error"] == "authentication required: unknown token"
    assert refused[2][1]["error"] == ("user 'viewer' (role viewer) may not POST "
                                      "/campaigns/{campaign_id}/stop: needs role operator")
    assert records(secured.admin, secured.admin.topics.control) == []
    # Reading needs a token too; the viewer's is enough for that, not for the audit.
    assert http("GET", f"{api.base}/campaigns").status == 401
    assert http("GET", f"{api.base}/campaigns", token=tokens["viewer"]).status == 200
    assert http("GET", f"{api.base}/audit", token=tokens["viewer"]).status == 403
    assert http("GET", f"{api.base}/health").status == 200  # health checks and scrapes: open

    named = stop_as(api, tokens["operator"], campaign, {"reason": REASON, "by": "someone else"})
    assert named[0] == 400 and "authenticated identity" in named[1]["error"]
    assert records(secured.admin, secured.admin.topics.control) == []

    status, accepted = stop_as(api, tokens["operator"], campaign, {"reason": REASON})

    assert status == 202, accepted
    [command] = [serdes.control_command.decode(m.value())
                 for m in records(secured.admin, secured.admin.topics.control)]
    assert (command["command_id"], command["requested_by"]) == (accepted["command_id"], "operator")

    def trail() -> list[dict[str, Any]]:
        reply = http("GET", f"{api.base}/audit?campaign={campaign}", token=tokens["operator"])
        assert reply.status == 200, reply.body
        entries: list[dict[str, Any]] = reply.json()["audit"]
        return entries

    wait_for(lambda: len(trail()) == 5, "five audit events", timeout_s=WAIT_S)
    control_user = secured.roles["control"].sasl_username
    assert [(e["outcome"], e["actor"], e["role"], e["via"], e["source"], e["principal"],
             e["detail"].split(":")[0]) for e in trail()] == [
        ("refused", "unauthenticated", None, "http", "127.0.0.1", control_user, "401"),
        ("refused", "unauthenticated", None, "http", "127.0.0.1", control_user, "401"),
        ("refused", "viewer", "viewer", "http", "127.0.0.1", control_user, "403"),
        ("rejected", "operator", "operator", "http", "127.0.0.1", control_user, "400"),
        ("accepted", "operator", "operator", "http", "127.0.0.1", control_user, ""),
    ]
    assert trail()[-1]["command_id"] == accepted["command_id"]

    # The kill switch needs admin: the operator is refused (and audited), the admin is not.
    kill = json.dumps({"reason": REASON, "confirm": "STOP ALL"}).encode()
    assert http("POST", f"{api.base}/stop-all", kill, token=tokens["operator"]).status == 403
    assert http("POST", f"{api.base}/stop-all", kill, token=tokens["admin"]).status == 200

    def kill_switch() -> list[tuple[str, str, str]]:
        reply = http("GET", f"{api.base}/audit", token=tokens["operator"])
        return [(e["outcome"], e["actor"], e["detail"].split(":")[0]) for e in reply.json()["audit"]
                if e["action"] == "kill_switch"]

    wait_for(lambda: len(kill_switch()) == 2, "two kill switch audit events", timeout_s=WAIT_S)
    assert kill_switch() == [("refused", "operator", "403"),
                             ("accepted", "admin", "every campaign is stopped already")]
