"""A server nobody here wrote, run as a child process: its output in a log file in its own
folder, ready once a check passes, stopped with SIGTERM (SIGKILL after a grace period)."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from streams.processes import log_tail, require
from tests.ecosystem.exceptions import EcosystemError, ServerExitedError

JAVA_HINT = "install Java 17 or newer (apt-get install openjdk-17-jre-headless; `make test` does)"


def http_ok(url: str) -> bool:
    """``url`` answers 200 right now."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def java() -> str:
    return require("java", JAVA_HINT)


class ServerProcess:
    """One server process (a JVM, a Node.js script); ``start`` waits for ``ready`` and fails at
    once if the process exits."""

    def __init__(self, name: str, command: list[str], home: Path) -> None:
        self.name = name
        self.command = command
        self.home = home
        self.log = home / f"{name.lower().replace(' ', '-')}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready: Callable[[], bool], timeout_s: float) -> float:
        """Seconds from spawn until ``ready`` held; ServerExitedError if the process exited first
        (e.g. its port was taken after it was picked), EcosystemError if it never got ready."""
        self.home.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.command, cwd=self.home, stdout=out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        while not ready():
            if self.process.poll() is not None:
                raise ServerExitedError(f"{self.name} exited with code {self.process.returncode} while "
                                     f"starting; see {self.log}:\n{self.tail()}")
            if time.monotonic() - started > timeout_s:
                self.stop()
                raise EcosystemError(f"{self.name} was not ready within {timeout_s:.0f}s; "
                                     f"see {self.log}:\n{self.tail()}")
            time.sleep(0.2)
        return time.monotonic() - started

    def check(self) -> None:
        """Raise with the log's end if the server exited."""
        if self.process is not None and self.process.poll() is not None:
            raise EcosystemError(f"{self.name} exited with code {self.process.returncode}; "
                                 f"see {self.log}:\n{self.tail()}")

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def tail(self, lines: int = 15) -> str:
        return log_tail(self.log, lines)
