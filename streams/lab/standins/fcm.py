"""A local stand-in for Firebase Cloud Messaging's HTTP v1 API and the OAuth 2.0 token endpoint
in front of it.

``service_account(path)`` writes a service account file like the one the Firebase console hands
out (project_id, client_email, an RSA private_key, token_uri pointing here). ``POST /token``
takes the JWT-bearer grant (RFC 7523: an RS256 assertion signed with that key, iss the client
email, aud the token_uri, the firebase.messaging scope) and returns a bearer access token.
``POST /v1/projects/{project}/messages:send`` needs that token, takes ``{"message": {...}}``
with exactly one target (token, topic or condition) and an optional ``android.ttl`` such as
``"60s"``, and answers ``{"name": "projects/{project}/messages/{id}"}``; past ``max_rate``
messages per second it answers 429 RESOURCE_EXHAUSTED with Retry-After, as FCM does. FCM cannot
recall a message, so an accepted message counts as delivered at once."""

from __future__ import annotations

import base64
import json
import os
import re
import time
from pathlib import Path

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from streams.clock import now_ms
from streams.lab.standins import Arrival, Arrivals, HttpStandIn

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_LIFETIME_S = 3600
TTL = re.compile(r"^\d+(\.\d{1,9})?s$")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"code": status, "message": message, "status": code}}
    return web.json_response(body, status=status, headers=headers)


class StandInFcm(HttpStandIn):
    name = "FCM"

    def __init__(self, port: int = 0, project: str = "estop-demo", max_rate: float | None = None,
                 host: str = "127.0.0.1") -> None:
        super().__init__()
        self.host = host
        self.port = port
        self.project = project
        self.max_rate = max_rate
        self.client_email = f"estop-sender@{project}.iam.gserviceaccount.com"
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._tokens: dict[str, float] = {}  # access token -> expiry
        self.arrivals = Arrivals()
        self.refused: dict[str, int] = {}  # FCM error status -> count
        self.tokens_issued = 0
        self.requests: list[tuple[str, str, object]] = []  # (method, path, JSON body) of each send
        self._ids = 0
        self._window_start = 0.0
        self._window_count = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/token", self._token)
        app.router.add_post("/v1/projects/{project}/messages:send", self._send)

    def service_account(self, path: Path) -> Path:
        """Write the service account file a sender authenticates with (as the console gives it)."""
        pem = self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()).decode()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "type": "service_account", "project_id": self.project, "private_key_id": "standin",
            "private_key": pem, "client_email": self.client_email,
            "token_uri": f"{self.origin}/token"}))
        path.chmod(0o600)
        return path

    # -- OAuth ---------------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != GRANT:
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        try:
            header_b64, claims_b64, signature = str(form.get("assertion", "")).split(".")
            header = json.loads(_unb64url(header_b64))
            claims = json.loads(_unb64url(claims_b64))
            self._key.public_key().verify(_unb64url(signature), f"{header_b64}.{claims_b64}".encode(),
                                          padding.PKCS1v15(), hashes.SHA256())
        except (ValueError, InvalidSignature, json.JSONDecodeError):
            return web.json_response({"error": "invalid_grant",
                                      "error_description": "Invalid JWT Signature."}, status=400)
        now = time.time()
        if (header.get("alg") != "RS256" or claims.get("iss") != self.client_email
                or claims.get("aud") != f"{self.origin}/token"
                or SCOPE not in str(claims.get("scope", "")).split()
                or not claims.get("iat", 0) - 300 <= now < claims.get("exp", 0)
                or claims["exp"] - claims["iat"] > TOKEN_LIFETIME_S):
            return web.json_response({"error": "invalid_grant", "error_description": "Invalid JWT claims."},
                                     status=400)
        token = base64.urlsafe_b64encode(os.urandom(24)).decode()
        self._tokens[token] = now + TOKEN_LIFETIME_S
        self.tokens_issued += 1
        return web.json_response({"access_token": token, "expires_in": TOKEN_LIFETIME_S - 1,
                                  "token_type": "Bearer"})

    # -- messages:send -------------------------------------------------------------------------

    async def _send(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        expiry = self._tokens.get(auth.removeprefix("Bearer ")) if auth.startswith("Bearer ") else None
        if expiry is None or expiry < time.time():
            return self._refuse(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        if request.match_info["project"] != self.project:
            return self._refuse(403, "PERMISSION_DENIED", "The caller does not have permission")
        try:
            body = await request.json()
            self.requests.append((request.method, request.path, body))
            message = body["message"]
            targets = [k for k in ("token", "topic", "condition") if message.get(k)]
        except (ValueError, KeyError, TypeError, AttributeError):
            return self._refuse(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        if len(targets) != 1:
            return self._refuse(400, "INVALID_ARGUMENT", "Exactly one of token, topic or condition")
        ttl = (message.get("android") or {}).get("ttl")
        if ttl is not None and not TTL.match(str(ttl)):
            return self._refuse(400, "INVALID_ARGUMENT", f"Invalid value at 'message.android.ttl': {ttl}")
        if self._throttled():
            return self._refuse(429, "RESOURCE_EXHAUSTED", "Quota exceeded", {"Retry-After": "1"})
        self._ids += 1
        name = f"projects/{self.project}/messages/0:{now_ms()}%{self._ids:x}"
        self.arrivals.add(Arrival(name, str(message[targets[0]]), json.dumps(message.get("data", {})),
                                  now_ms()))
        return web.json_response({"name": name})

    def _refuse(self, status: int, code: str, message: str,
                headers: dict[str, str] | None = None) -> web.Response:
        self.refused[code] = self.refused.get(code, 0) + 1
        return _error(status, code, message, headers)

    def _throttled(self) -> bool:
        if self.max_rate is None:
            return False
        now = time.monotonic()
        if now - self._window_start >= 1.0:
            self._window_start, self._window_count = now, 0
        self._window_count += 1
        return self._window_count > self.max_rate

