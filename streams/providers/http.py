"""HTTP for the push adapters: one ``requests`` session per thread of an adapter's pool (a
session is not safe to share between threads), each keeping its connections alive."""

from __future__ import annotations

import threading

import requests


class SessionPerThread:
    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session
