"""A local stand-in Web Push service (RFC 8030) with the user agents of its subscribers.

The push service side: ``POST /wpush/{subscription}`` needs a ``TTL`` header, a VAPID
``Authorization: vapid t=JWT, k=KEY`` (RFC 8292: ES256 signature checked against ``k``, ``aud``
the service's origin, ``exp`` in the next 24 hours, a ``sub``; ``k`` must be the application
server key the subscription was made for) and an ``aes128gcm`` body (RFC 8291). A message is
stored and answered ``201 Created`` with its ``Location``; a stored message with the same
``Topic`` on that subscription is replaced; ``DELETE`` of the Location removes a message still
stored (``204``; ``404`` once it left or expired), or, built with ``allow_delete=False``, answers
``405`` as services that do not support deletion do. Stored messages expire after their TTL.

``quirks`` make it answer as real push services do where they depart from that: ``AUTOPUSH``
answers ``204`` to a DELETE of a message it already delivered, exactly as for one it deleted
(Mozilla's autopush); ``WEB_PUSH_TESTING`` answers ``201 Created`` without a ``Location`` (the
``web-push-testing`` server on npm), so nothing can be deleted.

The user agents: a subscriber is offline and connects every ``connect_every_s`` seconds (each at
its own phase), receives what is stored for it and decrypts it with ``http_ece`` using its own
keys; an arrival is counted only when it decrypts."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import http_ece
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from streams.clock import now_ms
from streams.lab.standins import Arrival, Arrivals, HttpStandIn

STORED, DELIVERED, REPLACED, DELETED, EXPIRED = "stored", "delivered", "replaced", "deleted", "expired"
TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
TICK_S = 0.25  # the user agents connect on a scale of seconds



def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class PushQuirks:
    """Where this push service answers as a real one does rather than as RFC 8030 reads."""

    delete_answers_204: bool = False  # 204 to a DELETE whatever became of the message
    location: bool = True  # False: 201 Created without a Location


SPEC = PushQuirks()
AUTOPUSH = PushQuirks(delete_answers_204=True)
WEB_PUSH_TESTING = PushQuirks(location=False)


@dataclass(slots=True)
class Subscriber:
    """A user agent's push subscription: its keys stay here; estop gets endpoint and public keys."""

    sub_id: str
    recipient_id: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    server_key: str  # the application server key (VAPID public key) it was made for
    next_connect: float

    @property
    def p256dh(self) -> str:
        return b64url(self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))


@dataclass(slots=True)
class PushMessage:
    message_id: str
    sub_id: str
    topic: str | None
    body: bytes
    expires_at: float
    state: str = STORED


class StandInPushService(HttpStandIn):
    name = "push service"

    def __init__(self, port: int = 0, connect_every_s: float = 2.0, allow_delete: bool = True,
                 host: str = "127.0.0.1", quirks: PushQuirks = SPEC) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self.connect_every_s = connect_every_s
        self.allow_delete = allow_delete
        self.quirks = quirks
        self.subscribers: dict[str, Subscriber] = {}
        self.messages: dict[str, PushMessage] = {}
        self.arrivals = Arrivals()
        self.undecryptable = 0
        self.refused: dict[int, int] = {}  # HTTP status -> count of refused requests
        self._stored_by_topic: dict[tuple[str, str], str] = {}
        self._stored: dict[str, PushMessage] = {}  # what still waits for its user agent
        self._ticker: asyncio.Task[None] | None = None
        self._random = random.Random()

    # -- life ----------------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/wpush/{sub}", self._push)
        app.router.add_delete("/wmsg/{message}", self._delete)

    async def _start(self) -> None:
        await super()._start()
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        await super()._stop()

    def subscribe(self, recipient_ids: list[str], server_key: str, directory: Path) -> None:
        """Make a subscription per recipient (as each browser would for the application server
        key ``server_key``) and write the subscription directory estop reads:
        recipient_id -> {endpoint, keys: {p256dh, auth}}."""
        def make(service: StandInPushService) -> dict[str, Any]:
            entries: dict[str, Any] = {}
            for recipient_id in recipient_ids:
                sub = Subscriber(b64url(os.urandom(12)), recipient_id,
                                 ec.generate_private_key(ec.SECP256R1()), os.urandom(16), server_key,
                                 time.monotonic() + service._random.uniform(0, service.connect_every_s))
                service.subscribers[sub.sub_id] = sub
                entries[recipient_id] = {"endpoint": f"{service.origin}/wpush/{sub.sub_id}",
                                         "keys": {"p256dh": sub.p256dh, "auth": b64url(sub.auth)}}
            return entries
        entries = self.query(make)
        directory.parent.mkdir(parents=True, exist_ok=True)
        directory.write_text(json.dumps(entries))

    def states(self, contains: str) -> dict[str, int]:
        """Messages whose decrypted text contains ``contains``, by state (stored ones are counted
        by decrypting them as their user agent would)."""
        def count(service: StandInPushService) -> dict[str, int]:
            found: dict[str, int] = {}
            for message in service.messages.values():
                if contains in service._decrypt(message):
                    found[message.state] = found.get(message.state, 0) + 1
            return found
        result: dict[str, int] = self.query(count)
        return result

    def connect_all(self) -> None:
        """Every subscriber connects now (receives what is stored for it)."""
        def connect(service: StandInPushService) -> None:
            for sub in service.subscribers.values():
                sub.next_connect = 0.0
            service._connect_due(time.monotonic())
        self.query(connect)

    # -- the push service ----------------------------------------------------------------------

    async def _push(self, request: web.Request) -> web.Response:
        sub = self.subscribers.get(request.match_info["sub"])
        if sub is None:
            return self._refuse(404, "no such subscription")
        ttl_header = request.headers.get("TTL", "")
        if not ttl_header.isdigit():
            return self._refuse(400, "a TTL header (seconds) is required")
        topic = request.headers.get("Topic")
        if topic is not None and not TOPIC.match(topic):
            return self._refuse(400, "Topic must be at most 32 characters of the base64url alphabet")
        problem = self._check_vapid(request.headers.get("Authorization", ""), sub)
        if problem is not None:
            return self._refuse(*problem)
        body = await request.read()
        if body and request.headers.get("Content-Encoding", "").lower() != "aes128gcm":
            return self._refuse(415, "payloads must be encrypted with Content-Encoding: aes128gcm")
        now = time.monotonic()
        message = PushMessage(b64url(os.urandom(12)), sub.sub_id, topic, body, now + int(ttl_header))
        if sub.next_connect <= now:  # offline since its last connection: the next one is ahead
            periods = (now - sub.next_connect) // self.connect_every_s + 1
            sub.next_connect += periods * self.connect_every_s
        if topic is not None:
            replaced = self._stored_by_topic.get((sub.sub_id, topic))
            if replaced is not None and self.messages[replaced].state == STORED:
                self.messages[replaced].state = REPLACED
                del self._stored[replaced]
            self._stored_by_topic[(sub.sub_id, topic)] = message.message_id
        self.messages[message.message_id] = message
        if int(ttl_header) == 0:  # the user agent is not connected now: RFC 8030 5.2
            message.state = EXPIRED
        else:
            self._stored[message.message_id] = message
        headers = {"TTL": ttl_header}
        if self.quirks.location:
            headers["Location"] = f"{self.origin}/wmsg/{message.message_id}"
        return web.Response(status=201, headers=headers)

    async def _delete(self, request: web.Request) -> web.Response:
        if not self.allow_delete:
            return self._refuse(405, "this push service does not delete messages")
        message = self.messages.get(request.match_info["message"])
        if message is not None and message.state != STORED and self.quirks.delete_answers_204:
            return web.Response(status=204)  # as for a deletion: the sender cannot tell
        if message is None or message.state != STORED:
            return web.Response(status=404, text="no such message stored")
        message.state = DELETED
        del self._stored[message.message_id]
        return web.Response(status=204)

    def _refuse(self, status: int, why: str) -> web.Response:
        self.refused[status] = self.refused.get(status, 0) + 1
        return web.Response(status=status, text=why)

    def _check_vapid(self, header: str, sub: Subscriber) -> tuple[int, str] | None:
        """RFC 8292: None when the VAPID authorization holds, else (status, why)."""
        if not header.lower().startswith("vapid "):
            return 401, "a VAPID Authorization (vapid t=..., k=...) is required"
        params = dict(p.strip().split("=", 1) for p in header[6:].split(",") if "=" in p)
        token, key = params.get("t", ""), params.get("k", "")
        if key != sub.server_key:
            return 403, "k is not the application server key of this subscription"
        try:
            signing_input, _, signature = token.rpartition(".")
            claims = json.loads(unb64url(signing_input.split(".")[1]))
            raw = unb64url(signature)
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(key))
            public.verify(encode_dss_signature(int.from_bytes(raw[:32], "big"),
                                               int.from_bytes(raw[32:], "big")),
                          signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        except (ValueError, IndexError, InvalidSignature, binascii.Error, json.JSONDecodeError):
            return 403, "the VAPID token does not verify"
        now = time.time()
        if claims.get("aud") != self.origin:
            return 403, f"aud must be {self.origin}"
        if not isinstance(claims.get("exp"), int) or not now < claims["exp"] <= now + 86400:
            return 403, "exp must be within the next 24 hours"
        if not str(claims.get("sub", "")).startswith(("mailto:", "https:")):
            return 403, "sub must be a mailto: or https: contact"
        return None

    # -- the user agents -----------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            self._connect_due(time.monotonic())
            await asyncio.sleep(TICK_S)

    def _connect_due(self, now: float) -> None:
        waiting: dict[str, list[PushMessage]] = {}
        for message in list(self._stored.values()):
            if message.expires_at <= now:
                message.state = EXPIRED
                del self._stored[message.message_id]
            else:
                waiting.setdefault(message.sub_id, []).append(message)
        for sub_id, messages in waiting.items():
            sub = self.subscribers[sub_id]
            if sub.next_connect > now:
                continue
            sub.next_connect = now + self.connect_every_s
            for message in messages:
                message.state = DELIVERED
                del self._stored[message.message_id]
                text = self._decrypt(message)
                if text:
                    self.arrivals.add(Arrival(message.message_id, sub.recipient_id, text, now_ms()))
                else:
                    self.undecryptable += 1

    def _decrypt(self, message: PushMessage) -> str:
        sub = self.subscribers[message.sub_id]
        try:
            plain: bytes = http_ece.decrypt(message.body, private_key=sub.private_key,
                                            auth_secret=sub.auth, version="aes128gcm")
        except Exception:  # http_ece raises bare Exceptions for a body that does not decrypt
            return ""
        return plain.decode("utf-8", "replace")
