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

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from streams.kafka.clients import Headers
from streams.models import HEADER_CAMPAIGN, HEADER_CHANNEL, HEADER_STAGE, NOT_SENT_EVENT
from streams.serde import Serde
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
MEMO_SIZE = 4096  # distinct record ends a FlatDecoder remembers (a bound only)


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

    def records(self, held: Sequence[tuple[bytes, bytes, object]], occurred_at: int
                ) -> list[tuple[bytes, bytes]]:
        """(key, value) of the events of many messages at one time, each given as its id and
        recipient in UTF-8 (and its stop): the same bytes as ``encode``, without a call per
        message."""
        head, campaign_channel, tail, at = self._head, self._campaign_channel, self._tail, _long(occurred_at)
        small, join = _SMALL, b"".join
        return [(mid, join((head, small[len(mid)] if len(mid) < 256 else _long(len(mid)), mid,
                            campaign_channel, small[len(rid)] if len(rid) < 256 else _long(len(rid)),
                            rid, tail, at)))
                for mid, rid, _ in held]


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


# How each flat field type is read, as source lines of the decoder built for a schema (below);
# ``{v}`` is the field's variable. A string's length is read inline when it fits one byte.
_STRING = """\
b = buf[pos]
if b < 0x80:
    n = (b >> 1) ^ -(b & 1)
    pos += 1
else:
    n, pos = read_long(buf, pos)
if n < 0 or pos + n > end:
    raise SerdeError(what + ": string past the end")
{v} = buf[pos:pos + n].decode()
pos += n
"""
_LONG = "{v}, pos = read_long(buf, pos)\n"
_STRINGS = """\
if buf[pos] == 0:
    {v} = []
    pos += 1
else:
    {v}, pos = read_strings(buf, pos, what)
"""


def _nullable(read: str) -> str:
    inner = "".join("    " + line + "\n" for line in read.splitlines())
    return ("b, pos = read_long(buf, pos)\nif b == 0:\n    {v} = None\nelif b == 1:\n" + inner
            + "else:\n    raise SerdeError(what + \": bad union branch\")\n")


_READERS: dict[Any, str] = {"string": _STRING, "long": _LONG, ("null", "string"): _nullable(_STRING),
                            ("null", "long"): _nullable(_LONG), ("array", "string"): _STRINGS}


def _reader(avro_type: Any) -> str | None:
    if isinstance(avro_type, dict):
        return _READERS.get((avro_type.get("type"), avro_type.get("items")))
    return _READERS.get(tuple(avro_type) if isinstance(avro_type, list) else avro_type)


def _read_strings(buf: bytes, pos: int, what: str) -> tuple[list[str], int]:
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
                raise SerdeError(what + ": string past the end")
            items.append(buf[pos:pos + size].decode())
            pos += size


class FlatDecoder:
    """Reads values of a flat record schema (strings, longs, nullable strings and longs, arrays
    of strings: NotSentEvent, ControlCommand) written with the serde's own schema, single-object
    or in the Confluent wire format once its id is known; any other writer (an older version)
    goes through the generic decode.

    The body reader is one straight-line function generated from the schema's fields at
    construction: no per-field dispatch or call per string, which is what makes it faster than
    a generic reader in Python."""

    def __init__(self, serde: Serde, shared_from: str | None = None) -> None:
        """``shared_from`` names the field from which on many values end alike (a stop's notSent
        events: stage, reason, stop and the time of their batch): each distinct end is read once
        and remembered (reading the same bytes from the same field always gives the same
        values, Avro having no reference back)."""
        self._serde = serde
        fields = serde.schema.definition["fields"]
        names = [f["name"] for f in fields]
        split = names.index(shared_from) if shared_from is not None else len(fields)
        if any(isinstance(f["type"], dict) for f in fields[split:]):
            raise SerdeError(f"{serde.schema.name}: an array cannot be shared between values")
        reads: list[list[str]] = []
        for index, field in enumerate(fields):
            read = _reader(field["type"])
            if read is None:
                raise SerdeError(f"{serde.schema.name}.{field['name']} is not flat: no fast decoder")
            reads.append(["    " + line for line in read.format(v=f"v{index}").splitlines()])
        head = ["def body(buf, pos):", "    end = len(buf)", *(line for r in reads[:split] for line in r)]
        ending = ["    if pos != end:",
                  "        raise SerdeError(f'{what}: {end - pos} bytes after the record')"]
        record = "    return {" + ", ".join(f"{name!r}: v{i}" for i, name in enumerate(names)) + "}"
        if split == len(fields):
            lines = [*head, *ending, record]
        else:
            shared = ", ".join(f"v{i}" for i in range(split, len(fields)))
            lines = [*head,
                     "    rest = buf[pos:]",
                     "    found = memo.get(rest)",
                     "    if found is None:",
                     "        found = rest_of(buf, pos)",
                     "        if len(memo) >= MEMO_SIZE:",
                     "            memo.clear()",
                     "        memo[rest] = found",
                     f"    {shared}, = found",
                     record,
                     "def rest_of(buf, pos):", "    end = len(buf)",
                     *(line for r in reads[split:] for line in r), *ending,
                     f"    return {shared},"]
        namespace: dict[str, Any] = {"read_long": _read_long, "read_strings": _read_strings,
                                     "SerdeError": SerdeError, "memo": {}, "MEMO_SIZE": MEMO_SIZE,
                                     "what": f"corrupt {serde.schema.name} body"}
        exec(compile("\n".join(lines), f"<{serde.schema.name} decoder>", "exec"), namespace)
        self._body: Callable[[bytes, int], dict[str, Any]] = namespace["body"]
        self._what = namespace["what"]

    def decode(self, value: bytes | None) -> dict[str, Any]:
        offset = self._serde.own_body_offset(value) if value else None
        if not value or offset is None:
            return self._serde.decode(value)
        try:
            return self._body(value, offset)
        except IndexError as exc:
            raise SerdeError(f"{self._what}: cut short") from exc
        except UnicodeDecodeError as exc:
            raise SerdeError(f"{self._what}: invalid UTF-8") from exc


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
