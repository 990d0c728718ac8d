"""Mobile push through the FCM HTTP v1 API: ``fcm://HOST:PORT?ttl_s=60&rate=500`` (HTTPS;
``fcm+http://`` for the local stand-in), authenticated with the service account file
``ESTOP_PUSH_SERVICE_ACCOUNT`` (an RS256 JWT exchanged at its token_uri for an OAuth bearer token,
renewed before it expires).

FCM (like APNs) cannot recall a message it accepted, so this adapter's cancel capability is
``none`` and estop keeps messages in its own hands until just before delivery: handoffs are
paced to the provider's rate (``rate`` messages per second, the quota FCM grants the project)
and carry a short TTL (``android.ttl`` and ``apns-expiration``), and the dispatcher checks the
stop right before every slice it hands over. The exposure after a stop is at most the messages
of the slice being handed over when the stop arrived. An accepted message counts as delivered at
once: FCM keeps no receipts a sender can read.

Addressing: the recipient id is the device's registration token."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self
from urllib.parse import SplitResult

import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

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
from streams.providers.exceptions import ProviderConfigError, ProviderUnavailableError
from streams.providers.http import SessionPerThread
from streams.providers.urls import query_number
from streams.settings import Settings

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_TTL_S = 60
DEFAULT_RATE = 500.0
WORKERS = 8
SETTING = "ESTOP_PUSH_PROVIDER"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class ServiceAccount:
    """The OAuth 2.0 JWT-bearer flow of a Google service account, token cached until near expiry."""

    def __init__(self, info: Mapping[str, Any], timeout_s: float) -> None:
        self.project_id = str(info["project_id"])
        self.client_email = str(info["client_email"])
        self.token_uri = str(info["token_uri"])
        key = serialization.load_pem_private_key(str(info["private_key"]).encode(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ProviderConfigError("ESTOP_PUSH_SERVICE_ACCOUNT: private_key is not an RSA key")
        self._key = key
        self.timeout_s = timeout_s
        self._token = ""
        self._expires = 0.0
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: Path | None, timeout_s: float) -> ServiceAccount:
        if path is None:
            raise ProviderConfigError("mobile push over FCM needs ESTOP_PUSH_SERVICE_ACCOUNT (the "
                                      "service account JSON file of the Firebase project)")
        try:
            return cls(json.loads(path.read_text()), timeout_s)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ProviderConfigError(f"ESTOP_PUSH_SERVICE_ACCOUNT={path}: not a service account "
                                      f"file ({exc})") from exc

    def token(self, session: requests.Session, renew: bool = False) -> str:
        with self._lock:
            if renew or time.time() > self._expires - 60:
                self._token, self._expires = self._fetch(session)
            return self._token

    def _fetch(self, session: requests.Session) -> tuple[str, float]:
        now = int(time.time())
        header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
        claims = _b64url(json.dumps({"iss": self.client_email, "scope": SCOPE, "aud": self.token_uri,
                                     "iat": now, "exp": now + 3600}).encode())
        signature = self._key.sign(f"{header}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256())
        try:
            response = session.post(self.token_uri, timeout=self.timeout_s, data={
                "grant_type": GRANT, "assertion": f"{header}.{claims}.{_b64url(signature)}"})
        except requests.RequestException as exc:
            raise ProviderUnavailableError(f"token endpoint {self.token_uri} does not answer: {exc}") from exc
        if response.status_code != 200:
            raise ProviderConfigError(f"token endpoint {self.token_uri} refused the service account "
                                      f"{self.client_email}: {response.status_code} {response.text[:200]}")
        answer = response.json()
        return str(answer["access_token"]), now + float(answer.get("expires_in", 3600))


class FcmAdapter:
    channel = "push"
    cancel_capability = CancelCapability.NONE
    receipt_source = "none: FCM accepts a message for delivery and cannot recall it (accepted = sent)"

    def __init__(self, base_url: str, account: ServiceAccount, ttl_s: int, rate: float,
                 timeout_s: float) -> None:
        self.send_url = f"{base_url}/v1/projects/{account.project_id}/messages:send"
        self.account = account
        self.ttl_s = ttl_s
        self.rate = rate
        self.timeout_s = timeout_s
        self._accepted: list[Delivery] = []
        self._lock = threading.Lock()
        self._sessions = SessionPerThread()
        self._next_slot = time.monotonic()
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="fcm")
        self.account.token(self._session)  # fails at start for a wrong file or an unreachable FCM

    @classmethod
    def from_url(cls, settings: Settings, channel: str, url: SplitResult) -> Self:
        if not url.hostname or url.port is None:
            raise ProviderConfigError(f"{SETTING}: {url.geturl()!r} needs a host and a port, e.g. "
                                      "fcm://fcm.googleapis.com:443")
        ttl_s = int(query_number(url, SETTING, "ttl_s", DEFAULT_TTL_S, 0))
        rate = query_number(url, SETTING, "rate", DEFAULT_RATE, 0.001)
        scheme = "http" if url.scheme == "fcm+http" else "https"
        account = ServiceAccount.from_file(settings.push_service_account, settings.provider_timeout_s)
        return cls(f"{scheme}://{url.hostname}:{url.port}", account, ttl_s, rate,
                   settings.provider_timeout_s)

    # -- the contract --------------------------------------------------------------------------

    def submit(self, handoffs: Sequence[Handoff]) -> list[Submitted]:
        self._pace(len(handoffs))
        return list(self._pool.map(self._send, handoffs))

    def resume(self, accepted: Sequence[Accepted]) -> None:
        """An accepted message counts as delivered; one accepted before a restart whose delivery
        was not recorded yet is reported again."""
        with self._lock:
            self._accepted.extend(Delivery(a.message_id, a.provider_id, True, a.handed_at_ms,
                                           "accepted by FCM before a restart")
                                  for a in accepted)

    def find(self, handoffs: Sequence[Handoff]) -> dict[str, str]:
        """FCM cannot be asked about a message: one in doubt is sent again (at least once)."""
        return {}

    def cancel(self, campaign_id: str, provider_ids: Mapping[str, str]) -> dict[str, CancelStatus]:
        """FCM cannot recall a message; every accepted message was already counted delivered."""
        return dict.fromkeys(provider_ids, CancelStatus.TOO_LATE)

    def deliveries(self) -> list[Delivery]:
        with self._lock:
            found, self._accepted = self._accepted, []
        return found

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # -- requests ------------------------------------------------------------------------------

    def _pace(self, count: int) -> None:
        """Hand over no faster than the provider's rate: wait for this slice's turn."""
        now = time.monotonic()
        start = max(self._next_slot, now)
        self._next_slot = start + count / self.rate
        if start > now:
            time.sleep(start - now)

    @property
    def _session(self) -> requests.Session:
        return self._sessions.session

    def _send(self, handoff: Handoff) -> Submitted:
        body = {"message": {
            "token": handoff.recipient_id,
            "data": {"message_id": handoff.message_id, "campaign_id": handoff.campaign_id,
                     "body": handoff.payload},
            "android": {"ttl": f"{self.ttl_s}s"},
            "apns": {"headers": {"apns-expiration": str(int(time.time()) + self.ttl_s)}},
        }}
        try:
            response = self._post(body, renew=False)
            if response.status_code == 401:  # the token ran out early, or was revoked: once more
                response = self._post(body, renew=True)
        except (requests.ConnectionError, ProviderUnavailableError) as exc:
            return Submitted(handoff.message_id, SubmitStatus.REFUSED, error=f"unreachable: {exc}")
        except requests.RequestException as exc:
            return Submitted(handoff.message_id, SubmitStatus.UNKNOWN, error=str(exc))
        if response.status_code == 200:
            name = str(response.json()["name"])
            with self._lock:
                self._accepted.append(Delivery(handoff.message_id, name, True, now_ms(),
                                               "accepted by FCM (no recall)"))
            return Submitted(handoff.message_id, SubmitStatus.ACCEPTED, name)
        return Submitted(handoff.message_id, SubmitStatus.REFUSED,
                         error=f"{response.status_code} {response.text[:200]}")

    def _post(self, body: dict[str, Any], renew: bool) -> requests.Response:
        token = self.account.token(self._session, renew=renew)
        return self._session.post(self.send_url, json=body, timeout=self.timeout_s,
                                  headers={"Authorization": f"Bearer {token}"})
