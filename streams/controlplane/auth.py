"""Who may use the HTTP API: bearer tokens with roles, checked by one aiohttp middleware before
any handler runs, against the access each route declares (``streams.controlplane.web.ROUTES``).

Roles are ordered, each including the ones before it: ``viewer`` reads, ``operator`` also stops
campaigns, ``admin`` also uses the kill switch. Tokens come from ``ESTOP_HTTP_TOKENS``
(``name:role:token`` entries, a ``SecretStr``: never logged or echoed); only their SHA-256 is
kept in memory. Without tokens the API asks nobody (the embedded default) and every request acts
as ``anonymous`` with every role (only when asked for, on loopback: ``boundary.check_open``).

Unauthenticated: 401 (with ``WWW-Authenticate: Bearer``); authenticated without the route's
role: 403. Either way the handler never runs, so nothing is written, and an attempt on an audited
route (a stop, the kill switch) is recorded in the audit trail by ``on_refused``.

A route's ``access`` maps to a role in ``ACCESS_ROLES`` (refused attempts on the accesses in
``AUDITED`` are audited); a route missing from the table needs ``viewer`` to read (GET, HEAD) and
``admin`` for anything else, so a forgotten entry fails closed."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from streams.security import audit
from streams.security.exceptions import CredentialsError
from streams.settings import Settings

log = logging.getLogger(__name__)

VIEWER, OPERATOR, ADMIN = "viewer", "operator", "admin"
ROLES = (VIEWER, OPERATOR, ADMIN)  # each includes the ones before it
PUBLIC = None  # no authentication at all (health checks, Prometheus scrapes)

# A route's access -> the least role it needs.
ACCESS_ROLES: dict[str, str | None] = {
    "public": PUBLIC,
    "read": VIEWER,
    "export": VIEWER,
    "audit": OPERATOR,
    "stop": OPERATOR,
    "relaunch": OPERATOR,
    "release": OPERATOR,  # the rest of a canary launch
    "stop-all": ADMIN,
    "guardrail-rules": OPERATOR,  # a rule can stop campaigns
    "feedback": OPERATOR,  # feedback can trip a rule
}
# Accesses whose refused attempts are audited -> the audit action.
AUDITED: dict[str, str] = {"stop": audit.STOP, "stop-all": audit.KILL_SWITCH,
                           "relaunch": audit.RELAUNCH, "export": audit.EXPORT,
                           "release": audit.RELEASE}

IDENTITY_KEY = "estop.identity"


@dataclass(frozen=True)
class Identity:
    """Who made a request, as authenticated; ``source`` is the client's address."""

    name: str
    role: str
    source: str
    authenticated: bool = True

    def may(self, role: str | None) -> bool:
        return role is None or ROLES.index(self.role) >= ROLES.index(role)


# Called for a refused request on an audited route: (action, identity or None, request, status, why).
OnRefused = Callable[[str, Identity | None, web.Request, int, str], Awaitable[None]]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_tokens(settings: Settings) -> dict[bytes, tuple[str, str]]:
    """SHA-256 of each token -> (user name, role); empty when authentication is off."""
    if settings.http_tokens is None or not settings.http_tokens.get_secret_value().strip():
        return {}
    tokens: dict[bytes, tuple[str, str]] = {}
    for number, entry in enumerate(settings.http_tokens.get_secret_value().split(","), start=1):
        name, _, rest = entry.strip().partition(":")
        role, _, token = rest.partition(":")
        if not name or role not in ROLES or len(token) < 16:
            # Never quote the entry: it holds a token.
            raise CredentialsError(
                f"ESTOP_HTTP_TOKENS entry {number} is not name:role:token with a role of "
                f"{', '.join(ROLES)} and a token of at least 16 characters")
        tokens[_digest(token)] = (name, role)
    return tokens


# (method, route path as registered) -> the route's access.
Routes = dict[tuple[str, str], str]


def route_access(routes: Routes, method: str, pattern: str | None) -> str | None:
    """The access a request needs; None for a route nobody listed."""
    return routes.get((method, pattern)) if pattern is not None else None


def route_role(routes: Routes, method: str, pattern: str | None) -> str | None:
    access = route_access(routes, method, pattern)
    if access is not None:
        return ACCESS_ROLES[access]
    return VIEWER if method in ("GET", "HEAD") else ADMIN


def identity(request: Any) -> Identity:
    """The authenticated identity of a request that reached its handler (an aiohttp request, which
    Faust views receive typed as Faust's own): the stop's ``requested_by`` and the audit's actor
    come from here, never from the request body."""
    who: Identity = request[IDENTITY_KEY]
    return who


def actor(who: Identity) -> audit.Actor:
    """An HTTP caller as the audit records it (no role when the API asks nobody)."""
    return audit.Actor(who.name, "http", who.source, who.role if who.authenticated else None)


def source_of(request: Any) -> str:
    """The client's address (an aiohttp request, as ``identity``)."""
    return str(request.remote or "unknown")


def middleware(settings: Settings, routes: Routes, on_refused: OnRefused) -> Callable[..., Any]:
    tokens = parse_tokens(settings)
    unknown = sorted(set(routes.values()) - set(ACCESS_ROLES))
    if unknown:
        raise ValueError(f"routes declare accesses without a role: {', '.join(unknown)}")
    if not tokens:
        log.warning("the HTTP API asks nobody (ESTOP_HTTP_OPEN, on loopback): set "
                    "ESTOP_HTTP_TOKENS to require tokens and roles")

    @web.middleware
    async def authenticate(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
        resource = request.match_info.route.resource
        pattern = resource.canonical if resource is not None else None
        method = "GET" if request.method == "HEAD" else request.method
        needed = route_role(routes, method, pattern)
        action = AUDITED.get(route_access(routes, method, pattern) or "")
        if not tokens:
            request[IDENTITY_KEY] = Identity("anonymous", ADMIN, source_of(request), authenticated=False)
            return await handler(request)
        if needed is PUBLIC:
            return await handler(request)
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        found = None
        if scheme.lower() == "bearer" and presented.strip():
            digest = _digest(presented.strip())
            found = next((who for known, who in tokens.items() if hmac.compare_digest(known, digest)),
                         None)
        if found is None:
            why = ("no bearer token (Authorization: Bearer <token>)" if not presented.strip()
                   else "unknown token")
            if action:
                await on_refused(action, None, request, 401, why)
            return _refusal(401, f"authentication required: {why}",
                            {"WWW-Authenticate": 'Bearer realm="estop"'})
        who = Identity(found[0], found[1], source_of(request))
        if not who.may(needed):
            why = (f"user {who.name!r} (role {who.role}) may not {request.method} {pattern}: "
                   f"needs role {needed}")
            if action:
                await on_refused(action, who, request, 403, why)
            return _refusal(403, why)
        request[IDENTITY_KEY] = who
        return await handler(request)

    return authenticate


def _refusal(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=json.dumps({"error": message}),
                        content_type="application/json", headers=headers)
