"""estop's web push adapter against ``web-push-testing`` (npm), a push service nobody here wrote
(tests/channels/web_push_testing.py): it accepts estop's VAPID signature and decrypts estop's
``aes128gcm`` payloads to exactly what estop sent. The same server refuses a wrong VAPID key, a
forged or expired token and a corrupted body, so its acceptance proves something. It answers
``201 Created`` without a ``Location``, so a stop cannot delete what it took: a campaign stopped
through a worker whose web push goes to it counts every message it took as sent and the rest as
held back, none as cancelled, and it holds exactly the messages reported sent, each once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import requests
from py_vapid import Vapid
from pywebpush import WebPusher

from streams.campaigns.launcher import launch, message_id, recipient_id
from streams.dispatch.changelog import LedgerStats
from streams.models import REASON_HELD, SENT_EVENT, STAGE_PROVIDER, STATE_FINISHED
from streams.providers.base import CancelStatus, Handoff, SubmitStatus
from streams.providers.webpush import application_server_key, topic_for, vapid_private_key
from streams.serde import Serdes
from streams.settings import Settings
from tests.channels.test_webpush import configured
from tests.channels.web_push_testing import WebPushTesting
from tests.pipeline.support import (
    Workers,
    accounted_report,
    duplicates,
    read_events,
    wait_for,
    wait_joined,
    wait_outcomes,
)
from tests.pipeline.test_emergency_stop import stop

CLAIMS_SUB = "mailto:ops@estop.test"


def subscribe(server: WebPushTesting, recipients: list[str], vapid: Vapid, folder: Path) -> dict[str, str]:
    """Each recipient's browser subscribes at web-push-testing for estop's VAPID key; estop's
    subscription directory (``folder/subscriptions.json``) gets what a browser hands a site:
    endpoint and public keys. Returns recipient -> the server's clientHash."""
    made = {r: server.subscribe(application_server_key(vapid)) for r in recipients}
    directory = {r: {"endpoint": s["endpoint"], "keys": s["keys"]} for r, s in made.items()}
    (folder / "subscriptions.json").write_text(json.dumps(directory))
    return {r: s["clientHash"] for r, s in made.items()}


def payload(handoff: Handoff) -> dict[str, str]:
    """What estop's adapter puts in a web push message (docs/providers.md)."""
    return {"message_id": handoff.message_id, "campaign_id": handoff.campaign_id, "body": handoff.payload}


def test_it_takes_estops_vapid_signature_and_decrypts_exactly_what_estop_sent(
        tmp_path: Path, vapid: Vapid, web_push_testing: WebPushTesting) -> None:
    recipients = [recipient_id(i) for i in range(4)]
    clients = subscribe(web_push_testing, recipients, vapid, tmp_path)
    sent = [Handoff(f"w1:webpush:{i}", "w1", "webpush", r, f"Offer {i}: 10 € off, für dich ✓")
            for i, r in enumerate(recipients)]
    pusher = configured(tmp_path, vapid, "ttl_s=60")  # as a worker opens ESTOP_WEBPUSH_PROVIDER
    try:
        answers = pusher.submit(sent)

        assert [(a.status, a.error) for a in answers] == [(SubmitStatus.ACCEPTED, None)] * 4
        # 201 Created without a Location: accepted, named by its Topic.
        assert [a.provider_id for a in answers] == [f"topic:{topic_for(h.message_id)}" for h in sent]
        for handoff in sent:  # decrypted by the server with the subscription's own keys
            received = web_push_testing.notifications(clients[handoff.recipient_id])
            assert [json.loads(text) for text in received] == [payload(handoff)]
        # Nothing to delete it by: the stop cannot cancel it (unknown, counted sent after its TTL).
        assert set(pusher.cancel("w1", {a.message_id: str(a.provider_id) for a in answers}).values()) == {
            CancelStatus.UNKNOWN}
    finally:
        pusher.close()


def test_a_wrong_vapid_key_is_refused(tmp_path: Path, vapid: Vapid, web_push_testing: WebPushTesting) -> None:
    [client] = subscribe(web_push_testing, ["r-wrong-key"], vapid, tmp_path).values()
    other = Vapid()
    other.generate_keys()
    pusher = configured(tmp_path, other, "ttl_s=60")
    try:
        [answer] = pusher.submit([Handoff("w2:webpush:0", "w2", "webpush", "r-wrong-key", "offer")])
    finally:
        pusher.close()
    assert answer.status == SubmitStatus.REFUSED
    assert answer.error == '400 {"error":{"message":"Invalid Crypto-Key header sent"}}'
    assert web_push_testing.notifications(client) == []


def test_a_forged_token_an_expired_one_and_a_corrupted_body_are_refused(
        tmp_path: Path, vapid: Vapid, web_push_testing: WebPushTesting) -> None:
    """The checks behind the acceptance above, each broken on its own: the same request with a
    token another key signed (but this key's ``k``), with a token past its ``exp``, and with one
    byte of the encrypted body changed is refused, and only the intact one is kept."""
    subscription = web_push_testing.subscribe(application_server_key(vapid))
    origin = web_push_testing.origin
    other = Vapid()
    other.generate_keys()

    def token(signer: Vapid, exp: int) -> str:
        header = signer.sign({"aud": origin, "exp": exp, "sub": CLAIMS_SUB})["Authorization"]
        return header.split("t=", 1)[1].split(",", 1)[0]

    def post(text: str, jwt: str, corrupt: bool = False) -> requests.Response:
        body = bytearray(WebPusher(subscription).encode(text.encode(), "aes128gcm")["body"])
        if corrupt:
            body[-5] ^= 0x01  # inside the last record's ciphertext: its AES-GCM tag cannot match
        return requests.post(subscription["endpoint"], data=bytes(body), timeout=10, headers={
            "Authorization": f"vapid t={jwt},k={application_server_key(vapid)}",
            "Content-Encoding": "aes128gcm", "Content-Type": "application/octet-stream", "TTL": "60"})

    valid_for_an_hour = int(time.time()) + 3600
    intact = post("intact", token(vapid, valid_for_an_hour))
    forged = post("forged", token(other, valid_for_an_hour))
    expired = post("expired", token(vapid, int(time.time()) - 60))
    corrupted = post("corrupted", token(vapid, valid_for_an_hour), corrupt=True)

    assert intact.status_code == 201
    for refused in (forged, expired):
        assert (refused.status_code, refused.json()) == (
            400, {"error": {"message": "Invalid authentication token supplied"}})
    assert corrupted.status_code == 400
    assert web_push_testing.notifications(subscription["clientHash"]) == ["intact"]


# -- a stop through a worker whose web push provider is web-push-testing ---------------------------


RATE = 150  # handoffs per second: slow enough that the stop finds most of the campaign not handed


def test_a_stop_where_web_push_goes_to_web_push_testing(
        settings: Settings, serdes: Serdes, workers: Workers, web_push_testing: WebPushTesting,
        vapid: Vapid, tmp_path: Path) -> None:
    """web-push-testing delivers what it takes at once and answers without a Location, so a stop
    has nothing at the provider to cancel: each message it took counts as sent (once its TTL is
    over), the rest as held back before the handoff, none cancelled or unconfirmed, none failed.
    The server holds exactly the messages reported sent, each once and decrypted to what estop
    sent, and none arrives after the confirmation."""
    campaign, planned = "finished-webpush-wpt", 900
    recipients = [recipient_id(i) for i in range(planned)]
    clients = subscribe(web_push_testing, recipients, vapid, tmp_path)
    _, worker_id = workers.start("--channel", "webpush", everything=True, rate=RATE, env={
        "ESTOP_WEBPUSH_PROVIDER": "webpush://?ttl_s=8",
        "ESTOP_WEBPUSH_SUBSCRIPTIONS": str(tmp_path / "subscriptions.json"),
        "ESTOP_WEBPUSH_VAPID_PRIVATE_KEY": vapid_private_key(vapid)})
    wait_joined(settings, [worker_id], [settings.topics.gate_group("webpush"),
                                        settings.topics.dispatcher_group("webpush")])
    outbox = LedgerStats(settings, "webpush")

    assert launch(settings, serdes, campaign, ["webpush"], planned).state == STATE_FINISHED
    wait_for(lambda: outbox.handed(campaign) > 0, "a message handed to web-push-testing")
    result = stop(settings, serdes, campaign)
    assert result.confirmed_at_ms is not None

    def received() -> list[dict[str, str]]:
        return [json.loads(text) for r in recipients for text in web_push_testing.notifications(clients[r])]

    at_confirmation = received()
    wait_outcomes(settings, campaign, planned)
    events = read_events(settings, serdes, campaign)
    assert duplicates(events) == {}
    assert {e.message_id for e in events} == {message_id(campaign, "webpush", i) for i in range(planned)}
    sent = {e.message_id for e in events if e.kind == "sent"}
    not_sent = [e for e in events if e.kind == "notsent"]
    assert all(e.record["event"] == SENT_EVENT["webpush"] for e in events if e.kind == "sent")
    assert sent and not_sent and len(sent) + len(not_sent) == planned  # none failed
    assert all(e.record["reason"].startswith(REASON_HELD) for e in not_sent)

    at_the_end = received()
    assert at_the_end == at_confirmation, "a message reached web-push-testing after the confirmation"
    assert outbox.handed_after(campaign, result.confirmed_at_ms) == 0
    arrived = [m["message_id"] for m in at_the_end]
    assert len(arrived) == len(set(arrived)), "a message reached web-push-testing twice"
    assert set(arrived) == sent  # every message it took is reported sent, and only those
    assert all(m == {"message_id": m["message_id"], "campaign_id": campaign,
                     "body": f"Campaign {campaign}: your offer inside"} for m in at_the_end)

    report = accounted_report(settings, campaign, planned)
    by_channel = report["by_channel"]["webpush"]
    assert (report["cancelled_at_provider"], report["cancel_unconfirmed"]) == (0, 0)
    assert by_channel["sent"] == len(sent)
    assert by_channel["not_sent_by_stage"][STAGE_PROVIDER] == len(not_sent)
