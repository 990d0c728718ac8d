"""The FCM adapter against the stand-in FCM HTTP v1 endpoint over real HTTP: the service account's
OAuth JWT-bearer flow, the v1 request shape with a short TTL, no recall, quota refusals; and every
request checked against Google's fcm.v1 discovery document (``fcm_contract``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.clock import now_ms
from streams.dispatch.ledger import Ledger, PartitionLedger
from streams.lab.standins.fcm import StandInFcm
from streams.providers import open_provider
from streams.providers.base import CancelCapability, CancelStatus, Handoff, SubmitStatus
from streams.providers.exceptions import ProviderConfigError
from streams.providers.fcm import FcmAdapter
from streams.settings import Settings
from tests.channels.fcm_contract import problems


def handoffs(campaign: str, count: int) -> list[Handoff]:
    return [Handoff(f"{campaign}:push:{i}", campaign, "push", f"device-token-{i}", f"{campaign}: offer")
            for i in range(count)]


@pytest.fixture
def fcm() -> Iterator[StandInFcm]:
    server = StandInFcm(project="estop-test").start()
    try:
        yield server
    finally:
        server.stop()


def open_fcm(fcm: StandInFcm, tmp_path: Path, query: str = "ttl_s=30&rate=1000") -> FcmAdapter:
    settings = Settings(push_provider=f"fcm+http://127.0.0.1:{fcm.port}?{query}",
                        push_service_account=fcm.service_account(tmp_path / "account.json"))
    adapter = open_provider(settings, "push")
    assert isinstance(adapter, FcmAdapter)
    return adapter


def test_send_with_oauth_and_a_short_ttl(fcm: StandInFcm, tmp_path: Path) -> None:
    adapter = open_fcm(fcm, tmp_path)
    try:
        assert adapter.cancel_capability == CancelCapability.NONE
        answers = adapter.submit(handoffs("c1", 5))
        assert [a.status for a in answers] == [SubmitStatus.ACCEPTED] * 5
        assert all(str(a.provider_id).startswith("projects/estop-test/messages/") for a in answers)
        assert fcm.tokens_issued == 1 and fcm.refused == {}  # one bearer token, reused
        arrived = {a.recipient: json.loads(a.text) for a in fcm.arrivals.items}
        assert arrived["device-token-3"] == {"message_id": "c1:push:3", "campaign_id": "c1",
                                             "body": "c1: offer"}
        # Accepted is delivered: FCM cannot recall it, so a stop finds it too late.
        told = adapter.deliveries()
        assert sorted(d.message_id for d in told) == sorted(a.message_id for a in answers)
        assert adapter.deliveries() == []
        ids = {a.message_id: str(a.provider_id) for a in answers}
        assert set(adapter.cancel("c1", ids).values()) == {CancelStatus.TOO_LATE}
    finally:
        adapter.close()


def test_a_revoked_token_is_renewed(fcm: StandInFcm, tmp_path: Path) -> None:
    adapter = open_fcm(fcm, tmp_path)
    try:
        fcm.query(lambda server: server._tokens.clear())
        [answer] = adapter.submit(handoffs("c2", 1))
        assert answer.status == SubmitStatus.ACCEPTED
        assert fcm.tokens_issued == 2 and fcm.refused == {"UNAUTHENTICATED": 1}
    finally:
        adapter.close()


def test_over_quota_is_a_refusal_to_retry(fcm: StandInFcm, tmp_path: Path) -> None:
    fcm.max_rate = 3
    adapter = open_fcm(fcm, tmp_path, "ttl_s=30&rate=100000")
    try:
        answers = adapter.submit(handoffs("c3", 8))
        refused = [a for a in answers if a.status == SubmitStatus.REFUSED]
        assert refused and all(str(a.error).startswith("429") for a in refused)
        assert fcm.arrivals.count('"c3"') == len(answers) - len(refused)
    finally:
        adapter.close()


def test_a_service_account_that_is_not_the_projects(fcm: StandInFcm, tmp_path: Path) -> None:
    other = StandInFcm(project="estop-test")  # another key pair: its signature does not verify
    path = other.service_account(tmp_path / "other.json")
    account = json.loads(path.read_text())
    account["token_uri"] = f"{fcm.origin}/token"
    path.write_text(json.dumps(account))
    settings = Settings(push_provider=f"fcm+http://127.0.0.1:{fcm.port}", push_service_account=path)
    with pytest.raises(ProviderConfigError, match="refused the service account"):
        open_provider(settings, "push")
    with pytest.raises(ProviderConfigError, match="needs ESTOP_PUSH_SERVICE_ACCOUNT"):
        open_provider(Settings(push_provider=f"fcm+http://127.0.0.1:{fcm.port}"), "push")


def test_messages_accepted_before_a_restart_are_reported_delivered(fcm: StandInFcm,
                                                                   tmp_path: Path) -> None:
    """FCM's acceptance is the delivery: one recorded accepted by the ledger but not yet
    reported when the dispatcher died is reported by the adapter of the restarted one."""
    ledger = Ledger("push", render=None)
    ledger.add([PartitionLedger(0)])
    sent = handoffs("c9", 3)
    before = open_fcm(fcm, tmp_path)
    try:
        ledger.reserve(sent, {h.message_id: (0, n) for n, h in enumerate(sent)})
        answers = before.submit(sent)
        ledger.accepted({a.message_id: str(a.provider_id) for a in answers}, now_ms())
    finally:
        before.close()  # died before its deliveries were asked for
    after = open_fcm(fcm, tmp_path)
    try:
        assert after.deliveries() == []
        after.resume(ledger.unfinished([0]))
        told = after.deliveries()
        assert {(d.message_id, d.provider_id, d.delivered) for d in told} == {
            (a.message_id, a.provider_id, True) for a in answers}
    finally:
        after.close()


# -- Google's contract ---------------------------------------------------------------------------


def test_every_request_validates_against_googles_fcm_v1_discovery_document(fcm: StandInFcm,
                                                                           tmp_path: Path) -> None:
    """Each messages:send the adapter makes is one the fcm.v1 discovery document of
    google-api-python-client describes: method, path, fields, the ttl as a duration string."""
    adapter = open_fcm(fcm, tmp_path, "ttl_s=45&rate=1000")
    try:
        assert [a.status for a in adapter.submit(handoffs("g1", 5))] == [SubmitStatus.ACCEPTED] * 5
    finally:
        adapter.close()
    assert len(fcm.requests) == 5
    for method, path, body in fcm.requests:
        assert problems(method, path, body) == [], body
    assert {json.dumps(body["message"]["android"]) for _, _, body in fcm.requests} == {  # type: ignore[index]
        json.dumps({"ttl": "45s"})}


def test_the_contract_check_refuses_what_google_would_refuse() -> None:
    """The check fails on any field Google would refuse, so the test above can fail."""
    good = {"message": {"token": "t", "data": {"k": "v"}, "android": {"ttl": "60s", "priority": "HIGH"},
                        "apns": {"headers": {"apns-expiration": "1"}}}}
    assert problems("POST", "/v1/projects/p1/messages:send", good) == []
    wrong = {"message": {"tokens": ["t"], "data": {"k": 1}, "android": {"ttl": 60, "priority": "urgent"},
                         "apns": {"headers": {"apns-expiration": 1}}},
             "validate_only": True}
    assert sorted(problems("PUT", "/v1/p1/messages:send", wrong)) == sorted([
        "method PUT, not POST",
        "path /v1/p1/messages:send does not match v1/{+parent}/messages:send",
        "unknown field message.tokens",
        "message.data.k must be a string, not 1",
        "message.android.ttl must be a string, not 60",
        "message.android.priority must be one of NORMAL, HIGH, not 'urgent'",
        "message.apns.headers.apns-expiration must be a string, not 1",
        "unknown field validate_only",
    ])
    assert problems("POST", "/v1/projects/p1/messages:send", {"message": {"android": {"ttl": "1m"}}}) == [
        'message.android.ttl must be a duration such as "60s", not \'1m\'']
    assert problems("POST", "/v1/projects/p1/messages:send", {}) == ["missing required field message"]
