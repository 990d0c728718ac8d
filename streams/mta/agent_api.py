"""The MTA agent's HTTP API, both sides: the server the agent runs and the client the smtp://
adapter uses. JSON in and out; every route but the health check needs
``Authorization: Bearer <token>`` (``ESTOP_MTA_AGENT_TOKEN``, or the token file `estop mta start`
writes into the MTA's folder).

    POST /v1/find    {"message_ids": [id, ...]}
                     -> {"queued": {id: queue_id}}: which of them Postfix queued
    POST /v1/cancel  {"messages": {id: queue_id, ...}}
                     -> {"results": {id: "cancelled" | "too_late" | "unknown"}}
    GET  /v1/health  -> {"status": "ok", "postfix": ..., "shipped": ..., "kafka_error": ...}

Errors are one line, ``{"error": "..."}``: 400 (not JSON, or not the shape above), 401 (no token
or a wrong one), 404, 405, 413 (a body over MAX_BODY_BYTES: the client sends large requests in
parts), 503 (Postfix did not do what was asked). The server binds to ESTOP_MTA_AGENT_HOST
(loopback unless set) and ESTOP_MTA_AGENT_PORT."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import signal
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import requests
from aiohttp import web
from pydantic import SecretStr

from streams.mta.agent import MtaAgent, ensure_token
from streams.mta.exceptions import (
    AgentRefusedError,
    AgentUnavailableError,
    BadRequestError,
    MtaError,
)
from streams.providers.base import CancelStatus
from streams.settings import Settings

log = logging.getLogger(__name__)

FIND, CANCEL, HEALTH = "/v1/find", "/v1/cancel", "/v1/health"
MAX_BODY_BYTES = 4 << 20
# A client's request stays well under the cap: at most this many messages and bytes each.
PART_ITEMS, PART_BYTES = 20_000, 1 << 20
MESSAGE_ID = re.compile(r"^[^\s\x00-\x1f\x7f]{1,1000}$")
QUEUE_ID = re.compile(r"^[0-9A-Za-z]{1,64}$")  # also what keeps postsuper's stdin one id a line
CANCEL_RETRIES = 3  # a cancel asked again is answered the same (deleted mail stays cancelled)
RETRY_BACKOFF_S = 1.0
CANCEL_S_PER_1000 = 10.0  # on top of ESTOP_PROVIDER_TIMEOUT_S, for the answer to a large cancel

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _error(status: int, text: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": text}, status=status, headers=headers)


# -- server ----------------------------------------------------------------------------------------


def build_app(agent: MtaAgent, token: SecretStr) -> web.Application:
    expected = _digest(token.get_secret_value())

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.path != HEALTH:
                scheme, _, given = request.headers.get("Authorization", "").partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(_digest(given.strip()), expected):
                    log.warning("refused %s %s from %s: no token or a wrong one", request.method,
                                request.path, request.remote)
                    return _error(401, "missing or wrong bearer token (Authorization: Bearer "
                                       "<ESTOP_MTA_AGENT_TOKEN>)",
                                  {"WWW-Authenticate": 'Bearer realm="estop-mta-agent"'})
            if (request.content_length or 0) > MAX_BODY_BYTES:
                raise web.HTTPRequestEntityTooLarge(MAX_BODY_BYTES, request.content_length or 0)
            return await handler(request)
        except BadRequestError as exc:
            return _error(400, str(exc))
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"request body over {MAX_BODY_BYTES:,} bytes: send it in parts")
        except web.HTTPException as exc:
            return _error(exc.status, exc.reason)
        except MtaError as exc:
            log.warning("%s %s failed: %s", request.method, request.path, exc)
            return _error(503, str(exc))

    async def find(request: web.Request) -> web.Response:
        ids = (await _body(request)).get("message_ids")
        if not isinstance(ids, list) or not all(isinstance(m, str) and MESSAGE_ID.match(m) for m in ids):
            raise BadRequestError("message_ids must be a list of message ids (strings of 1 to 1000 "
                             "characters, no spaces or control characters)")
        return web.json_response({"queued": await asyncio.to_thread(agent.find, ids)})

    async def cancel(request: web.Request) -> web.Response:
        messages = (await _body(request)).get("messages")
        if not isinstance(messages, dict) or not all(
                isinstance(q, str) and MESSAGE_ID.match(m) and QUEUE_ID.match(q)
                for m, q in messages.items()):
            raise BadRequestError("messages must map message ids (1 to 1000 characters, no spaces or "
                             "control characters) to Postfix queue ids (letters and digits)")
        results = await asyncio.to_thread(agent.cancel, messages)
        return web.json_response({"results": {m: s.value for m, s in results.items()}})

    async def health(_request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(agent.health))

    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[guard])
    app.router.add_post(FIND, find)
    app.router.add_post(CANCEL, cancel)
    app.router.add_get(HEALTH, health)
    return app


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequestError("the body must be a JSON object")
    return body


async def serve(agent: MtaAgent, token: SecretStr, settings: Settings,
                announce: Callable[[str], None]) -> None:
    """Take the port, start the agent, serve the API until SIGTERM or SIGINT, stop the agent."""
    runner = web.AppRunner(build_app(agent, token), access_log=None)
    await runner.setup()
    host, port = settings.mta_agent_host, settings.mta_agent_port
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise MtaError(f"the MTA agent cannot listen on {host}:{port} ({exc.strerror}): set "
                       "ESTOP_MTA_AGENT_PORT (or ESTOP_MTA_AGENT_HOST)") from exc
    try:
        agent.start()
    except MtaError:
        await runner.cleanup()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    announce(f"ready mta-agent at http://{host}:{port}: Postfix's log {agent.instance.log_path} "
             f"-> {agent.topic} at {settings.bootstrap_servers}")
    await stop.wait()
    announce("mta-agent stopping")
    await runner.cleanup()
    await asyncio.to_thread(agent.stop)


def run_agent(settings: Settings, announce: Callable[[str], None]) -> int:
    """`estop mta agent`: follow and ship Postfix's log, serve the API; 0 after SIGTERM."""
    agent = MtaAgent(settings)  # first: no token is written beside a folder without Postfix
    asyncio.run(serve(agent, ensure_token(settings), settings, announce))
    return 0


# -- client ----------------------------------------------------------------------------------------


class AgentClient:
    """What a dispatcher asks the agent. Not safe for concurrent calls (an adapter is called one
    call at a time)."""

    def __init__(self, url: str, token: SecretStr, timeout_s: float) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {token.get_secret_value()}"
        self._session.headers["Content-Type"] = "application/json"

    def check(self) -> None:
        """The agent answers and takes the token (and Postfix's log advances: a find syncs it)."""
        self._post(FIND, {"message_ids": []}, self.timeout_s)

    def find(self, message_ids: Sequence[str]) -> dict[str, str]:
        """Which of these messages Postfix queued: message id -> queue id."""
        queued: dict[str, str] = {}
        for part in _parts(message_ids, len):
            queued.update(self._post(FIND, {"message_ids": part}, self.timeout_s)["queued"])
        return queued

    def cancel(self, provider_ids: Mapping[str, str]) -> dict[str, CancelStatus]:
        """message id -> what became of it; UNKNOWN for a part the agent did not answer."""
        answers = dict.fromkeys(provider_ids, CancelStatus.UNKNOWN)
        for part in _parts(list(provider_ids.items()), lambda item: len(item[0]) + len(item[1])):
            body = {"messages": dict(part)}
            timeout_s = self.timeout_s + CANCEL_S_PER_1000 * len(part) / 1000
            for attempt in range(CANCEL_RETRIES + 1):
                try:
                    results = self._post(CANCEL, body, timeout_s)["results"]
                except AgentRefusedError as exc:
                    log.warning("cancel of %d messages unconfirmed: %s", len(part), exc)
                    break
                except AgentUnavailableError as exc:
                    if attempt == CANCEL_RETRIES:
                        log.warning("cancel of %d messages unconfirmed: %s", len(part), exc)
                    else:
                        time.sleep(RETRY_BACKOFF_S * 2 ** attempt)
                    continue
                answers.update((m, CancelStatus(s)) for m, s in results.items() if m in answers)
                break
        return answers

    def close(self) -> None:
        self._session.close()

    def _post(self, path: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        try:
            response = self._session.post(f"{self.url}{path}", data=json.dumps(body),
                                          timeout=(self.timeout_s, timeout_s))
        except requests.RequestException as exc:
            raise AgentUnavailableError(f"the MTA agent at {self.url} does not answer ({exc})") from exc
        if response.status_code == 401:
            raise AgentRefusedError(f"the MTA agent at {self.url} refused the token: set "
                                    "ESTOP_MTA_AGENT_TOKEN to the one in <mta folder>/agent/token.env "
                                    "on the MTA's host")
        try:
            answer: dict[str, Any] = response.json()
        except ValueError:
            answer = {"error": response.text[:200]}
        if response.status_code != 200:
            raise AgentUnavailableError(f"the MTA agent at {self.url} answered {path} with "
                                        f"{response.status_code}: {answer.get('error')}")
        return answer


def _parts(items: Sequence[T], size: Callable[[T], int]) -> Iterator[list[T]]:
    """``items`` in consecutive parts of at most PART_ITEMS items and about PART_BYTES bytes."""
    part: list[T] = []
    used = 0
    for item in items:
        cost = size(item) + 8  # quotes, separators
        if part and (len(part) == PART_ITEMS or used + cost > PART_BYTES):
            yield part
            part, used = [], 0
        part.append(item)
        used += cost
    if part:
        yield part
