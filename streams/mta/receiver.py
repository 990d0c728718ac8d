"""The receiving SMTP server that stands for the internet: Postfix's ``smtp-sink`` (from Debian's
postfix package), listening on its own port, writing every message it accepts to a file in
``<data>/mta/receiver`` so tests and the demo can count what arrived, per campaign. Beside it, a
refusing half (a second ``smtp-sink``, LMTP on a socket in the same folder) answers every
recipient at ``REFUSED_DOMAIN`` with ``550 5.1.1``, so Postfix bounces exactly the share of an
audience addressed there. Stopping the receiver holds the internet down (both halves): Postfix
keeps the mail in its deferred queue until it is back."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from streams.mta.exceptions import MtaError
from streams.mta.postfix import HOST, refusing_socket
from streams.processes import alive, port_open, terminate

SMTP_SINK = "/usr/sbin/smtp-sink"
BACKLOG = "256"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
HEADER_MESSAGE = b"x-estop-message-id:"
HEADER_CAMPAIGN = b"x-estop-campaign-id:"
REFUSAL = "550 5.1.1 Recipient address rejected: User unknown"


@dataclass
class Arrivals:
    """What reached the receiver: message ids per campaign, and how often each arrived."""

    by_campaign: dict[str, Counter[str]] = field(default_factory=dict)

    def count(self, campaign_id: str) -> int:
        return sum(self.by_campaign.get(campaign_id, Counter()).values())

    def twice(self, campaign_id: str) -> int:
        return sum(1 for n in self.by_campaign.get(campaign_id, Counter()).values() if n > 1)

    def ids(self, campaign_id: str) -> set[str]:
        return set(self.by_campaign.get(campaign_id, Counter()))


class Receiver:
    def __init__(self, home: Path, port: int) -> None:
        self.folder = home.resolve() / "receiver"
        self.mail = self.folder / "mail"
        self.pid_path = self.folder / "smtp-sink.pid"
        self.refusing_pid_path = self.folder / "refusing.pid"
        self.refusing = refusing_socket(home)
        self.port = port
        self._seen: dict[str, tuple[str, str]] = {}  # file name -> (campaign, message) once read

    def pid(self, path: Path | None = None) -> int | None:
        try:
            pid = int((path or self.pid_path).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, answer_end_of_data: bool = True) -> None:
        """``answer_end_of_data=False``: a receiving server that fails after taking each
        message's data and before answering it (``smtp-sink -q .``); the message is written, and
        Postfix logs that it "may be sent more than once"."""
        if self.running():
            return
        if not Path(SMTP_SINK).exists():
            raise MtaError(f"{SMTP_SINK} is missing: install Debian's postfix package (make system-test)")
        if port_open(self.port, HOST):
            raise MtaError(f"port {self.port} is taken by another process: set ESTOP_MTA_RECEIVER_PORT")
        self.mail.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.mail, "postfix")
        # -d: one file per message, named by the second it arrived plus a random suffix;
        # -q .: disconnect instead of answering '.'.
        hang_up = [] if answer_end_of_data else ["-q", "."]
        self._spawn([*hang_up, "-d", f"{self.mail}/%Y%m%d%H%M%S.", f"{HOST}:{self.port}"],
                    self.pid_path, lambda: port_open(self.port, HOST), f"{HOST}:{self.port}")
        # -L: LMTP (Postfix's lmtp client reaches a socket); -f RCPT with -B: every recipient 550.
        self.refusing.unlink(missing_ok=True)
        self._spawn(["-L", "-f", "RCPT", "-B", REFUSAL, f"unix:{self.refusing}"],
                    self.refusing_pid_path, self.refusing.exists, str(self.refusing))
        shutil.chown(self.refusing, "postfix")  # made by root before smtp-sink dropped to postfix

    def _spawn(self, args: list[str], pid_path: Path, up: Callable[[], bool], where: str) -> None:
        # -u: drop to the postfix user after binding.
        process = subprocess.Popen(
            [SMTP_SINK, "-u", "postfix", *args, BACKLOG],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=(self.folder / "smtp-sink.log").open("ab"), start_new_session=True)
        pid_path.write_text(str(process.pid))
        deadline = time.monotonic() + START_TIMEOUT_S
        while not up():
            if process.poll() is not None or time.monotonic() > deadline:
                raise MtaError(f"smtp-sink did not start on {where} "
                               f"(see {self.folder / 'smtp-sink.log'})")
            time.sleep(0.05)

    def stop(self) -> None:
        for path in (self.pid_path, self.refusing_pid_path):
            pid = self.pid(path)
            if pid is not None:
                terminate(pid, STOP_TIMEOUT_S)
            path.unlink(missing_ok=True)

    def arrivals(self) -> Arrivals:
        """Every message the receiver wrote, read from its files (each read once)."""
        found = Arrivals()
        if self.mail.exists():
            for path in self.mail.iterdir():
                if path.name not in self._seen:
                    identity = _identity(path)
                    if identity is not None:  # else still being written: read it next time
                        self._seen[path.name] = identity
        for campaign, message in self._seen.values():
            found.by_campaign.setdefault(campaign, Counter())[message] += 1
        return found


def _identity(path: Path) -> tuple[str, str] | None:
    """(campaign id, message id) from a received message's headers ('' when absent); None while
    its headers are not all written yet."""
    campaign = message = ""
    with path.open("rb") as handle:
        for line in handle:
            lower = line.lower()
            if lower.startswith(HEADER_MESSAGE):
                message = line[len(HEADER_MESSAGE):].strip().decode(errors="replace")
            elif lower.startswith(HEADER_CAMPAIGN):
                campaign = line[len(HEADER_CAMPAIGN):].strip().decode(errors="replace")
            elif line in (b"\r\n", b"\n"):
                return campaign, message
    return None

