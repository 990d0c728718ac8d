"""SMPP 3.4 PDUs for the SMS adapter and the local stand-in SMSC, on the ``smpp.pdu3`` codec (the
PyPI library that encodes ``cancel_sm``; ``smpplib`` cannot). This module frames PDUs on a byte
stream and builds the few this project sends; the codec does the field encoding."""

from __future__ import annotations

import io
import struct
from datetime import UTC, datetime
from typing import Any

from smpp.pdu import constants, operations, pdu_types, smpp_time
from smpp.pdu.error import PDUParseError
from smpp.pdu.pdu_encoding import PDUEncoder
from smpp.pdu.pdu_types import PDU, CommandId, CommandStatus, MessageState

from streams.providers.exceptions import FramingError

# smpp.pdu3 0.6 prints the last character of every time string it parses (a leftover debug
# print in smpp_time.parse); shadow it so a validity_period does not write to stdout.
smpp_time.print = lambda *args, **kwargs: None

HEADER = struct.Struct(">IIII")
MAX_PDU = 64 * 1024
INTERFACE_VERSION = 0x34
RESPONSE_BIT = 0x80000000  # set in the command_id of every response
_ENCODER = PDUEncoder()

# Receipt states (SMPP 3.4 appendix B "stat:" values).
DELIVERED, EXPIRED, DELETED, UNDELIVERABLE, REJECTED = "DELIVRD", "EXPIRED", "DELETED", "UNDELIV", "REJECTD"


def encode(pdu: PDU) -> bytes:
    return bytes(_ENCODER.encode(pdu))


def frame_length(header: bytes) -> int:
    """The command_length of a PDU from its first four bytes."""
    (length,) = struct.unpack(">I", header[:4])
    if not HEADER.size <= length <= MAX_PDU:
        raise FramingError(f"command_length {length} out of range")
    return int(length)


def decode(data: bytes) -> PDU:
    """One whole PDU (as framed by ``frame_length``); PDUParseError for a body that is not valid.
    A response with an error status and no body (SMSCs may leave it out, e.g. a failed
    ``query_sm_resp``) decodes to that response without parameters."""
    try:
        return _ENCODER.decode(io.BytesIO(data))
    except PDUParseError:
        _, command, status, sequence = HEADER.unpack(data[:HEADER.size])
        if len(data) != HEADER.size or not status or not command & RESPONSE_BIT:
            raise
        name = constants.command_id_value_map.get(command)
        status_name = constants.command_status_value_map.get(status, {}).get("name")
        if name is None or status_name is None:
            raise  # an unknown command or status: the body's error stands
        klass = operations.getPDUClass(CommandId[name])
        return klass(seqNum=sequence, status=CommandStatus[status_name])


def sequence_of(data: bytes) -> int:
    """The sequence_number of a framed PDU, also of one whose body does not decode."""
    return int(HEADER.unpack(data[:HEADER.size])[3])


def text(value: Any) -> str:
    """A C-octet string field as str (the codec gives bytes, or None for an empty field)."""
    if value is None:
        return ""
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def relative_time(seconds: int) -> smpp_time.SMPPRelativeTime:
    """An SMPP relative time (validity_period) of this many seconds."""
    days, rest = divmod(max(int(seconds), 1), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return smpp_time.SMPPRelativeTime(0, 0, days, hours, minutes, secs)


def seconds_of(period: Any, now: datetime) -> float | None:
    """How long a validity_period (relative or absolute) lasts from ``now``; None when unset."""
    if period is None:
        return None
    if isinstance(period, smpp_time.SMPPRelativeTime):
        return float(((period.years * 365 + period.months * 30 + period.days) * 24 + period.hours) * 3600
                     + period.minutes * 60 + period.seconds)
    when = period if period.tzinfo else period.replace(tzinfo=UTC)
    return (when - now).total_seconds()


def bind(kind: str, sequence: int, system_id: str, password: str) -> PDU:
    klass = {"transmitter": operations.BindTransmitter, "transceiver": operations.BindTransceiver,
             "receiver": operations.BindReceiver}[kind]
    return klass(seqNum=sequence, system_id=system_id, password=password, system_type="",
                 interface_version=INTERFACE_VERSION, addr_ton=pdu_types.AddrTon.UNKNOWN,
                 addr_npi=pdu_types.AddrNpi.UNKNOWN, address_range="")


def submit_sm(sequence: int, source: str, destination: str, message: bytes, validity_s: int) -> PDU:
    """A submit_sm asking for a delivery receipt (registered_delivery: final outcome)."""
    return operations.SubmitSM(
        seqNum=sequence, service_type="", source_addr_ton=pdu_types.AddrTon.ALPHANUMERIC,
        source_addr_npi=pdu_types.AddrNpi.UNKNOWN, source_addr=source,
        dest_addr_ton=pdu_types.AddrTon.INTERNATIONAL, dest_addr_npi=pdu_types.AddrNpi.ISDN,
        destination_addr=destination,
        esm_class=pdu_types.EsmClass(pdu_types.EsmClassMode.DEFAULT, pdu_types.EsmClassType.DEFAULT),
        protocol_id=0, priority_flag=pdu_types.PriorityFlag.LEVEL_0, schedule_delivery_time=None,
        validity_period=relative_time(validity_s),
        registered_delivery=pdu_types.RegisteredDelivery(
            pdu_types.RegisteredDeliveryReceipt.SMSC_DELIVERY_RECEIPT_REQUESTED),
        replace_if_present_flag=pdu_types.ReplaceIfPresentFlag.DO_NOT_REPLACE,
        data_coding=pdu_types.DataCoding(), sm_default_msg_id=0, short_message=message)


def cancel_sm(sequence: int, message_id: str, source: str) -> PDU:
    """Cancel one message by the SMSC's message_id (the destination is optional with an id)."""
    return operations.CancelSM(
        seqNum=sequence, service_type="", message_id=message_id,
        source_addr_ton=pdu_types.AddrTon.ALPHANUMERIC, source_addr_npi=pdu_types.AddrNpi.UNKNOWN,
        source_addr=source, dest_addr_ton=pdu_types.AddrTon.UNKNOWN,
        dest_addr_npi=pdu_types.AddrNpi.UNKNOWN, destination_addr="")


def query_sm(sequence: int, message_id: str, source: str) -> PDU:
    """Ask the state of one message by the SMSC's message_id (SMPP 3.4 section 4.8)."""
    return operations.QuerySM(seqNum=sequence, message_id=message_id,
                              source_addr_ton=pdu_types.AddrTon.ALPHANUMERIC,
                              source_addr_npi=pdu_types.AddrNpi.UNKNOWN, source_addr=source)


def error_response(command: CommandId, sequence: int, status: CommandStatus) -> bytes:
    """A response of ``command`` with an error status and no body, as SMSCs send failures."""
    value = next(v for v, name in constants.command_id_value_map.items() if name == command.name)
    code = next(v for v, entry in constants.command_status_value_map.items()
                if entry["name"] == status.name)
    return HEADER.pack(HEADER.size, value, code, sequence)


def receipt(sequence: int, message_id: str, source: str, destination: str, stat: str,
            submitted: datetime, done: datetime, message: bytes) -> PDU:
    """A delivery receipt: deliver_sm with esm_class "SMSC delivery receipt", the appendix B text,
    and the receipted_message_id / message_state TLVs."""
    state = {DELIVERED: pdu_types.MessageState.DELIVERED, EXPIRED: pdu_types.MessageState.EXPIRED,
             DELETED: pdu_types.MessageState.DELETED, UNDELIVERABLE: pdu_types.MessageState.UNDELIVERABLE,
             REJECTED: pdu_types.MessageState.REJECTED}[stat]
    delivered = "001" if stat == DELIVERED else "000"
    body = (f"id:{message_id} sub:001 dlvrd:{delivered} submit date:{submitted:%y%m%d%H%M} "
            f"done date:{done:%y%m%d%H%M} stat:{stat} err:000 text:").encode() + message[:20]
    return operations.DeliverSM(
        seqNum=sequence, service_type="", source_addr_ton=pdu_types.AddrTon.INTERNATIONAL,
        source_addr_npi=pdu_types.AddrNpi.ISDN, source_addr=destination,
        dest_addr_ton=pdu_types.AddrTon.ALPHANUMERIC, dest_addr_npi=pdu_types.AddrNpi.UNKNOWN,
        destination_addr=source,
        esm_class=pdu_types.EsmClass(pdu_types.EsmClassMode.DEFAULT,
                                     pdu_types.EsmClassType.SMSC_DELIVERY_RECEIPT),
        protocol_id=0, priority_flag=pdu_types.PriorityFlag.LEVEL_0, schedule_delivery_time=None,
        validity_period=None,
        registered_delivery=pdu_types.RegisteredDelivery(
            pdu_types.RegisteredDeliveryReceipt.NO_SMSC_DELIVERY_RECEIPT_REQUESTED),
        replace_if_present_flag=pdu_types.ReplaceIfPresentFlag.DO_NOT_REPLACE,
        data_coding=pdu_types.DataCoding(), sm_default_msg_id=0, short_message=body,
        receipted_message_id=message_id, message_state=state)


def receipt_fields(pdu: PDU) -> tuple[str, str] | None:
    """(message_id, stat) of a deliver_sm that is a delivery receipt; None for any other."""
    esm = pdu.params.get("esm_class")
    if esm is None or esm.type != pdu_types.EsmClassType.SMSC_DELIVERY_RECEIPT:
        return None
    fields = dict(part.split(":", 1) for part in text(pdu.params.get("short_message")).split(" ")
                  if ":" in part)
    message_id = text(pdu.params.get("receipted_message_id")) or fields.get("id", "")
    return message_id, fields.get("stat", "")


__all__ = ["PDU", "CommandId", "CommandStatus", "MessageState", "PDUParseError", "operations"]
