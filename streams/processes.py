"""Processes and ports of servers estop runs itself (the local broker, the private MTA, the
third-party servers of tests/ecosystem)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import time
from pathlib import Path

from streams.exceptions import MissingProgramError


def alive(pid: int) -> bool:
    """The process runs (a zombie left by a parent that never reaped it does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(FileNotFoundError):
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return False
    return True


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Something accepts TCP connections there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def require(program: str, hint: str) -> str:
    """The path of ``program`` on PATH; MissingProgramError naming it and ``hint`` otherwise."""
    path = shutil.which(program)
    if path is None:
        raise MissingProgramError(f"`{program}` not found on PATH: {hint}")
    return path


def log_tail(path: Path, lines: int = 5) -> str:
    """The last lines of a server's log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no output)"


def terminate(pid: int, timeout_s: float) -> None:
    """SIGTERM, then SIGKILL if the process still runs after ``timeout_s``; returns once it is
    gone (reaping it when it is a child of this process)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        if not alive(pid):
            return
