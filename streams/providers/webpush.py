"""Web Push (RFC 8030), payloads encrypted per RFC 8291 and signed per RFC 8292 (VAPID), with
``pywebpush``: ``webpush://?ttl_s=60&cancel=delete&delete_204=unconfirmed`` (or ``cancel=topic``;
``delete_204=cancelled``).

Addressing: the recipient id names a subscription in the directory ``ESTOP_WEBPUSH_SUBSCRIPTIONS``
(JSON: recipient_id -> {endpoint, keys: {p256dh, auth}}, as the browsers handed them out); a
recipient without one is refused. Every message carries an explicit ``TTL`` and a ``Topic`` of its
own (derived from its message id). The provider id is the ``Location`` the push service returns;
a service that answers ``201 Created`` without one (RFC 8030 asks for it; ``web-push-testing``
leaves it out) accepted the message all the same: its provider id is ``topic:`` and its Topic,
and it cannot be deleted.

On a stop: ``cancel=delete`` deletes each message the service may still store through its
Location (``404``/``410``: it already left: too late). What a ``204`` proves depends on the
service: Mozilla's autopush answers ``204`` also for a message it already delivered, so by default
(``delete_204=unconfirmed``) a ``204`` is an unconfirmed cancel; ``delete_204=cancelled`` declares
a service known to answer ``404``/``410`` for delivered messages, whose ``204`` proves the
deletion. ``cancel=topic`` is for services that do not delete: it replaces each message by its
Topic with a no-op payload (``{"estop": "withdrawn"}``, which the service worker ignores); the
service does not say whether the original was still stored, so the answer is unknown and the
message is counted as sent. A message without a Location is never deleted: with
``cancel=delete`` its cancel is unknown (counted as sent once its TTL is over).

Deliveries: push services give no delivery receipts (RFC 8030 receipts are not offered by the
major services), so a message counts as delivered once the service no longer holds it: its TTL is
over, or a stop found it gone. This adapter learns that from the clock of its own process."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import SplitResult, urlsplit

import requests
from cryptography.hazmat.primitives import serialization
from py_vapid import Vapid, VapidException
from pywebpush import WebPusher

from streams.clock import now_ms
from streams.providers.base import (
    Accepted,
    CancelCapability,
    CancelStatus,
    Delivery,
    Handoff,
    SubmitStatus,
    Submitted,
)
from streams.providers.exceptions import ProviderConfigError
from streams.providers.http import SessionPerThread
from streams.providers.urls import query_number, query_text
from streams.settings import Settings

DEFAULT_TTL_S = 60
WORKERS = 8  # requests in flight at once
VAPID_LIFETIME_S = 12 * 3600  # RFC 8292 allows up to 24 hours; a token is reused until near its end
WITHDRAWN = json.dumps({"estop": "withdrawn"})
SETTING = "ESTOP_WEBPUSH_PROVIDER"
TOPIC_ID = "topic:"  # the provider id of a message accepted without a Location: not deletable
# What a 204 to a DELETE proves, per push service (the URL's delete_204).
DELETE_204 = {"unconfirmed": CancelStatus.UNCONFIRMED, "cancelled": CancelStatus.CANCELLED}


def topic_for(message_id: str) -> str:
    """A Topic naming one message (32 base64url characters), so replacing it replaces only it."""
    digest = hashlib.sha256(message_id.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()[:32]


def application_server_key(vapid: Vapid) -> str:
    """The VAPID public key as browsers take it (applicationServerKey): base64url, uncompressed."""
    raw = vapid.public_key.public_bytes(serialization.Encoding.X962,
                                        serialization.PublicFormat.UncompressedPoint)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def vapid_private_key(vapid: Vapid) -> str:
    """The VAPID private key as ESTOP_WEBPUSH_VAPID_PRIVATE_KEY takes it: base64url, raw 32 bytes."""
    raw = vapid.private_key.private_numbers().private_value.to_bytes(32, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def load_vapid(key: str) -> Vapid:
    try:
        return Vapid.from_pem(key.encode()) if "-----BEGIN" in key else Vapid.from_string(key)
    except (VapidException, ValueError, TypeError) as exc:
        raise ProviderConfigError("ESTOP_WEBPUSH_VAPID_PRIVATE_KEY is not a VAPID private key "
                                  "(base64url raw or DER, or PEM)") from exc


@dataclass(slots=True)
class _Held:
    message_id: str
    subscription: Mapping[str, Any]
    leaves_at: float  # when the service stops holding it (its TTL)


class WebPushAdapter:
    channel = "webpush"
    receipt_source = ("none from push services: a message counts as delivered once its TTL is over "
                      "(or a stop finds it gone)")
    cancel_capability = CancelCapability.BY_MESSAGE_ID

    def __init__(self, subscriptions: Mapping[str, Any], vapid: Vapid, subject: str, ttl_s: int,
                 cancel: str, timeout_s: float,
                 deleted: CancelStatus = CancelStatus.UNCONFIRMED) -> None:
        self.subscriptions = subscriptions
        self.vapid = vapid
        self.subject = subject
        self.ttl_s = ttl_s
        self.cancel_by = cancel
        self.deleted = deleted  # what a 204 to a DELETE proves at these push services
        self.timeout_s = timeout_s
        self._tokens: dict[str, tuple[float, dict[str, str]]] = {}  # origin -> (expiry, headers)
        self._held: dict[str, _Held] = {}  # provider id (Location, or topic:) -> message
        self._gone: list[Delivery] = []
        self._lock = threading.Lock()
        self._sessions = SessionPerThread()
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="webpush")

    @classmethod
    def from_url(cls, settings: Settings, channel: str, url: SplitResult) -> Self:
        cancel = query_text(url, "cancel", "delete")
        if cancel not in ("delete", "topic"):
            raise ProviderConfigError(f"{SETTING}: cancel must be delete or topic, not {cancel!r}")
        delete_204 = query_text(url, "delete_204", "unconfirmed")
        if delete_204 not in DELETE_204:
            raise ProviderConfigError(f"{SETTING}: delete_204 must be unconfirmed or cancelled, "
                                      f"not {delete_204!r}")
        ttl_s = int(query_number(url, SETTING, "ttl_s", DEFAULT_TTL_S, 1))
        if settings.webpush_vapid_private_key is None:
            raise ProviderConfigError("web push needs ESTOP_WEBPUSH_VAPID_PRIVATE_KEY (the VAPID key "
                                      "the subscriptions were made for)")
        return cls(read_subscriptions(settings.webpush_subscriptions),
                   load_vapid(settings.webpush_vapid_private_key.get_secret_value()),
                   settings.webpush_vapid_subject, ttl_s, cancel, settings.provider_timeout_s,
                   DELETE_204[delete_204])

    # -- the contract --------------------------------------------------------------------------

    def submit(self, handoffs: Sequence[Handoff]) -> list[Submitted]:
        return list(self._pool.map(self._send, handoffs))

    def resume(self, accepted: Sequence[Accepted]) -> None:
        """Messages sent before a restart are tracked again until their TTL is over, counted
        from when they were handed over."""
        at_ms, now = now_ms(), time.monotonic()
        with self._lock:
            for a in accepted:
                left_s = max(0.0, self.ttl_s - (at_ms - a.handed_at_ms) / 1000)
                self._held[a.provider_id] = _Held(a.message_id,
                                                  self.subscriptions.get(a.recipient_id, {}),
                                                  now + left_s)

    def find(self, handoffs: Sequence[Handoff]) -> dict[str, str]:
        """A push service cannot be asked which messages it holds: one in doubt is sent again."""
        return {}

    def cancel(self, campaign_id: str, provider_ids: Mapping[str, str]) -> dict[str, CancelStatus]:
        items = list(provider_ids.items())
        return dict(zip(provider_ids, self._pool.map(self._withdraw, items), strict=True))

    def deliveries(self) -> list[Delivery]:
        now = time.monotonic()
        with self._lock:
            found, self._gone = self._gone, []
            for location, held in list(self._held.items()):
                if held.leaves_at <= now:
                    del self._held[location]
                    found.append(Delivery(held.message_id, location, True, now_ms(),
                                          "TTL over: the push service no longer holds it"))
        return found

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # -- requests ------------------------------------------------------------------------------

    @property
    def _session(self) -> requests.Session:
        return self._sessions.session

    def _send(self, handoff: Handoff) -> Submitted:
        subscription = self.subscriptions.get(handoff.recipient_id)
        if subscription is None:
            return Submitted(handoff.message_id, SubmitStatus.REFUSED,
                             error=f"no web push subscription for recipient {handoff.recipient_id}")
        data = json.dumps({"message_id": handoff.message_id, "campaign_id": handoff.campaign_id,
                           "body": handoff.payload})
        topic = topic_for(handoff.message_id)
        try:
            response = self._post(subscription, data, topic)
        except requests.ConnectionError as exc:
            return Submitted(handoff.message_id, SubmitStatus.REFUSED, error=f"unreachable: {exc}")
        except requests.RequestException as exc:
            return Submitted(handoff.message_id, SubmitStatus.UNKNOWN, error=str(exc))
        if response.status_code == 201:  # accepted, with or without a Location to delete it by
            provider_id = response.headers.get("Location") or f"{TOPIC_ID}{topic}"
            with self._lock:
                self._held[provider_id] = _Held(handoff.message_id, subscription,
                                                time.monotonic() + self.ttl_s)
            return Submitted(handoff.message_id, SubmitStatus.ACCEPTED, provider_id)
        return Submitted(handoff.message_id, SubmitStatus.REFUSED,
                         error=f"{response.status_code} {response.text[:200]}")

    def _post(self, subscription: Mapping[str, Any], data: str, topic: str) -> requests.Response:
        # The body is binary (RFC 8188); a service that reads bodies by their type (web-push-testing
        # does, as an Express app) sees none without this header, and refuses the message.
        headers = {"Topic": topic, "Urgency": "normal", "Content-Type": "application/octet-stream",
                   **self._vapid_headers(subscription["endpoint"])}
        pusher = WebPusher(dict(subscription), requests_session=self._session)
        response = pusher.send(data, headers=headers, ttl=self.ttl_s, timeout=self.timeout_s)
        assert isinstance(response, requests.Response)
        return response

    def _withdraw(self, item: tuple[str, str]) -> CancelStatus:
        message_id, provider_id = item
        with self._lock:
            held = self._held.pop(provider_id, None)
        try:
            if self.cancel_by == "topic":
                status = self._replace(message_id, held)
            elif provider_id.startswith(TOPIC_ID):  # accepted without a Location: nothing to delete
                status = 0
            else:
                status = self._session.delete(provider_id, timeout=self.timeout_s).status_code
        except requests.RequestException:
            status = 0
        if status == 204:  # no longer tracked: unconfirmed, its TTL is no proof of delivery either
            return self.deleted
        if status in (404, 410):
            self._left(message_id, provider_id, "left the push service before the stop")
            return CancelStatus.TOO_LATE
        if held is not None:  # the service could not say: its TTL decides, as for any message
            with self._lock:
                self._held[provider_id] = held
        return CancelStatus.UNKNOWN

    def _replace(self, message_id: str, held: _Held | None) -> int:
        """Replace by Topic: a service still storing the original drops it for the no-op; one that
        already delivered it delivers the no-op too. Its answer does not tell which, so this
        returns 0 (unknown) either way."""
        if held is not None:
            self._post(held.subscription, WITHDRAWN, topic_for(message_id))
        return 0

    def _left(self, message_id: str, location: str, why: str) -> None:
        with self._lock:
            self._gone.append(Delivery(message_id, location, True, now_ms(), why))

    def _vapid_headers(self, endpoint: str) -> dict[str, str]:
        """One VAPID token per push service origin (RFC 8292 aud), reused until near its expiry."""
        parts = urlsplit(endpoint)
        origin = f"{parts.scheme}://{parts.netloc}"
        now = time.time()
        with self._lock:
            cached = self._tokens.get(origin)
            if cached is not None and cached[0] - now > 3600:
                return cached[1]
            expiry = int(now) + VAPID_LIFETIME_S
            headers = dict(self.vapid.sign({"aud": origin, "exp": expiry, "sub": self.subject}))
            self._tokens[origin] = (expiry, headers)
        return headers


def read_subscriptions(path: Path | None) -> dict[str, Any]:
    if path is None:
        raise ProviderConfigError("web push needs ESTOP_WEBPUSH_SUBSCRIPTIONS (a JSON file: "
                                  "recipient_id -> {endpoint, keys: {p256dh, auth}})")
    try:
        directory = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ProviderConfigError(f"ESTOP_WEBPUSH_SUBSCRIPTIONS={path}: cannot read it: {exc}") from exc
    if not isinstance(directory, dict) or not all(
            isinstance(s, dict) and "endpoint" in s and {"p256dh", "auth"} <= set(s.get("keys", {}))
            for s in directory.values()):
        raise ProviderConfigError(f"ESTOP_WEBPUSH_SUBSCRIPTIONS={path}: each entry needs an endpoint "
                                  "and keys p256dh and auth")
    return directory

