"""Email through an MTA estop administers: Postfix on this host (``estop mta start``).

* Submission: one SMTP connection with PIPELINING (RFC 2920): each message's content and the
  next message's MAIL, RCPT and DATA go out as one group, so a message costs one round trip.
  The ``250 ... queued as ID`` reply gives the provider id (the queue id).
* Addressing: a recipient id containing "@" is the address; otherwise
  ``<recipient_id>@ESTOP_EMAIL_DOMAIN``. Each message carries ``X-Estop-Message-Id`` and
  ``X-Estop-Campaign-Id`` headers.
* Deliveries are learned from Postfix's log (``status=sent`` delivered; ``bounced`` and
  ``expired`` undelivered), never assumed: each queue id is tied to its message by the
  ``X-Estop-Message-Id`` line the instance's header_checks rule logs.
* A message whose end of data the receiving server never answered ("message may be sent more
  than once") may already be with the recipient: a stop still deletes it, so it goes no further,
  but counts it as sent (a ``postsuper`` removal the log shows for it), never as not sent.
* Find (a message in doubt): the log says whether Postfix queued it; a ``postlog`` marker makes
  sure the log has caught up first.
* Cancel: ``postsuper -h`` holds the recorded queue ids (held mail is never delivered), then
  ``postcat`` reads each held message's own ``X-Estop-Message-Id`` header (queue ids are reused
  by Postfix): the ones that match are deleted (``postsuper -d``), any other is released
  (``postsuper -H``) untouched. A queue id no longer queued is too late: the log tells its fate.

Limitation: a message a delivery agent is sending at the very moment of the stop (Postfix's active
queue, the receiver's connection open) may still be delivered; the log then says so."""

from __future__ import annotations

import contextlib
import re
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from streams.clock import now_ms
from streams.mta.exceptions import MtaError
from streams.mta.postfix import POSTCAT, POSTLOG, POSTSUPER, PostfixInstance
from streams.providers.base import (
    Accepted,
    CancelCapability,
    CancelStatus,
    Delivery,
    Handoff,
    SubmitStatus,
    Submitted,
)
from streams.providers.exceptions import ProviderUnavailableError
from streams.settings import Settings

QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)")
# Postfix log lines of interest, e.g.
#   cleanup[9]: 4jg5..: info: header X-Estop-Message-Id: c1:email:1 from localhost[...]; ...
#   qmgr[7]: 4jg5..: from=<a@estop.test>, size=381, nrcpt=1 (queue active)
#   smtp[8]: 4jg5..: to=<r1@example.test>, relay=..., dsn=2.0.0, status=sent (250 2.0.0 Ok)
#   qmgr[7]: 4jg5..: from=<a@estop.test>, status=expired, returned to sender
LOG_LINE = re.compile(r"^(\w{3} +\d+ [\d:]{8}) \S+ postfix/(\w+)\[\d+\]: ([0-9A-Za-z]+): (.*)$")
HEADER_INFO = re.compile(r"^info: header X-Estop-Message-Id: (\S+) from ")
STATUS = re.compile(r"status=(sent|bounced|expired)(?: \((.*)\))?")
#   smtp[8]: 4jg5..: to=<..>, ..., status=deferred (lost connection with ..[..] while sending end
#   of data -- message may be sent more than once)
# but not the messages Postfix then holds back from that server without sending them:
#   error[9]: 4jg6..: ..., status=deferred (delivery temporarily suspended: lost connection ...)
UNCERTAIN = re.compile(r"status=deferred \((?!delivery temporarily suspended).*"
                       r"message may be sent more than once")
MAYBE_SENT = ("sent: the receiving server took it without answering its end of data; "
              "deleted from the queue by the stop, so it was not sent again")
HELD = re.compile(r"^postsuper: ([0-9A-Za-z]+): placed on hold", re.MULTILINE)
REMOVED = re.compile(r"^postsuper: ([0-9A-Za-z]+): removed", re.MULTILINE)
SECTION = re.compile(r"^\*\*\* ENVELOPE RECORDS \w+/([0-9A-Za-z]+) \*\*\*$")
MARKER = re.compile(r"estop-sync-[0-9a-f]{32}")
SYNC_TIMEOUT_S = 10.0
CHUNK = 1000  # queue ids per postsuper / postcat call
UNSAFE = re.compile(r"[\s<>\x00-\x1f\x7f]")


class SmtpError(Exception):
    """The SMTP connection failed; ``sent`` says whether the message's content had gone out."""


class SmtpSession:
    """One SMTP connection that pipelines, and reconnects when a call finds it broken."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._sock: socket.socket | None = None
        self._file: BinaryIO | None = None

    def open(self) -> None:
        self.close()
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        self._sock = sock
        self._file = sock.makefile("rb")
        self._expect(self.reply(), 220, "greeting")
        self.send(b"EHLO estop.test\r\n")
        ehlo = self.reply()
        self._expect(ehlo, 250, "EHLO")
        if "PIPELINING" not in ehlo[1].upper():
            raise OSError(f"{self.host}:{self.port} does not offer PIPELINING")

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def send(self, data: bytes) -> None:
        assert self._sock is not None
        self._sock.sendall(data)

    def reply(self) -> tuple[int, str]:
        """One (possibly multi-line) reply: its code and text."""
        assert self._file is not None
        lines: list[str] = []
        while True:
            raw = self._file.readline()
            if not raw:
                raise OSError("the server closed the connection")
            line = raw.decode(errors="replace").rstrip("\r\n")
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), "\n".join(lines)

    @staticmethod
    def _expect(reply: tuple[int, str], code: int, what: str) -> None:
        if reply[0] != code:
            raise OSError(f"{what}: {reply[0]} {reply[1]}")

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.sendall(b"QUIT\r\n")
            self._sock.close()
            self._sock = None


class PostfixLog:
    """Postfix's log, read forward from its start: which queue id carries which message, which
    were queued, and their deliveries."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.message_of: dict[str, str] = {}  # queue id -> message id
        self.queued: dict[str, str] = {}  # message id -> queue id, once qmgr took it
        self.uncertain: set[str] = set()  # message ids a receiving server may already have
        self.markers: set[str] = set()  # sync markers seen (see SmtpAdapter._sync)
        self._year = datetime.now().year

    def read(self) -> list[Delivery]:
        """New lines since the last read; returns the deliveries among them."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        found: list[Delivery] = []
        for raw in lines:
            delivery = self._line(raw.decode(errors="replace"))
            if delivery is not None:
                found.append(delivery)
        return found

    def _line(self, line: str) -> Delivery | None:
        match = LOG_LINE.match(line)
        if match is None:
            marker = MARKER.search(line)
            if marker is not None:
                self.markers.add(marker.group(0))
            return None
        stamp, daemon, queue_id, rest = match.groups()
        if daemon == "cleanup":
            info = HEADER_INFO.match(rest)
            if info is not None:
                self.message_of[queue_id] = info.group(1)
            return None
        message_id = self.message_of.get(queue_id)
        if message_id is None:
            return None
        if daemon == "qmgr" and rest.startswith("from=") and "(queue active)" in rest:
            self.queued[message_id] = queue_id
        if daemon == "smtp" and UNCERTAIN.search(rest):
            self.uncertain.add(message_id)
            return None
        if daemon == "postsuper" and rest == "removed" and message_id in self.uncertain:
            return Delivery(message_id, queue_id, True, self._when(stamp), MAYBE_SENT)
        status = STATUS.search(rest)
        if status is None:
            return None
        return Delivery(message_id, queue_id, status.group(1) == "sent", self._when(stamp),
                        f"{status.group(1)}: {status.group(2) or ''}".strip())

    def _when(self, stamp: str) -> int:
        try:
            parsed = datetime.strptime(f"{self._year} {stamp}", "%Y %b %d %H:%M:%S")
        except ValueError:
            return now_ms()
        return int(parsed.timestamp() * 1000)


class SmtpAdapter:
    channel = "email"
    cancel_capability = CancelCapability.BY_MESSAGE_ID
    receipt_source = "Postfix's log (status=sent / bounced / expired per queue id)"

    def __init__(self, settings: Settings, host: str, port: int, instance: PostfixInstance) -> None:
        self.domain = settings.email_domain
        self.sender = settings.email_from
        self.instance = instance
        self.session = SmtpSession(host, port, settings.provider_timeout_s)
        self.log = PostfixLog(instance.log_path)
        self._pending: list[Delivery] = []

    @classmethod
    def connect(cls, settings: Settings, channel: str, host: str, port: int) -> SmtpAdapter:
        instance = PostfixInstance.from_settings(settings)
        where = f"ESTOP_{channel.upper()}_PROVIDER=smtp://{host}:{port}"
        if not instance.configured:
            raise ProviderUnavailableError(
                f"{where}: no Postfix instance in {instance.home} to cancel and track mail with "
                "(run `estop mta start`)")
        adapter = cls(settings, host, port, instance)
        try:
            adapter.session.open()
        except OSError as exc:
            raise ProviderUnavailableError(f"{where}: the MTA does not answer ({exc}); "
                                           "is it running? (`estop mta start`)") from exc
        return adapter

    # -- submit --------------------------------------------------------------------------------

    def address(self, recipient_id: str) -> str:
        return recipient_id if "@" in recipient_id else f"{recipient_id}@{self.domain}"

    def render(self, handoff: Handoff) -> bytes:
        """The message as it goes on the wire after DATA: CRLF lines, dot-stuffed, ended by '.'."""
        body = handoff.payload.replace("\r\n", "\n").replace("\r", "\n")
        text = (f"From: {self.sender}\nTo: {self.address(handoff.recipient_id)}\n"
                f"Subject: {handoff.campaign_id}\nX-Estop-Message-Id: {handoff.message_id}\n"
                f"X-Estop-Campaign-Id: {handoff.campaign_id}\nMIME-Version: 1.0\n"
                "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
                f"{body}\n")
        lines = [("." + line) if line.startswith(".") else line for line in text.split("\n")[:-1]]
        return ("\r\n".join(lines) + "\r\n.\r\n").encode()

    def _envelope(self, handoff: Handoff) -> bytes:
        return (f"MAIL FROM:<{self.sender}>\r\nRCPT TO:<{self.address(handoff.recipient_id)}>\r\n"
                "DATA\r\n").encode()

    def submit(self, handoffs: Sequence[Handoff]) -> list[Submitted]:
        answers: dict[str, Submitted] = {}
        valid = []
        for handoff in handoffs:
            if any(UNSAFE.search(v) for v in (handoff.message_id, handoff.campaign_id,
                                              self.address(handoff.recipient_id))):
                answers[handoff.message_id] = Submitted(
                    handoff.message_id, SubmitStatus.REFUSED,
                    error="id or address with spaces, angle brackets or control characters")
            else:
                valid.append(handoff)
        if valid:
            try:
                if not self.session.connected:
                    self.session.open()
            except OSError as exc:
                self.session.close()
                for handoff in valid:
                    answers[handoff.message_id] = Submitted(handoff.message_id, SubmitStatus.REFUSED,
                                                            error=f"cannot connect: {exc}")
            else:
                answers.update(self._pipeline(valid))
        return [answers[h.message_id] for h in handoffs]

    def _pipeline(self, handoffs: Sequence[Handoff]) -> dict[str, Submitted]:
        """Send the messages; each group is [previous content + '.'] MAIL RCPT DATA."""
        answers: dict[str, Submitted] = {}
        session = self.session
        ready: Handoff | None = None  # its DATA was answered 354: its content goes next
        sent_content: Handoff | None = None  # content (maybe) sent, final reply not read yet
        index = 0
        try:
            while index < len(handoffs) or ready is not None:
                current = handoffs[index] if index < len(handoffs) else None
                group = b""
                if ready is not None:
                    group += self.render(ready)
                    sent_content, ready = ready, None
                if current is not None:
                    group += self._envelope(current)
                session.send(group)
                if sent_content is not None:
                    code, text = session.reply()
                    answers[sent_content.message_id] = _final(sent_content, code, text)
                    sent_content = None
                if current is None:
                    break
                index += 1
                replies = [session.reply() for _ in range(3)]
                if replies[2][0] == 354:
                    ready = current
                    continue
                worst = next((r for r in replies if r[0] >= 400), replies[2])
                answers[current.message_id] = Submitted(current.message_id, SubmitStatus.REFUSED,
                                                        error=f"{worst[0]} {worst[1]}")
                session.send(b"RSET\r\n")
                session.reply()
        except OSError as exc:
            session.close()
            if sent_content is not None:  # its content may have gone out; the answer did not come
                answers[sent_content.message_id] = Submitted(
                    sent_content.message_id, SubmitStatus.UNKNOWN, error=f"connection lost: {exc}")
            for handoff in handoffs:  # the others never reached the end of their DATA
                answers.setdefault(handoff.message_id, Submitted(
                    handoff.message_id, SubmitStatus.REFUSED, error=f"connection lost: {exc}"))
        return answers

    # -- find, deliveries ----------------------------------------------------------------------

    def resume(self, accepted: Sequence[Accepted]) -> None:
        """Deliveries are read from Postfix's log from its start, which remembers these."""

    def find(self, handoffs: Sequence[Handoff]) -> dict[str, str]:
        self._sync()
        queued = self.log.queued
        return {h.message_id: queued[h.message_id] for h in handoffs if h.message_id in queued}

    def _sync(self) -> None:
        """Read the log up to a marker logged now, so every line Postfix logged before is in."""
        marker = f"estop-sync-{uuid.uuid4().hex}"
        try:
            self.instance.command(POSTLOG, "-t", "postfix/estop", marker)
        except MtaError as exc:
            raise ProviderUnavailableError(f"cannot write a marker to Postfix's log: {exc}") from exc
        deadline = time.monotonic() + SYNC_TIMEOUT_S
        while True:
            self._pending.extend(self.log.read())
            if marker in self.log.markers:
                self.log.markers.discard(marker)
                return
            if time.monotonic() > deadline:
                raise ProviderUnavailableError(f"Postfix's log ({self.log.path}) stopped advancing")
            time.sleep(0.02)

    def deliveries(self) -> list[Delivery]:
        found, self._pending = [*self._pending, *self.log.read()], []
        return found

    # -- cancel --------------------------------------------------------------------------------

    def cancel(self, campaign_id: str, provider_ids: Mapping[str, str]) -> dict[str, CancelStatus]:
        message_of = {q: m for m, q in provider_ids.items()}
        answers = dict.fromkeys(provider_ids, CancelStatus.TOO_LATE)
        queue_ids = list(message_of)
        removed: list[str] = []
        for start in range(0, len(queue_ids), CHUNK):
            chunk = queue_ids[start:start + CHUNK]
            held = self._postsuper("-h", chunk, HELD)
            if not held:
                continue
            carried = self._carried(held)
            own = [q for q in held if carried.get(q) == message_of[q]]
            others = [q for q in held if q not in own]
            if others:  # a reused queue id: someone else's message; leave it as it was
                self._postsuper("-H", others, None)
            for queue_id in own:  # held, so still queued: a delete that fails is unknown
                answers[message_of[queue_id]] = CancelStatus.UNKNOWN
            removed += self._postsuper("-d", own, REMOVED)
        if removed:
            self._sync()  # once: every deferral logged before the holds, and the removals
        for queue_id in removed:
            message_id = message_of[queue_id]
            # A message the receiver may have is delivered by the log's removal line.
            answers[message_id] = (CancelStatus.TOO_LATE if message_id in self.log.uncertain
                                   else CancelStatus.CANCELLED)
        return answers

    def _postsuper(self, flag: str, queue_ids: list[str], done: re.Pattern[str] | None) -> list[str]:
        if not queue_ids:
            return []
        result = self.instance.command(POSTSUPER, flag, "-", stdin="\n".join(queue_ids) + "\n",
                                       check=False)
        return done.findall(result.stderr) if done is not None else []

    def _carried(self, queue_ids: list[str]) -> dict[str, str]:
        """queue id -> the X-Estop-Message-Id header of the message it holds now."""
        out = self.instance.command(POSTCAT, "-e", "-h", "-q", *queue_ids, check=False).stdout
        carried: dict[str, str] = {}
        current: str | None = None
        for line in out.splitlines():
            section = SECTION.match(line)
            if section is not None:
                current = section.group(1)
            elif current is not None and line.lower().startswith("x-estop-message-id:"):
                carried[current] = line.split(":", 1)[1].strip()
        return carried

    def close(self) -> None:
        self.session.close()


def _final(handoff: Handoff, code: int, text: str) -> Submitted:
    """The answer to a message's end of data."""
    if code == 250:
        queued = QUEUED_AS.search(text)
        if queued is not None:
            return Submitted(handoff.message_id, SubmitStatus.ACCEPTED, queued.group(1))
        # Accepted, but the reply names no queue id: the log tells (find).
        return Submitted(handoff.message_id, SubmitStatus.UNKNOWN, error=f"{code} {text}")
    return Submitted(handoff.message_id, SubmitStatus.REFUSED, error=f"{code} {text}")
