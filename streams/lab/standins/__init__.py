"""Local stand-ins for the providers estop cannot reach from a test or a demo machine: an SMSC
(SMPP 3.4), a Web Push service (RFC 8030/8291/8292) and an FCM HTTP v1 endpoint. Each speaks its
protocol the way the documented service does, holds messages for a set time so a stop can catch
them, and counts what it delivered, so tests and ``estop demo --provider real`` can check that
nothing of a stopped campaign arrived after the stop was confirmed. They are not for production:
point the provider URLs at the real services there.

Each runs on its own event loop in a background thread (``start()`` / ``stop()``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")
S = TypeVar("S", bound="StandIn")



@dataclass(frozen=True, slots=True)
class Arrival:
    """One message that reached its recipient's device at a stand-in."""

    provider_id: str
    recipient: str
    text: str
    at_ms: int


class LoopThread:
    """An asyncio loop of its own in a daemon thread, so a stand-in runs beside synchronous code
    (a test, the demo) and is stopped with it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[T], timeout_s: float = 30.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return future.result(timeout_s)

    def call(self, function: Callable[[], T]) -> T:
        """Run ``function`` on the loop (where the stand-in's state lives) and return its result."""
        async def wrapped() -> T:
            return function()
        return self.run(wrapped())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class StandIn:
    """A stand-in server on its own loop thread: ``start()`` runs ``_start`` there and ``stop()``
    runs ``_stop``; ``query`` reads its state on that loop (a consistent view)."""

    name = "stand-in"
    port: int

    def __init__(self) -> None:
        self._loop: LoopThread | None = None

    def start(self: S) -> S:
        self._loop = LoopThread(f"{self.name}:{self.port}")
        self._loop.run(self._start())
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        self._loop.run(self._stop())
        self._loop.close()
        self._loop = None

    def query(self: S, question: Callable[[S], T]) -> T:
        assert self._loop is not None, f"the {self.name} is not running"
        return self._loop.call(lambda: question(self))

    async def _start(self) -> None:
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError


class HttpStandIn(StandIn):
    """A stand-in that is an aiohttp application."""

    host: str

    def __init__(self) -> None:
        super().__init__()
        self._runner: web.AppRunner | None = None

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def _start(self) -> None:
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class Arrivals:
    """What a stand-in delivered, for the questions tests and the demo ask."""

    def __init__(self) -> None:
        self.items: list[Arrival] = []

    def add(self, arrival: Arrival) -> None:
        self.items.append(arrival)

    def count(self, contains: str = "", after_ms: int | None = None) -> int:
        return sum(1 for a in self.items if contains in a.text
                   and (after_ms is None or a.at_ms > after_ms))

    def summary(self) -> dict[str, Any]:
        return {"delivered": len(self.items)}
