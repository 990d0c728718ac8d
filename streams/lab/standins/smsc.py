"""A local stand-in SMSC speaking SMPP 3.4 over TCP: binds (transmitter, receiver, transceiver)
checked against one system_id and password, ``submit_sm`` answered with a message_id, each
message held ``hold_s`` before it reaches the handset (so a stop can catch it), ``cancel_sm``
that removes a held message (``ESME_RCANCELFAIL`` once it left), ``validity_period`` enforced
(a message still held when it runs out expires), and a delivery receipt (``deliver_sm``,
appendix B text plus TLVs) for every message that asked for one, ``receipt_delay_s`` after the
delivery (a handset network's receipts lag). Receipts wait for a bound receiver of the same
system_id and are sent again until acknowledged, as an SMSC stores them. ``query_sm`` answers a
message's state (ENROUTE while held, DELIVERED, DELETED once cancelled, EXPIRED). ``max_rate``
answers ``ESME_RTHROTTLED`` past that many submits per second.

``quirks`` make it answer as real SMSCs do where they depart from that: ``SMPPSIM`` answers
ESME_ROK to ``cancel_sm`` of a message that already left (nothing is cancelled) and a query
failure for a message it cancelled, as the SMPPSim simulator does."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

from streams.clock import now_ms
from streams.lab.standins import Arrival, Arrivals, StandIn
from streams.providers import smpp_pdus as pdus
from streams.providers.exceptions import FramingError
from streams.providers.smpp_pdus import CommandId, CommandStatus, operations

log = logging.getLogger(__name__)

HELD, DELIVERED, CANCELLED, EXPIRED = "held", "delivered", "cancelled", "expired"
TICK_S = 0.1
RECEIPT_WINDOW = 1000  # receipts unacknowledged per bind
CAN_SUBMIT = {"transmitter", "transceiver"}
CAN_RECEIVE = {"receiver", "transceiver"}


def _tenths(when: datetime) -> datetime:
    """SMPP times carry tenths of a second; the codec rounds microseconds and fails from .95 s."""
    return when.replace(microsecond=when.microsecond // 100_000 * 100_000)


@dataclass(frozen=True, slots=True)
class SmscQuirks:
    """Where this SMSC answers as a real one does rather than as SMPP 3.4 reads."""

    # ESME_ROK to cancel_sm of a message that is no longer held (delivered, expired, cancelled);
    # only a held message is really cancelled.
    cancel_ok_after_delivery: bool = False
    # query_sm of a cancelled message fails (ESME_RQUERYFAIL, no body) instead of DELETED.
    forget_cancelled: bool = False
    query_sm: bool = True  # False: query_sm is not supported (generic_nack ESME_RINVCMDID)


SPEC = SmscQuirks()
SMPPSIM = SmscQuirks(cancel_ok_after_delivery=True, forget_cancelled=True)
QUERY_STATE = {HELD: pdus.MessageState.ENROUTE, DELIVERED: pdus.MessageState.DELIVERED,
               CANCELLED: pdus.MessageState.DELETED, EXPIRED: pdus.MessageState.EXPIRED}


@dataclass(slots=True)
class ShortMessage:
    message_id: str
    system_id: str
    source: str
    destination: str
    text: bytes
    submitted: datetime
    due_ms: int
    expires_ms: int | None
    wants_receipt: bool
    state: str = HELD
    done: datetime | None = None  # when it reached its final state


@dataclass(slots=True, eq=False)
class Session:
    writer: asyncio.StreamWriter
    system_id: str = ""
    bound: str = ""  # "", transmitter, receiver, transceiver
    sequence: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    unacked: dict[int, pdus.PDU] = field(default_factory=dict)  # receipts sent, by sequence

    def send(self, pdu: pdus.PDU | bytes) -> None:
        self.writer.write(pdu if isinstance(pdu, bytes) else pdus.encode(pdu))


@dataclass
class SmscCounts:
    submitted: int = 0
    throttled: int = 0
    cancelled: int = 0
    cancel_refused: int = 0  # ESME_RCANCELFAIL: the message had left
    cancel_ok_too_late: int = 0  # ESME_ROK for a message that had left (quirk), nothing cancelled
    queries: int = 0
    expired: int = 0
    receipts_acked: int = 0


class StandInSmsc(StandIn):
    name = "smsc"

    def __init__(self, port: int, system_id: str, password: str, hold_s: float,
                 max_rate: float | None = None, host: str = "127.0.0.1",
                 quirks: SmscQuirks = SPEC, receipt_delay_s: float = 0.0) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self.system_id = system_id
        self.password = password
        self.hold_ms = int(hold_s * 1000)
        self.max_rate = max_rate
        self.quirks = quirks
        self.receipt_delay_ms = int(receipt_delay_s * 1000)
        self.messages: dict[str, ShortMessage] = {}
        self.arrivals = Arrivals()
        self.counts = SmscCounts()
        self._due: list[tuple[int, str]] = []
        self._receipts_due: list[tuple[int, str]] = []  # (when its receipt leaves, message id)
        self._receipts: dict[str, deque[ShortMessage]] = {}
        self._sessions: set[Session] = set()
        self._ids = itertools.count(1)
        self._window_start = 0.0
        self._window_count = 0
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None

    # -- life ----------------------------------------------------------------------------------

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _stop(self) -> None:
        assert self._server is not None and self._ticker is not None
        self._ticker.cancel()
        self._server.close()
        for session in list(self._sessions):
            session.writer.close()
        await self._server.wait_closed()

    def states(self, contains: str) -> dict[str, int]:
        """How many messages whose text contains ``contains`` are in each state."""
        def count(smsc: StandInSmsc) -> dict[str, int]:
            found: dict[str, int] = {}
            for message in smsc.messages.values():
                if contains.encode() in message.text:
                    found[message.state] = found.get(message.state, 0) + 1
            return found
        return self.query(count)

    # -- sessions ------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(writer)
        self._sessions.add(session)
        try:
            while True:
                header = await reader.readexactly(4)
                data = header + await reader.readexactly(pdus.frame_length(header) - 4)
                if not self._handle(session, data):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, FramingError):
            pass
        finally:
            self._sessions.discard(session)
            self._requeue(session)
            writer.close()

    def _handle(self, session: Session, data: bytes) -> bool:
        """Answer one PDU; False ends the session."""
        try:
            pdu = pdus.decode(data)
        except pdus.PDUParseError as exc:
            sequence = pdus.sequence_of(data)
            session.send(operations.GenericNack(seqNum=sequence or 1, status=exc.status))
            return True
        command = pdu.id
        if command in (CommandId.bind_transmitter, CommandId.bind_receiver, CommandId.bind_transceiver):
            return self._bind(session, pdu)
        if command == CommandId.enquire_link:
            session.send(operations.EnquireLinkResp(seqNum=pdu.seqNum))
        elif command == CommandId.unbind:
            session.send(operations.UnbindResp(seqNum=pdu.seqNum))
            return False
        elif command == CommandId.submit_sm:
            session.send(self._submit(session, pdu))
        elif command == CommandId.cancel_sm:
            session.send(self._cancel(session, pdu))
        elif command == CommandId.query_sm and self.quirks.query_sm:
            session.send(self._query(session, pdu))
        elif command == CommandId.deliver_sm_resp:
            message = session.unacked.pop(pdu.seqNum, None)
            if message is not None:
                self.counts.receipts_acked += 1
            self._send_receipts(session.system_id)
        elif command in (CommandId.enquire_link_resp, CommandId.generic_nack):
            pass
        else:
            session.send(operations.GenericNack(seqNum=pdu.seqNum, status=CommandStatus.ESME_RINVCMDID))
        return True

    def _bind(self, session: Session, pdu: pdus.PDU) -> bool:
        kind = {CommandId.bind_transmitter: "transmitter", CommandId.bind_receiver: "receiver",
                CommandId.bind_transceiver: "transceiver"}[pdu.id]
        resp = {"transmitter": operations.BindTransmitterResp, "receiver": operations.BindReceiverResp,
                "transceiver": operations.BindTransceiverResp}[kind]
        system_id, password = pdus.text(pdu.params["system_id"]), pdus.text(pdu.params["password"])
        if session.bound:
            session.send(resp(seqNum=pdu.seqNum, status=CommandStatus.ESME_RALYBND))
            return True
        if system_id != self.system_id:
            session.send(resp(seqNum=pdu.seqNum, status=CommandStatus.ESME_RINVSYSID))
            return False
        if password != self.password:
            session.send(resp(seqNum=pdu.seqNum, status=CommandStatus.ESME_RINVPASWD))
            return False
        session.system_id, session.bound = system_id, kind
        session.send(resp(seqNum=pdu.seqNum, system_id="estop-standin"))
        self._send_receipts(system_id)
        return True

    def _submit(self, session: Session, pdu: pdus.PDU) -> pdus.PDU:
        if session.bound not in CAN_SUBMIT:
            return operations.SubmitSMResp(seqNum=pdu.seqNum, status=CommandStatus.ESME_RINVBNDSTS)
        if self._throttled():
            self.counts.throttled += 1
            return operations.SubmitSMResp(seqNum=pdu.seqNum, status=CommandStatus.ESME_RTHROTTLED)
        destination = pdus.text(pdu.params["destination_addr"])
        if not destination:
            return operations.SubmitSMResp(seqNum=pdu.seqNum, status=CommandStatus.ESME_RINVDSTADR)
        now = datetime.now(UTC)
        validity = pdus.seconds_of(pdu.params.get("validity_period"), now)
        if validity is not None and validity <= 0:
            return operations.SubmitSMResp(seqNum=pdu.seqNum, status=CommandStatus.ESME_RINVEXPIRY)
        submitted_ms = now_ms()
        registered = pdu.params.get("registered_delivery")
        no_receipt = pdus.pdu_types.RegisteredDeliveryReceipt.NO_SMSC_DELIVERY_RECEIPT_REQUESTED
        message = ShortMessage(
            message_id=f"{next(self._ids):x}", system_id=session.system_id,
            source=pdus.text(pdu.params["source_addr"]), destination=destination,
            text=pdu.params.get("short_message") or b"", submitted=now,
            due_ms=submitted_ms + self.hold_ms,
            expires_ms=None if validity is None else submitted_ms + int(validity * 1000),
            wants_receipt=registered is not None and registered.receipt != no_receipt)
        self.messages[message.message_id] = message
        heapq.heappush(self._due, (message.due_ms, message.message_id))
        self.counts.submitted += 1
        return operations.SubmitSMResp(seqNum=pdu.seqNum, message_id=message.message_id)

    def _throttled(self) -> bool:
        if self.max_rate is None:
            return False
        now = now_ms() / 1000
        if now - self._window_start >= 1.0:
            self._window_start, self._window_count = now, 0
        self._window_count += 1
        return self._window_count > self.max_rate

    def _cancel(self, session: Session, pdu: pdus.PDU) -> pdus.PDU:
        """SMPP 3.4 section 4.9: cancel a message still held, by message_id; the source address
        must match the submission's (and the destination too, when given)."""
        if session.bound not in CAN_SUBMIT:
            return operations.CancelSMResp(seqNum=pdu.seqNum, status=CommandStatus.ESME_RINVBNDSTS)
        message = self.messages.get(pdus.text(pdu.params.get("message_id")))
        if message is None or message.system_id != session.system_id:
            return operations.CancelSMResp(seqNum=pdu.seqNum, status=CommandStatus.ESME_RINVMSGID)
        destination = pdus.text(pdu.params.get("destination_addr"))
        if pdus.text(pdu.params.get("source_addr")) != message.source or (
                destination and destination != message.destination):
            return operations.CancelSMResp(seqNum=pdu.seqNum, status=CommandStatus.ESME_RINVSRCADR)
        if message.state != HELD:
            if self.quirks.cancel_ok_after_delivery:
                self.counts.cancel_ok_too_late += 1
                return operations.CancelSMResp(seqNum=pdu.seqNum)
            self.counts.cancel_refused += 1
            return operations.CancelSMResp(seqNum=pdu.seqNum, status=CommandStatus.ESME_RCANCELFAIL)
        message.state = CANCELLED
        message.done = _tenths(datetime.now(UTC))
        self.counts.cancelled += 1
        return operations.CancelSMResp(seqNum=pdu.seqNum)

    def _query(self, session: Session, pdu: pdus.PDU) -> pdus.PDU | bytes:
        """SMPP 3.4 section 4.8: the state of a message, by message_id and source address."""
        if session.bound not in CAN_SUBMIT:
            return pdus.error_response(CommandId.query_sm_resp, pdu.seqNum, CommandStatus.ESME_RINVBNDSTS)
        self.counts.queries += 1
        message = self.messages.get(pdus.text(pdu.params.get("message_id")))
        if (message is None or message.system_id != session.system_id
                or pdus.text(pdu.params.get("source_addr")) != message.source
                or (message.state == CANCELLED and self.quirks.forget_cancelled)):
            return pdus.error_response(CommandId.query_sm_resp, pdu.seqNum, CommandStatus.ESME_RQUERYFAIL)
        return operations.QuerySMResp(seqNum=pdu.seqNum, message_id=message.message_id,
                                      final_date=message.done, message_state=QUERY_STATE[message.state],
                                      error_code=0)

    # -- the network side ----------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            now = now_ms()
            self._deliver_due(now)
            while self._receipts_due and self._receipts_due[0][0] <= now:
                message = self.messages[heapq.heappop(self._receipts_due)[1]]
                self._receipts.setdefault(message.system_id, deque()).append(message)
            for system_id in list(self._receipts):
                self._send_receipts(system_id)
            await asyncio.sleep(TICK_S)

    def _deliver_due(self, now: int) -> None:
        while self._due and self._due[0][0] <= now:
            _, message_id = heapq.heappop(self._due)
            message = self.messages[message_id]
            if message.state != HELD:
                continue
            if message.expires_ms is not None and message.expires_ms <= now:
                message.state = EXPIRED
                self.counts.expired += 1
            else:
                message.state = DELIVERED
                self.arrivals.add(Arrival(message_id, message.destination,
                                          message.text.decode("latin-1"), now))
            message.done = _tenths(datetime.now(UTC))
            if message.wants_receipt:
                heapq.heappush(self._receipts_due, (now + self.receipt_delay_ms, message_id))

    def _send_receipts(self, system_id: str) -> None:
        waiting = self._receipts.get(system_id)
        if not waiting:
            return
        for session in self._sessions:
            if session.system_id != system_id or session.bound not in CAN_RECEIVE:
                continue
            while waiting and len(session.unacked) < RECEIPT_WINDOW:
                message = waiting.popleft()
                stat = pdus.DELIVERED if message.state == DELIVERED else pdus.EXPIRED
                sequence = next(session.sequence)
                receipt = pdus.receipt(sequence, message.message_id, message.source,
                                       message.destination, stat, message.submitted,
                                       datetime.now(UTC), message.text)
                session.unacked[sequence] = receipt
                session.send(receipt)

    def _requeue(self, session: Session) -> None:
        """Receipts a closed session never acknowledged are sent again to the next receiver."""
        if not session.unacked:
            return
        waiting = self._receipts.setdefault(session.system_id, deque())
        for receipt in session.unacked.values():
            message_id, _ = pdus.receipt_fields(receipt) or ("", "")
            waiting.appendleft(self.messages[message_id])
        session.unacked.clear()
