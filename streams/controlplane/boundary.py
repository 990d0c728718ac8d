"""The control plane's HTTP boundary, checked before routes and tokens: who the service answers
for, how large a request may be, what every answer carries, HTTPS, and when it may run without
tokens.

* **Host allowlist.** A browser sends the name it resolved in ``Host``; a page of another site
  whose name it points at this service's address (DNS rebinding) sends that site's name. Only
  the bound address, ``ESTOP_CONTROL_ALLOWED_HOSTS`` and, on loopback, the loopback names are
  answered; anything else gets 421 (Misdirected Request), before any handler runs. ``/health``
  and ``/metrics`` answer whatever the name (probes and scrapers use addresses; they hold no
  campaign data).
* **Size.** A request body is refused above ``MAX_BODY`` with 413: by its declared length before
  a byte is read, and while reading (``read_body``) when it declares none.
* **Answers** carry ``X-Content-Type-Options: nosniff`` and ``Cache-Control: no-store``: a data
  answer is never sniffed into markup or kept by a cache.
* **HTTPS** with ``ESTOP_CONTROL_TLS_CERT`` and ``ESTOP_CONTROL_TLS_KEY``.
* **Tokens.** The API needs ``ESTOP_HTTP_TOKENS``; it asks nobody only when
  ``ESTOP_HTTP_OPEN=true`` and it listens on a loopback address (``check_open``)."""

from __future__ import annotations

import ipaddress
import json
import ssl
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from streams.controlplane.auth import AUDITED, OnRefused, Routes, route_access
from streams.controlplane.exceptions import BodyTooLargeError
from streams.security.exceptions import CredentialsError
from streams.settings import Settings

MAX_BODY = 64 * 1024  # a stop request is a few hundred bytes
ANY_HOST = frozenset({"/health", "/metrics"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
SECURE_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(settings: Settings) -> frozenset[str]:
    """The names the API answers for (lower case, without port)."""
    names = {settings.control_host.strip("[]").lower()}
    names |= {h.strip().lower() for h in settings.control_allowed_hosts.split(",") if h.strip()}
    if is_loopback(settings.control_host):
        names |= LOOPBACK_NAMES
    return frozenset(names)


def hostname(header: str | None) -> str | None:
    """The host name of a ``Host`` header (``name``, ``name:port``, ``[v6]:port``)."""
    if not header:
        return None
    try:
        return urlsplit(f"//{header}").hostname
    except ValueError:
        return None


def check_open(settings: Settings) -> None:
    """Refuse to serve an API that asks nobody unless that was asked for, on loopback."""
    tokens = settings.http_tokens
    if tokens is not None and not tokens.get_secret_value().strip():
        raise CredentialsError("ESTOP_HTTP_TOKENS is set but lists no token: give name:role:token "
                               "entries (`estop security init` writes them), or unset it")
    if tokens is not None:
        return
    if not settings.http_open:
        raise CredentialsError(
            "the HTTP API needs tokens: set ESTOP_HTTP_TOKENS (`estop security init` writes them "
            "to .data/security/http-tokens.env), or ESTOP_HTTP_OPEN=true for an API that asks "
            "nobody, on a loopback address only")
    if not is_loopback(settings.control_host):
        raise CredentialsError(
            f"ESTOP_HTTP_OPEN=true serves an API that asks nobody: only on a loopback address, "
            f"not on {settings.control_host!r} (ESTOP_CONTROL_HOST); set ESTOP_HTTP_TOKENS instead")


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The HTTPS context of the API, or None for plain HTTP; both files or neither."""
    cert, key = settings.control_tls_cert, settings.control_tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise CredentialsError("HTTPS needs both ESTOP_CONTROL_TLS_CERT and ESTOP_CONTROL_TLS_KEY")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise CredentialsError(f"cannot use {cert} and {key} for HTTPS: {exc}") from exc
    return context


async def read_body(request: Any) -> bytes:
    """The request body, read up to ``MAX_BODY``; raises BodyTooLargeError past it (an aiohttp
    request: Faust's own read takes everything)."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BodyTooLargeError
    body = bytearray()
    while chunk := await request.content.read(MAX_BODY + 1 - len(body)):
        body += chunk
        if len(body) > MAX_BODY:
            raise BodyTooLargeError
    return bytes(body)


def middleware(settings: Settings, routes: Routes, on_refused: OnRefused) -> Callable[..., Any]:
    """Host allowlist (421), a declared body too large (413), the answers' headers."""
    allowed = allowed_hosts(settings)

    @web.middleware
    async def boundary(request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
        host = hostname(request.headers.get("Host"))
        refused: tuple[int, str] | None = None
        if (host is None or host.lower() not in allowed) and request.path not in ANY_HOST:
            refused = 421, (f"this service does not answer for host {host or '(none)'!r}; its "
                            "names are ESTOP_CONTROL_HOST and ESTOP_CONTROL_ALLOWED_HOSTS")
        elif request.content_length is not None and request.content_length > MAX_BODY:
            refused = 413, (f"the request body of {request.content_length:,} bytes is larger than "
                            f"the {MAX_BODY:,} bytes any request needs")
        if refused is not None:
            resource = request.match_info.route.resource
            method = "GET" if request.method == "HEAD" else request.method
            action = AUDITED.get(route_access(routes, method, resource.canonical if resource else None)
                                 or "")
            if action:
                await on_refused(action, None, request, *refused)
            return web.Response(status=refused[0], text=json.dumps({"error": refused[1]}),
                                content_type="application/json", headers=SECURE_HEADERS)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(SECURE_HEADERS)
            raise
        for name, value in SECURE_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    return boundary
