"""The MTA agent in the background, as `estop mta start` runs it beside Postfix: an
``estop mta agent`` process of its own session, with its pid file and log in ``<mta>/agent/``,
given these settings through its environment (never its command line)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from streams.mta.agent import AgentFiles, ensure_token
from streams.mta.agent_api import HEALTH
from streams.mta.exceptions import MtaError
from streams.mta.postfix import HOST
from streams.processes import alive, port_open, terminate
from streams.settings import Settings

START_TIMEOUT_S = 60.0
# A stopping agent first ships what it read; while Kafka is away that waits for one flush.
STOP_TIMEOUT_S = 30.0
ANY_ADDRESS = ("", "0.0.0.0", "::")


class AgentProcess:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.files = AgentFiles(settings.mta_home)
        self.port = settings.mta_agent_port
        host = settings.mta_agent_host
        self.url = f"http://{HOST if host in ANY_ADDRESS else host}:{self.port}"

    def pid(self) -> int | None:
        try:
            pid = int(self.files.pid.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if alive(pid) and _is_agent(pid) else None

    def running(self) -> bool:
        return self.pid() is not None

    def health(self) -> dict[str, Any] | None:
        """What the running agent says of itself; None when it does not answer."""
        try:
            response = requests.get(f"{self.url}{HEALTH}", timeout=5)
            answer: dict[str, Any] = response.json()
        except (requests.RequestException, ValueError):
            return None
        return answer if response.status_code == 200 else None

    def check_port(self) -> None:
        """MtaError when no agent of ours runs and another process has the agent's port."""
        if not self.running() and port_open(self.port, HOST):
            raise MtaError(f"port {self.port} is taken by another process: set ESTOP_MTA_AGENT_PORT")

    def start(self) -> None:
        """Start the agent unless one already runs for these settings (one shipping elsewhere is
        stopped first: the agent ships to one cluster and topic)."""
        if self.running():
            health = self.health()
            if health is not None and self._ships_here(health):
                return
            self.stop()
        self.check_port()
        ensure_token(self.settings)
        self.files.folder.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ESTOP_")}
        env.update(self.settings.environment())
        with self.files.log.open("ab") as out:
            process = subprocess.Popen([sys.executable, "-m", "streams", "mta", "agent"],
                                       stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       env=env, start_new_session=True)
        self.files.pid.write_text(str(process.pid))
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.health() is None:
            if process.poll() is not None or time.monotonic() > deadline:
                if process.poll() is None:
                    terminate(process.pid, STOP_TIMEOUT_S)
                self.files.pid.unlink(missing_ok=True)
                raise MtaError(f"the MTA agent did not start: {_last_line(self.files.log)} "
                               f"(see {self.files.log})")
            time.sleep(0.1)

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            terminate(pid, STOP_TIMEOUT_S)
        self.files.pid.unlink(missing_ok=True)

    def _ships_here(self, health: dict[str, Any]) -> bool:
        return (health.get("receipts_topic") == self.settings.topics.receipts("email")
                and health.get("bootstrap_servers") == self.settings.bootstrap_servers)


def _is_agent(pid: int) -> bool:
    """The pid file may outlive the agent and its pid be reused by something else."""
    try:
        return b"mta\x00agent" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid file


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return "no output"
    return lines[-1] if lines else "no output"
