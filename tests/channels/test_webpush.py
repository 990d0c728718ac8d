"""The web push adapter (pywebpush) against the stand-in push service over real HTTP: VAPID
checked, payloads decrypted by the subscriber, TTL and Topic on every message, a stored message
deleted through its Location or replaced by its Topic, TTL expiry; and push services that answer
as the real ones do: 204 to a DELETE of a delivered message (autopush), 201 without a Location
(web-push-testing)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from py_vapid import Vapid
from pydantic import SecretStr

from streams.clock import now_ms
from streams.dispatch.ledger import Ledger, PartitionLedger
from streams.lab.standins.pushservice import (
    AUTOPUSH,
    DELETED,
    DELIVERED,
    REPLACED,
    STORED,
    WEB_PUSH_TESTING,
    StandInPushService,
)
from streams.providers import open_provider
from streams.providers.base import CancelStatus, Delivery, Handoff, SubmitStatus
from streams.providers.exceptions import ProviderConfigError
from streams.providers.webpush import (
    WebPushAdapter,
    application_server_key,
    read_subscriptions,
    topic_for,
    vapid_private_key,
)
from streams.settings import Settings
from tests.support import wait_for

RECIPIENTS = [f"r{i:08d}" for i in range(4)]


def handoffs(campaign: str, count: int) -> list[Handoff]:
    return [Handoff(f"{campaign}:webpush:{i}", campaign, "webpush", RECIPIENTS[i], f"{campaign}: offer")
            for i in range(count)]


@pytest.fixture
def service(tmp_path: Path, vapid: Vapid) -> Iterator[StandInPushService]:
    server = StandInPushService(connect_every_s=3600).start()  # subscribers offline until told
    server.subscribe(RECIPIENTS, application_server_key(vapid), tmp_path / "subscriptions.json")
    try:
        yield server
    finally:
        server.stop()


def adapter(tmp_path: Path, vapid: Vapid, cancel: str = "delete", ttl_s: int = 60,
            deleted: CancelStatus = CancelStatus.CANCELLED) -> WebPushAdapter:
    """An adapter for the stand-in, which (unless built with AUTOPUSH quirks) answers 404 for a
    message it delivered: its 204 proves a deletion (``delete_204=cancelled``)."""
    return WebPushAdapter(read_subscriptions(tmp_path / "subscriptions.json"), vapid,
                          "mailto:ops@estop.test", ttl_s, cancel, 10, deleted)


def test_send_delete_and_too_late(tmp_path: Path, vapid: Vapid, service: StandInPushService) -> None:
    pusher = adapter(tmp_path, vapid)
    try:
        answers = pusher.submit([*handoffs("c1", 4), Handoff("x", "c1", "webpush", "nobody", "x")])
        assert [a.status for a in answers] == [SubmitStatus.ACCEPTED] * 4 + [SubmitStatus.REFUSED]
        assert answers[-1].error == "no web push subscription for recipient nobody"
        locations = {a.message_id: str(a.provider_id) for a in answers[:4]}
        assert all(loc.startswith(f"{service.origin}/wmsg/") for loc in locations.values())
        stored = service.query(lambda s: [(m.topic, round(m.expires_at - time.monotonic()))
                                          for m in s.messages.values()])
        assert {t for t, _ in stored} == {topic_for(m) for m in locations}  # a Topic per message
        assert all(55 <= ttl <= 60 for _, ttl in stored)  # the explicit TTL
        assert service.refused == {}  # VAPID verified, aes128gcm body

        first, second = list(locations)[:2], list(locations)[2:]
        assert set(pusher.cancel("c1", {m: locations[m] for m in first}).values()) == {CancelStatus.CANCELLED}
        service.connect_all()
        arrived = [json.loads(a.text) for a in service.arrivals.items]
        assert sorted(a["message_id"] for a in arrived) == sorted(second)  # decrypted by each subscriber
        assert all(a["body"] == "c1: offer" and a["campaign_id"] == "c1" for a in arrived)
        assert service.undecryptable == 0
        late = pusher.cancel("c1", {m: locations[m] for m in second})
        assert set(late.values()) == {CancelStatus.TOO_LATE}
        told = pusher.deliveries()
        assert {(d.message_id, d.delivered) for d in told} == {(m, True) for m in second}
        assert service.states("c1") == {DELETED: 2, DELIVERED: 2}
    finally:
        pusher.close()


def test_replace_by_topic_where_deletion_is_unsupported(tmp_path: Path, vapid: Vapid,
                                                        service: StandInPushService) -> None:
    service.allow_delete = False
    pusher = adapter(tmp_path, vapid, cancel="topic")
    try:
        [answer] = pusher.submit(handoffs("c2", 1))
        assert pusher.cancel("c2", {answer.message_id: str(answer.provider_id)}) == {
            answer.message_id: CancelStatus.UNKNOWN}  # the service does not say if it was still stored
        service.connect_all()
        assert service.states("c2") == {REPLACED: 1}  # the original never reached the device
        assert [json.loads(a.text) for a in service.arrivals.items] == [{"estop": "withdrawn"}]
    finally:
        pusher.close()


def test_ttl_over_counts_as_left_the_service(tmp_path: Path, vapid: Vapid,
                                             service: StandInPushService) -> None:
    pusher = adapter(tmp_path, vapid, ttl_s=1)
    try:
        [answer] = pusher.submit(handoffs("c3", 1))
        told: list[Delivery] = []

        def told_some() -> bool:
            told.extend(pusher.deliveries())
            return bool(told)

        wait_for(told_some, "the TTL to run out", timeout_s=30)
        assert [(d.message_id, d.provider_id) for d in told] == [(answer.message_id, answer.provider_id)]
        wait_for(lambda: service.states("c3") == {"expired": 1}, "the service to expire it", timeout_s=30)
        assert service.states("c3").get(STORED, 0) == 0 and service.arrivals.count("c3") == 0
    finally:
        pusher.close()


def test_a_wrong_vapid_key_is_refused(tmp_path: Path, service: StandInPushService) -> None:
    other = Vapid()
    other.generate_keys()
    pusher = adapter(tmp_path, other)
    try:
        [answer] = pusher.submit(handoffs("c4", 1))
        assert answer.status == SubmitStatus.REFUSED and answer.error is not None
        assert answer.error.startswith("403")
        assert service.refused == {403: 1}
    finally:
        pusher.close()


def test_a_bad_subscription_directory(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"r1": {"endpoint": "http://x/"}}))
    with pytest.raises(ProviderConfigError, match="each entry needs an endpoint and keys p256dh and auth"):
        read_subscriptions(bad)
    with pytest.raises(ProviderConfigError, match="cannot read it"):
        read_subscriptions(tmp_path / "missing.json")


def test_messages_sent_before_a_restart_still_get_their_outcome(tmp_path: Path, vapid: Vapid,
                                                               service: StandInPushService) -> None:
    """A push service sends no receipts: the adapter counts a message delivered when its TTL is
    over. A dispatcher restarted before that hands its adapter what its ledger holds as
    accepted, and the new adapter tracks those messages to the end of their TTL."""
    ledger = Ledger("webpush", render=None)
    ledger.add([PartitionLedger(0)])
    sent = handoffs("c5", 2)
    before = adapter(tmp_path, vapid, ttl_s=2)
    try:
        ledger.reserve(sent, {h.message_id: (0, n) for n, h in enumerate(sent)})
        answers = before.submit(sent)
        ledger.accepted({a.message_id: str(a.provider_id) for a in answers}, now_ms())
    finally:
        before.close()  # the process dies before any delivery is learned
    after = adapter(tmp_path, vapid, ttl_s=2)
    try:
        unfinished = ledger.unfinished([0])
        assert sorted(a.message_id for a in unfinished) == sorted(h.message_id for h in sent)
        after.resume(unfinished)
        told: list[Delivery] = []

        def told_all() -> bool:
            told.extend(after.deliveries())
            return len(told) == len(sent)

        wait_for(told_all, "outcomes of the messages sent before the restart", timeout_s=30)
        assert {(d.message_id, d.provider_id) for d in told} == {
            (a.message_id, a.provider_id) for a in answers}
    finally:
        after.close()


# -- truthful cancellation against push services that answer as the real ones do ------------------


def configured(tmp_path: Path, vapid: Vapid, query: str) -> WebPushAdapter:
    """The adapter as a worker opens it from ``ESTOP_WEBPUSH_PROVIDER``."""
    settings = Settings(webpush_provider=f"webpush://?{query}",
                        webpush_subscriptions=tmp_path / "subscriptions.json",
                        webpush_vapid_private_key=SecretStr(vapid_private_key(vapid)))
    opened = open_provider(settings, "webpush")
    assert isinstance(opened, WebPushAdapter)
    return opened


def test_autopush_answers_204_for_a_delivered_message_so_a_204_is_unconfirmed(
        tmp_path: Path, vapid: Vapid, service: StandInPushService) -> None:
    """Mozilla's autopush answers 204 to a DELETE of a message it already delivered, as for one
    it deleted: by default (no delete_204 in the URL) a 204 proves nothing."""
    service.quirks = AUTOPUSH
    pusher = configured(tmp_path, vapid, "ttl_s=60")
    try:
        answers = pusher.submit(handoffs("a1", 2))
        service.connect_all()  # both reach their browsers
        assert service.states("a1") == {DELIVERED: 2}

        cancelled = pusher.cancel("a1", {a.message_id: str(a.provider_id) for a in answers})

        assert set(cancelled.values()) == {CancelStatus.UNCONFIRMED}
        assert pusher.deliveries() == []  # not tracked any more: its TTL would prove nothing
        assert service.arrivals.count("a1") == 2
    finally:
        pusher.close()


def test_delete_204_cancelled_declares_a_service_whose_204_proves_the_deletion(
        tmp_path: Path, vapid: Vapid, service: StandInPushService) -> None:
    pusher = configured(tmp_path, vapid, "ttl_s=60&delete_204=cancelled")
    try:
        [answer] = pusher.submit(handoffs("a2", 1))
        assert pusher.cancel("a2", {answer.message_id: str(answer.provider_id)}) == {
            answer.message_id: CancelStatus.CANCELLED}
        assert service.states("a2") == {DELETED: 1}
    finally:
        pusher.close()


def test_201_without_a_location_is_accepted_once_and_never_deleted(
        tmp_path: Path, vapid: Vapid, service: StandInPushService) -> None:
    """web-push-testing answers 201 Created without a Location: the message is accepted (a
    refusal would send it again: a duplicate), its provider id names its Topic, and a stop cannot
    delete it (unknown: counted sent once its TTL is over) unless cancel=topic replaces it."""
    service.quirks = WEB_PUSH_TESTING
    pusher = adapter(tmp_path, vapid)
    by_topic = adapter(tmp_path, vapid, cancel="topic")
    try:
        answers = pusher.submit(handoffs("a3", 2))
        assert [a.status for a in answers] == [SubmitStatus.ACCEPTED] * 2
        assert [a.provider_id for a in answers] == [f"topic:{topic_for(a.message_id)}" for a in answers]
        first, second = answers

        assert pusher.cancel("a3", {first.message_id: str(first.provider_id)}) == {
            first.message_id: CancelStatus.UNKNOWN}
        [replaced] = by_topic.submit([Handoff("a3:webpush:9", "a3", "webpush", RECIPIENTS[3], "a3: offer")])
        assert replaced.provider_id == f"topic:{topic_for('a3:webpush:9')}"
        assert set(by_topic.cancel("a3", {replaced.message_id: str(replaced.provider_id)}).values()) == {
            CancelStatus.UNKNOWN}  # the service does not say whether it was still stored
        service.connect_all()

        arrived = sorted(json.loads(a.text).get("message_id", "withdrawn") for a in service.arrivals.items)
        assert arrived == sorted([first.message_id, second.message_id, "withdrawn"])  # each once
        assert service.states("a3") == {DELIVERED: 2, REPLACED: 1}
    finally:
        pusher.close()
        by_topic.close()


def test_a_bad_delete_204_is_one_clear_error(tmp_path: Path, vapid: Vapid,
                                             service: StandInPushService) -> None:
    with pytest.raises(ProviderConfigError,
                       match="delete_204 must be unconfirmed or cancelled, not 'maybe'") as raised:
        configured(tmp_path, vapid, "delete_204=maybe")
    assert str(raised.value).startswith("ESTOP_WEBPUSH_PROVIDER: ")
