"""SMS over SMPP 3.4: ``smpp://SYSTEM_ID:PASSWORD@HOST:PORT?source=ESTOP&validity_s=3600``.

One transceiver bind carries submissions and delivery receipts. Every ``submit_sm`` asks for a
receipt (``registered_delivery``) and carries a ``validity_period``, so an SMSC never keeps a
message longer than that; the SMSC's ``message_id`` is the provider id. A stop sends ``cancel_sm``
for each message the SMSC may still hold, then ``query_sm``, because an SMSC may answer OK to the
cancel of a message it already delivered: state DELETED (or, after OK, a query failure: the SMSC
forgot it) means cancelled; a message that left the SMSC, or a refused cancel, is too late (its
receipt decides); an OK the query does not back is unconfirmed. Receipts (``deliver_sm``) are acknowledged
only on the next ``deliveries()`` call, after the dispatcher recorded them, so a receipt a crash
lost is sent again by the SMSC to the next bind.

Addressing: the recipient id is the destination address (an MSISDN; a leading ``+`` is dropped).
Requests are pipelined up to ``window`` outstanding PDUs, as SMSCs allow."""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Self
from urllib.parse import SplitResult, unquote

from streams.clock import now_ms
from streams.providers import smpp_pdus as pdus
from streams.providers.base import (
    Accepted,
    CancelCapability,
    CancelStatus,
    Delivery,
    Handoff,
    SubmitStatus,
    Submitted,
)
from streams.providers.exceptions import (
    FramingError,
    ProviderConfigError,
    ProviderUnavailableError,
)
from streams.providers.smpp_pdus import CommandId, CommandStatus, MessageState, operations
from streams.providers.urls import query_number, query_text
from streams.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_VALIDITY_S = 3600
DEFAULT_WINDOW = 64
ENQUIRE_EVERY_S = 30.0
RECONNECT_EVERY_S = 5.0  # a dropped bind is bound again at most this often by deliveries()
SETTING = "ESTOP_SMS_PROVIDER"
MAX_SHORT_MESSAGE = 254  # bytes in short_message (longer text would need message_payload/SAR)


@dataclass(slots=True)
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    answer: pdus.PDU | None = None


@dataclass(frozen=True, slots=True)
class SmppConfig:
    host: str
    port: int
    system_id: str
    password: str
    source: str = "estop"
    validity_s: int = DEFAULT_VALIDITY_S
    window: int = DEFAULT_WINDOW
    timeout_s: float = 30.0

    @classmethod
    def from_url(cls, url: SplitResult, timeout_s: float) -> SmppConfig:
        if not url.hostname or url.port is None or not url.username:
            raise ProviderConfigError(f"{SETTING}: {url.scheme}://... needs a system id, password, "
                                      "host and port, e.g. smpp://estop:secret@localhost:2775")
        return cls(url.hostname, url.port, unquote(url.username), unquote(url.password or ""),
                   query_text(url, "source", "estop"),
                   int(query_number(url, SETTING, "validity_s", DEFAULT_VALIDITY_S, 1)),
                   int(query_number(url, SETTING, "window", DEFAULT_WINDOW, 1)), timeout_s)


class SmppAdapter:
    channel = "sms"
    cancel_capability = CancelCapability.BY_MESSAGE_ID
    receipt_source = "SMPP delivery receipts (deliver_sm) on the transceiver bind"

    def __init__(self, config: SmppConfig) -> None:
        self.config = config
        self._sequence = itertools.count(1)
        self._lock = threading.Lock()  # the socket's writes and the pending table
        self._pending: dict[int, _Pending] = {}
        self._receipts: list[tuple[int, str, str, int]] = []  # sequence, smsc id, stat, at
        self._to_ack: list[int] = []
        self._by_smsc: dict[str, str] = {}  # SMSC message_id -> estop message id
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._last_sent = time.monotonic()
        self._last_attempt = 0.0  # the last time a dropped bind was bound again
        self._connect()

    @classmethod
    def from_url(cls, settings: Settings, channel: str, url: SplitResult) -> Self:
        """``smpp://system_id:password@host:port?source=&validity_s=&window=``."""
        return cls(SmppConfig.from_url(url, settings.provider_timeout_s))

    # -- the contract --------------------------------------------------------------------------

    def submit(self, handoffs: Sequence[Handoff]) -> list[Submitted]:
        if not self._alive() and not self._reconnect():
            return [Submitted(h.message_id, SubmitStatus.REFUSED, error="SMSC unreachable")
                    for h in handoffs]
        requests = [pdus.submit_sm(next(self._sequence), self.config.source,
                                   h.recipient_id.removeprefix("+"),
                                   h.payload.encode("utf-8")[:MAX_SHORT_MESSAGE],
                                   self.config.validity_s) for h in handoffs]
        answers: list[Submitted] = []
        for handoff, answer in zip(handoffs, self._exchange(requests), strict=True):
            if answer is None:
                answers.append(Submitted(handoff.message_id, SubmitStatus.UNKNOWN,
                                         error="no submit_sm_resp"))
            elif answer.status == CommandStatus.ESME_ROK:
                smsc_id = pdus.text(answer.params.get("message_id"))
                self._by_smsc[smsc_id] = handoff.message_id
                answers.append(Submitted(handoff.message_id, SubmitStatus.ACCEPTED, smsc_id))
            else:
                answers.append(Submitted(handoff.message_id, SubmitStatus.REFUSED,
                                         error=answer.status.name))
        return answers

    def resume(self, accepted: Sequence[Accepted]) -> None:
        """The SMSC sends the receipts of these again until they are acknowledged."""

    def find(self, handoffs: Sequence[Handoff]) -> dict[str, str]:
        """SMPP can look a message up only by the SMSC's id (query_sm), which a message in doubt
        does not have: it is submitted again."""
        return {}

    def cancel(self, campaign_id: str, provider_ids: Mapping[str, str]) -> dict[str, CancelStatus]:
        """``cancel_sm`` per message, then ``query_sm`` for each the SMSC answered: an SMSC may
        answer ESME_ROK to the cancel of a message it already delivered (SMPPSim does), so only
        the query proves the outcome (``verdict``)."""
        answers = dict.fromkeys(provider_ids, CancelStatus.UNKNOWN)
        if not provider_ids or (not self._alive() and not self._reconnect()):
            return answers
        message_ids = list(provider_ids)
        requests = [pdus.cancel_sm(next(self._sequence), provider_ids[m], self.config.source)
                    for m in message_ids]
        answered: dict[str, CommandStatus] = {}
        for message_id, answer in zip(message_ids, self._exchange(requests), strict=True):
            if answer is None:
                continue
            if answer.status in (CommandStatus.ESME_ROK, CommandStatus.ESME_RCANCELFAIL):
                answered[message_id] = answer.status
            else:
                log.warning("cancel_sm %s answered %s", provider_ids[message_id], answer.status.name)
        queries = [pdus.query_sm(next(self._sequence), provider_ids[m], self.config.source)
                   for m in answered]
        for message_id, state in zip(answered, self._exchange(queries), strict=True):
            answers[message_id] = verdict(answered[message_id], state)
        return answers

    def deliveries(self) -> list[Delivery]:
        """Receipts since the last call. Those of the previous call are acknowledged now: the
        dispatcher recorded them before asking again. A bind that dropped is bound again, so
        receipts keep coming when nothing is left to submit."""
        if not self._alive() and time.monotonic() - self._last_attempt > RECONNECT_EVERY_S:
            self._reconnect()
        with self._lock:
            acks, self._to_ack = self._to_ack, []
            receipts, self._receipts = self._receipts, []
            self._send_locked([operations.DeliverSMResp(seqNum=s) for s in acks])
            self._to_ack = [sequence for sequence, *_ in receipts]
        found: list[Delivery] = []
        for _, smsc_id, stat, at_ms in receipts:
            found.append(Delivery(self._by_smsc.pop(smsc_id, ""), smsc_id, stat == pdus.DELIVERED,
                                  at_ms, stat))
        self._keep_alive()
        return found

    def close(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            self._exchange([operations.Unbind(seqNum=next(self._sequence))], timeout_s=2.0)
        finally:
            self._sock = None
            sock.close()

    # -- the session ---------------------------------------------------------------------------

    def _connect(self) -> None:
        config = self.config
        where = f"SMSC {config.host}:{config.port}"
        try:
            sock = socket.create_connection((config.host, config.port), timeout=config.timeout_s)
        except OSError as exc:
            raise ProviderUnavailableError(f"{where} does not answer: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.sendall(pdus.encode(pdus.bind("transceiver", next(self._sequence), config.system_id,
                                               config.password)))
            answer = pdus.decode(_read_pdu(sock))
        except (OSError, FramingError, pdus.PDUParseError) as exc:
            sock.close()
            raise ProviderUnavailableError(f"{where}: bind failed: {exc}") from exc
        if answer.status != CommandStatus.ESME_ROK:
            sock.close()
            raise ProviderConfigError(f"{where} refused the bind of system id "
                                      f"{config.system_id!r}: {answer.status.name}")
        sock.settimeout(None)
        self._sock = sock
        self._reader = threading.Thread(target=self._read, args=(sock,), name="smpp-reader",
                                        daemon=True)
        self._reader.start()

    def _alive(self) -> bool:
        return self._sock is not None and self._reader is not None and self._reader.is_alive()

    def _reconnect(self) -> bool:
        self._last_attempt = time.monotonic()
        try:
            self._connect()
        except (ProviderUnavailableError, ProviderConfigError) as exc:
            log.warning("SMPP reconnect failed: %s", exc)
            return False
        self._to_ack = []  # the old bind's receipts: the SMSC sends them again on this one
        return True

    def _read(self, sock: socket.socket) -> None:
        try:
            while True:
                data = _read_pdu(sock)
                try:
                    pdu = pdus.decode(data)
                except pdus.PDUParseError as exc:
                    log.warning("SMSC sent a PDU that does not decode: %s", exc)
                    continue
                self._received(pdu)
        except (OSError, FramingError):
            pass
        finally:
            with self._lock:
                for pending in self._pending.values():
                    pending.done.set()
                if self._sock is sock:
                    self._sock = None

    def _received(self, pdu: pdus.PDU) -> None:
        if pdu.id == CommandId.deliver_sm:
            fields = pdus.receipt_fields(pdu)
            with self._lock:
                if fields is None:  # a mobile-originated message: not ours to handle
                    self._send_locked([operations.DeliverSMResp(seqNum=pdu.seqNum)])
                else:
                    self._receipts.append((pdu.seqNum, *fields, now_ms()))
        elif pdu.id == CommandId.enquire_link:
            with self._lock:
                self._send_locked([operations.EnquireLinkResp(seqNum=pdu.seqNum)])
        elif pdu.id == CommandId.unbind:
            with self._lock:
                self._send_locked([operations.UnbindResp(seqNum=pdu.seqNum)])
        else:
            with self._lock:
                pending = self._pending.get(pdu.seqNum)
            if pending is not None:
                pending.answer = pdu
                pending.done.set()

    def _exchange(self, requests: list[pdus.PDU], timeout_s: float | None = None) -> list[pdus.PDU | None]:
        """Send requests pipelined, at most ``window`` unanswered at a time; their answers in
        order (None where none came in time or the connection dropped)."""
        deadline = time.monotonic() + (timeout_s or self.config.timeout_s)
        answers: list[pdus.PDU | None] = []
        window = self.config.window
        for start in range(0, len(requests), window):
            chunk = requests[start:start + window]
            pending = [_Pending() for _ in chunk]
            with self._lock:
                for request, slot in zip(chunk, pending, strict=True):
                    self._pending[request.seqNum] = slot
                if not self._send_locked(chunk):
                    for slot in pending:
                        slot.done.set()
            for request, slot in zip(chunk, pending, strict=True):
                slot.done.wait(max(deadline - time.monotonic(), 0.0))
                with self._lock:
                    self._pending.pop(request.seqNum, None)
                answers.append(slot.answer)
        return answers

    def _send_locked(self, batch: list[pdus.PDU]) -> bool:
        if not batch:
            return True
        sock = self._sock
        if sock is None:
            return False
        try:
            sock.sendall(b"".join(pdus.encode(p) for p in batch))
        except OSError as exc:
            log.warning("SMPP send failed: %s", exc)
            return False
        self._last_sent = time.monotonic()
        return True

    def _keep_alive(self) -> None:
        """enquire_link when the bind was quiet, so an SMSC's inactivity timer keeps it."""
        if time.monotonic() - self._last_sent > ENQUIRE_EVERY_S and self._alive():
            self._exchange([operations.EnquireLink(seqNum=next(self._sequence))], timeout_s=5.0)


# query_sm's message_state after a cancel_sm: gone by the cancel (DELETED), or left the SMSC
# whatever became of it (its receipt decides: delivered, or undelivered and failed).
LEFT = {MessageState.DELIVERED, MessageState.ACCEPTED, MessageState.EXPIRED,
        MessageState.UNDELIVERABLE, MessageState.REJECTED}
# query_sm failed: the SMSC no longer knows the message. After an ESME_ROK cancel that is how
# SMPPSim answers for a message it really cancelled (it answers DELIVERED for one it delivered).
FORGOTTEN = {CommandStatus.ESME_RQUERYFAIL, CommandStatus.ESME_RINVMSGID}


def verdict(cancel: CommandStatus, query: pdus.PDU | None) -> CancelStatus:
    """What a ``cancel_sm`` answer (ESME_ROK or ESME_RCANCELFAIL) and the ``query_sm`` answer
    after it prove about one message. DELETED is proof either way (also for a message cancelled
    before: a new owner of the outbox may cancel again after a crash); a message that left the
    SMSC is too late; an ESME_ROK the query does not back (ENROUTE, UNKNOWN, no answer, query_sm
    unsupported) is unconfirmed; a refused cancel of a message still held is too late."""
    state = query.params.get("message_state") if query is not None and \
        query.status == CommandStatus.ESME_ROK else None
    if state == MessageState.DELETED:
        return CancelStatus.CANCELLED
    if state in LEFT or cancel != CommandStatus.ESME_ROK:
        return CancelStatus.TOO_LATE
    if query is not None and query.status in FORGOTTEN:
        return CancelStatus.CANCELLED
    return CancelStatus.UNCONFIRMED


def _read_pdu(sock: socket.socket) -> bytes:
    header = _read_exactly(sock, 4)
    return header + _read_exactly(sock, pdus.frame_length(header) - 4)


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    chunks: list[bytes] = []
    while count:
        chunk = sock.recv(count)
        if not chunk:
            raise ConnectionError("the SMSC closed the connection")
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)
