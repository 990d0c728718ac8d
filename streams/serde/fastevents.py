"""The notSent event of a held-back message without a generic encode, and read back without a
generic decode: the two hot paths of a stop (draining a stopped backlog, storing it in
analytics).

A stop turns every pending message of a campaign into a notSent event that differs from the
next only by message id, recipient id and time. ``NotSentEncoder`` encodes everything else once
per stop and stage (Avro binary encoding is a concatenation of the fields in schema order), and
the send request's recipient travels in the ``recipient_id`` header, so a held-back request needs
no decode at all: its key is the message id, its headers name the campaign, channel and
recipient. ``FlatDecoder`` reads such flat records (and the control commands a starting process
reads by the million) directly. Both produce and read
exactly fastavro's bytes (tests/foundation/test_fastevents.py), and refuse a schema whose
fields are not the ones written out here."""

from __future__ import annotations

from typing import Any, Protocol

from streams.kafka.clients import Headers
from streams.models import HEADER_CAMPAIGN, HEADER_CHANNEL, HEADER_STAGE, NOT_SENT_EVENT
from streams.serde import SINGLE_OBJECT_HEADER_SIZE, Serde
from streams.serde.exceptions import SerdeError

# NotSentEvent's fields in schema order, each with the Avro type this module writes and reads.
NOT_SENT_FIELDS = (
    ("event", "string"),
    ("message_id", "string"),
    ("campaign_id", "string"),
    ("channel", "string"),
    ("recipient_id", "string"),
    ("stage", "string"),
    ("reason", "string"),
    ("stop_command_id", ("null", "string")),
    ("stop_requested_at", ("null", "long")),
    ("occurred_at", "long"),
)
MAX_ENCODERS = 10_000  # stops a stage keeps encoders for; stops are rare, this is a bound only


def _long(value: int) -> bytes:
    """Avro long: zigzag, then base-128 varint, low group first."""
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [_long(n) for n in range(256)]  # lengths of short strings, looked up, not computed


def _string(value: str) -> bytes:
    data = value.encode()
    size = len(data)
    return (_SMALL[size] if size < 256 else _long(size)) + data


def _check_schema(serde: Serde) -> None:
    fields = serde.schema.definition["fields"]
    found = tuple((f["name"], tuple(f["type"]) if isinstance(f["type"], list) else f["type"])
                  for f in fields)
    if found != NOT_SENT_FIELDS:
        raise SerdeError(f"{serde.schema.name} changed: update streams/serde/fastevents.py")


class NotSentEncoder:
    """The notSent events of one stop at one stage of one channel."""

    def __init__(self, serde: Serde, event: str, campaign_id: str, channel: str, stage: str,
                 reason: str, stop_command_id: str | None, stop_requested_at: int | None) -> None:
        _check_schema(serde)
        self._head = serde.prefix() + _string(event)
        self._campaign_channel = _string(campaign_id) + _string(channel)
        self._tail = (_string(stage) + _string(reason)
                      + (b"\x00" if stop_command_id is None else b"\x02" + _string(stop_command_id))
                      + (b"\x00" if stop_requested_at is None else b"\x02" + _long(stop_requested_at)))
        self._at = (0, _long(0))  # the last occurred_at, encoded: a batch shares one


    def encode(self, message_id: str | bytes, recipient_id: str | bytes, occurred_at: int) -> bytes:
        """The event's value; the ids as text or as their UTF-8 bytes (a key, a header)."""
        mid = message_id if isinstance(message_id, bytes) else message_id.encode()
        rid = recipient_id if isinstance(recipient_id, bytes) else recipient_id.encode()
        if occurred_at != self._at[0]:
            self._at = (occurred_at, _long(occurred_at))
        return b"".join((self._head, _SMALL[len(mid)] if len(mid) < 256 else _long(len(mid)), mid,
                         self._campaign_channel,
                         _SMALL[len(rid)] if len(rid) < 256 else _long(len(rid)), rid,
                         self._tail, self._at[1]))


def _read_long(buf: bytes, pos: int) -> tuple[int, int]:
    byte = buf[pos]
    if byte < 0x80:
        return (byte >> 1) ^ -(byte & 1), pos + 1
    n = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7
        if shift > 63:
            raise SerdeError("corrupt Avro body: varint too long")


# Field kinds: string, long, nullable string, nullable long, array of strings.
_KINDS = {"string": 0, "long": 1, ("null", "string"): 2, ("null", "long"): 3}
_STRING_ARRAY = 4


def _kind(avro_type: Any) -> int | None:
    if isinstance(avro_type, dict):
        is_strings = avro_type.get("type") == "array" and avro_type.get("items") == "string"
        return _STRING_ARRAY if is_strings else None
    return _KINDS.get(tuple(avro_type) if isinstance(avro_type, list) else avro_type)


class FlatDecoder:
    """Reads values of a flat record schema (strings, longs, nullable strings and longs, arrays
    of strings: NotSentEvent, ControlCommand) written with the serde's own schema; any other
    writer (an older version, the Confluent wire format) goes through the generic decode."""

    def __init__(self, serde: Serde) -> None:
        self._serde = serde
        self._fields: list[tuple[str, int]] = []
        for field in serde.schema.definition["fields"]:
            kind = _kind(field["type"])
            if kind is None:
                raise SerdeError(f"{serde.schema.name}.{field['name']} is not flat: no fast decoder")
            self._fields.append((field["name"], kind))
        self._what = f"corrupt {serde.schema.name} body"

    def decode(self, value: bytes | None) -> dict[str, Any]:
        if not value or not self._serde.is_own_single_object(value):
            return self._serde.decode(value)
        try:
            return self._body(value, SINGLE_OBJECT_HEADER_SIZE)
        except IndexError as exc:
            raise SerdeError(f"{self._what}: cut short") from exc
        except UnicodeDecodeError as exc:
            raise SerdeError(f"{self._what}: invalid UTF-8") from exc

    def _body(self, buf: bytes, pos: int) -> dict[str, Any]:
        """The fields in order; a one-byte varint (a string under 64 bytes) is read inline."""
        record: dict[str, Any] = {}
        end = len(buf)
        for name, kind in self._fields:
            if kind == 0 or kind == 2:
                if kind == 2:  # nullable string: the union branch first
                    branch, pos = _read_long(buf, pos)
                    if branch == 0:
                        record[name] = None
                        continue
                    if branch != 1:
                        raise SerdeError(f"{self._what}: bad union branch")
                byte = buf[pos]
                if byte < 0x80:
                    size, pos = (byte >> 1) ^ -(byte & 1), pos + 1
                else:
                    size, pos = _read_long(buf, pos)
                if size < 0 or pos + size > end:
                    raise SerdeError(f"{self._what}: string past the end")
                record[name] = buf[pos:pos + size].decode()
                pos += size
            elif kind == 1:
                record[name], pos = _read_long(buf, pos)
            elif kind == 3:
                branch, pos = _read_long(buf, pos)
                if branch == 0:
                    record[name] = None
                elif branch == 1:
                    record[name], pos = _read_long(buf, pos)
                else:
                    raise SerdeError(f"{self._what}: bad union branch")
            else:
                record[name], pos = self._strings(buf, pos)
        if pos != end:
            raise SerdeError(f"{self._what}: {end - pos} bytes after the record")
        return record

    def _strings(self, buf: bytes, pos: int) -> tuple[list[str], int]:
        """An array of strings: blocks of items, a block of 0 ends it."""
        items: list[str] = []
        while True:
            count, pos = _read_long(buf, pos)
            if count == 0:
                return items, pos
            if count < 0:  # a block that also gives its size in bytes
                count = -count
                _, pos = _read_long(buf, pos)
            for _ in range(count):
                size, pos = _read_long(buf, pos)
                if size < 0 or pos + size > len(buf):
                    raise SerdeError(f"{self._what}: string past the end")
                items.append(buf[pos:pos + size].decode())
                pos += size


class StopLike(Protocol):
    """What an event needs of a stop (``streams.control.view.Stop``)."""

    @property
    def campaign_id(self) -> str: ...

    @property
    def command_id(self) -> str: ...

    @property
    def requested_at(self) -> int: ...

    @property
    def reason(self) -> str: ...


class HeldBackEvents:
    """The notSent encoders (and record headers) of one stage of one channel, one per stop met."""

    def __init__(self, serde: Serde, channel: str, stage: str, reason_prefix: str) -> None:
        self._serde = serde
        self._channel = channel
        self._event = NOT_SENT_EVENT[channel]
        self._stage = stage
        self._prefix = reason_prefix
        self._encoders: dict[tuple[str, str], tuple[NotSentEncoder, Headers]] = {}

    def for_stop(self, stop: StopLike) -> tuple[NotSentEncoder, Headers]:
        """The encoder of this stop's events and the headers every one of them carries."""
        key = (stop.campaign_id, stop.command_id)
        found = self._encoders.get(key)
        if found is None:
            if len(self._encoders) >= MAX_ENCODERS:
                self._encoders.clear()
            found = (NotSentEncoder(self._serde, self._event, stop.campaign_id, self._channel,
                                    self._stage, self._prefix + stop.reason, stop.command_id,
                                    stop.requested_at),
                     [(HEADER_CAMPAIGN, stop.campaign_id.encode()),
                      (HEADER_CHANNEL, self._channel.encode()), (HEADER_STAGE, self._stage.encode())])
            self._encoders[key] = found
        return found
