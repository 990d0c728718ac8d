"""Email through an MTA estop administers, reached over the network only: SMTP for submission,
the MTA agent beside Postfix (``estop mta agent``, ``streams.mta.agent``) for find and cancel, and
deliveries through Kafka, where the agent ships Postfix's log. Nothing of Postfix is needed on
the dispatcher's host.

``ESTOP_EMAIL_PROVIDER=smtp://HOST:PORT?agent=http://AGENT_HOST:AGENT_PORT``; without ``agent``,
the agent is looked for on the SMTP host at ESTOP_MTA_AGENT_PORT. Its bearer token is
ESTOP_MTA_AGENT_TOKEN, or, when that is unset, the token file `estop mta start` wrote into the
MTA's folder (ESTOP_MTA_DIR) if this host has it.

* Submission: one SMTP connection with PIPELINING (RFC 2920): each message's content and the
  next message's MAIL, RCPT and DATA go out as one group, so a message costs one round trip.
  The ``250 ... queued as ID`` reply gives the provider id (the queue id).
* Addressing: a recipient id containing "@" is the address; otherwise
  ``<recipient_id>@ESTOP_EMAIL_DOMAIN``. Each message carries ``X-Estop-Message-Id`` and
  ``X-Estop-Campaign-Id`` headers.
* Deliveries (``status=sent`` / ``bounced`` / ``expired``, and a stop's removal of a message
  "that may be sent more than once") are learned by the agent from Postfix's log and reach the
  dispatcher that owns the message through ``dispatch.email.receipts``: ``deliveries()`` here
  returns nothing.
* Find (a message in doubt) and cancel: the agent's API (``streams.mta.agent_api``). A cancel
  the agent does not answer is retried (it answers a repeated cancel the same way), then
  unknown.

Limitation: a message a delivery agent is sending at the very moment of the stop (Postfix's active
queue, the receiver's connection open) may still be delivered; the log then says so."""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Mapping, Sequence
from typing import BinaryIO, Self
from urllib.parse import SplitResult, urlsplit

from streams.mta.agent import agent_token
from streams.mta.agent_api import AgentClient
from streams.mta.exceptions import AgentRefusedError, AgentUnavailableError, MtaError
from streams.providers.base import (
    Accepted,
    CancelCapability,
    CancelStatus,
    Delivery,
    Handoff,
    SubmitStatus,
    Submitted,
)
from streams.providers.exceptions import ProviderConfigError, ProviderUnavailableError
from streams.providers.urls import host_port, query_text
from streams.settings import Settings

QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)")
UNSAFE = re.compile(r"[\s<>\x00-\x1f\x7f]")


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


class SmtpAdapter:
    channel = "email"
    cancel_capability = CancelCapability.BY_MESSAGE_ID
    receipt_source = ("the MTA agent beside Postfix: it ships Postfix's log (status=sent / bounced / "
                      "expired per queue id) to dispatch.email.receipts")

    def __init__(self, settings: Settings, host: str, port: int, agent: AgentClient) -> None:
        self.domain = settings.email_domain
        self.sender = settings.email_from
        self.agent = agent
        self.session = SmtpSession(host, port, settings.provider_timeout_s)

    @classmethod
    def from_url(cls, settings: Settings, channel: str, url: SplitResult) -> Self:
        """The adapter for ``smtp://host:port?agent=URL``: both the MTA and its agent must answer
        (the agent must take the token), else one clear error."""
        setting = f"ESTOP_{channel.upper()}_PROVIDER"
        host, port = host_port(url, setting)
        where = f"{setting}={url.geturl()}"
        agent_url = query_text(url, "agent", f"http://{host}:{settings.mta_agent_port}")
        agent_at = urlsplit(agent_url)
        if agent_at.scheme not in ("http", "https") or not agent_at.hostname:
            raise ProviderConfigError(f"{where}: agent={agent_url!r} is not an http:// or https:// "
                                      "URL of the MTA agent")
        token = agent_token(settings)
        if token is None:
            raise ProviderConfigError(
                f"{where}: the MTA agent at {agent_url} needs its token: set ESTOP_MTA_AGENT_TOKEN "
                "(`estop mta start` wrote it to <mta folder>/agent/token.env on the MTA's host)")
        agent = AgentClient(agent_url, token, settings.provider_timeout_s)
        adapter = cls(settings, host, port, agent)
        try:
            agent.check()
        except AgentRefusedError as exc:
            raise ProviderConfigError(f"{where}: {exc}") from exc
        except AgentUnavailableError as exc:
            raise ProviderUnavailableError(f"{where}: {exc}; is it running? (`estop mta start` "
                                           "starts it beside Postfix)") from exc
        try:
            adapter.session.open()
        except OSError as exc:
            agent.close()
            raise ProviderUnavailableError(f"{where}: the MTA at {host}:{port} does not answer "
                                           f"({exc}); is it running? (`estop mta start`)") from exc
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

    # -- find, deliveries, cancel -----------------------------------------------------------

    def resume(self, accepted: Sequence[Accepted]) -> None:
        """Deliveries come from the agent through Kafka, which ships every one the log holds."""

    def find(self, handoffs: Sequence[Handoff]) -> dict[str, str]:
        try:
            return self.agent.find([h.message_id for h in handoffs])
        except MtaError as exc:
            raise ProviderUnavailableError(f"cannot ask the MTA agent what Postfix queued: {exc}") from exc

    def deliveries(self) -> list[Delivery]:
        """None here: the MTA agent ships them to dispatch.email.receipts."""
        return []

    def cancel(self, campaign_id: str, provider_ids: Mapping[str, str]) -> dict[str, CancelStatus]:
        return self.agent.cancel(provider_ids)

    def close(self) -> None:
        self.session.close()
        self.agent.close()


def _final(handoff: Handoff, code: int, text: str) -> Submitted:
    """The answer to a message's end of data."""
    if code == 250:
        queued = QUEUED_AS.search(text)
        if queued is not None:
            return Submitted(handoff.message_id, SubmitStatus.ACCEPTED, queued.group(1))
        # Accepted, but the reply names no queue id: the log tells (find).
        return Submitted(handoff.message_id, SubmitStatus.UNKNOWN, error=f"{code} {text}")
    return Submitted(handoff.message_id, SubmitStatus.REFUSED, error=f"{code} {text}")
