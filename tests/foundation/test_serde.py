"""Avro serde: every schema round-trips, versions evolve both ways, bad bytes fail loudly.

No broker needed: these pin down the bytes every producer and consumer of the project agree on.
"""

from __future__ import annotations

import copy
import io
import json
import random
import struct
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form
from fastavro.utils import generate_many

from streams.exceptions import EstopError
from streams.serde import SCHEMA_DIR, Schema, Serde, Serdes, load_schema
from streams.serde.exceptions import SerdeError, UnknownSchemaError
from streams.serde.fingerprint import crc64_avro

SCHEMA_FILES = sorted(SCHEMA_DIR.glob("*.avsc"))

SEND_REQUEST: dict[str, Any] = {
    "message_id": "m-000001",
    "campaign_id": "spring-sale",
    "channel": "email",
    "recipient_id": "r-42",
    "payload": "Use code SPRING25 for 25% off — ünïcödé too",
    "requested_at": 1_732_600_000_000,
}

# Hand-written records per schema: realistic values and both branches of every union.
SAMPLES: dict[str, list[dict[str, Any]]] = {
    "SendRequest": [SEND_REQUEST, {**SEND_REQUEST, "payload": "", "requested_at": 0}],
    "ControlCommand": [
        {
            "command_id": "cmd-1",
            "campaign_id": "spring-sale",
            "action": "stop",
            "channels": [],
            "reason": "wrong discount code",
            "requested_by": "alice",
            "requested_at": 1_732_600_001_000,
        },
        {
            "command_id": "cmd-2",
            "campaign_id": "spring-sale",
            "action": "stop",
            "channels": ["sms", "push"],
            "reason": "wrong audience",
            "requested_by": "bob",
            "requested_at": 1_732_600_002_000,
        },
    ],
    "CampaignStatus": [
        {
            "campaign_id": "spring-sale",
            "state": "Sending",
            "channels": ["email", "sms"],
            "planned": {"email": 400_000, "sms": 100_000},
            "queued": {"email": 12_000},
            "updated_at": 1_732_600_000_500,
            "stop": None,
        },
        {
            "campaign_id": "spring-sale",
            "state": "Stopped",
            "channels": ["email", "sms"],
            "planned": {"email": 400_000, "sms": 100_000},
            "queued": {"email": 400_000, "sms": 100_000},
            "updated_at": 1_732_600_003_000,
            "stop": {
                "command_id": "cmd-1",
                "requested_at": 1_732_600_001_000,
                "requested_by": "alice",
                "reason": "wrong discount code",
                "channels": [],
            },
        },
    ],
    "SentEvent": [
        {
            "event": "message.sent",
            "message_id": "m-000001",
            "campaign_id": "spring-sale",
            "channel": "email",
            "recipient_id": "r-42",
            "handed_at": 1_732_600_000_900,
            "occurred_at": 1_732_600_001_200,
        }
    ],
    "NotSentEvent": [
        {
            "event": "sms.notSent",
            "message_id": "m-000002",
            "campaign_id": "spring-sale",
            "channel": "sms",
            "recipient_id": "r-43",
            "stage": "provider",
            "reason": "campaign stopped",
            "stop_command_id": "cmd-1",
            "stop_requested_at": 1_732_600_001_000,
            "occurred_at": 1_732_600_001_300,
        },
        {
            "event": "push.notSent",
            "message_id": "m-000003",
            "campaign_id": "spring-sale",
            "channel": "push",
            "recipient_id": "r-44",
            "stage": "sending",
            "reason": "campaign stopped",
            "stop_command_id": None,
            "stop_requested_at": None,
            "occurred_at": 1_732_600_001_400,
        },
    ],
    "FailedEvent": [
        {
            "event": "webpush.failed",
            "message_id": "m-000004",
            "campaign_id": "spring-sale",
            "channel": "webpush",
            "recipient_id": "r-45",
            "attempts": 4,
            "error": "timeout",
            "occurred_at": 1_732_600_001_500,
        }
    ],
    "ControlAck": [
        {
            "process_id": "gate.email@host:123",
            "roles": ["gate.email", "dispatcher.email"],
            "command_id": "cmd-1",
            "campaign_id": "spring-sale",
            "command_requested_at": 1_732_600_001_000,
            "applied_at": 1_732_600_001_050,
            "halted": 1234,
        }
    ],
    "AuditEvent": [
        {
            "audit_id": "a-1",
            "at": 1_732_600_001_000,
            "action": "stop",
            "outcome": "refused",
            "actor": "viewer-1",
            "role": "viewer",
            "via": "http",
            "source": "127.0.0.1",
            "principal": "control",
            "campaign_id": "spring-sale",
            "command_id": None,
            "reason": "wrong discount code",
            "channels": [],
            "detail": "403: role viewer may not stop a campaign (needs operator)",
        }
    ],
}


def serde_by_schema_name(serdes: Serdes) -> dict[str, Serde]:
    """The project's serdes keyed by the Avro record name they encode."""
    return {s.schema.name: s for s in vars(serdes).values() if isinstance(s, Serde)}


def schema_definition(path: Path) -> dict[str, Any]:
    definition: dict[str, Any] = json.loads(path.read_text())
    return definition


def send_request_v2() -> Schema:
    """SendRequest plus a field with a default, inserted mid-record so that reading without
    schema resolution would misread every later field rather than pass by accident."""
    definition = copy.deepcopy(schema_definition(SCHEMA_DIR / "SendRequest.avsc"))
    fields = definition["fields"]
    at = next(i for i, f in enumerate(fields) if f["name"] == "recipient_id") + 1
    fields.insert(at, {"name": "priority", "type": "int", "default": 5})
    return Schema(definition)


# -- every schema ----------------------------------------------------------------------------


def test_every_schema_file_has_a_serde_and_samples() -> None:
    """A schema added to schemas/ without a serde (or without test data) is caught here."""
    names = {schema_definition(p)["name"] for p in SCHEMA_FILES}
    assert names == {
        "SendRequest", "ControlCommand", "CampaignStatus", "SentEvent", "NotSentEvent",
        "FailedEvent", "ControlAck", "AuditEvent",
    }
    assert set(serde_by_schema_name(Serdes())) == names
    assert set(SAMPLES) == names


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.stem)
def test_round_trip(path: Path) -> None:
    """Whatever a stage writes, the next stage reads back unchanged."""
    serde = serde_by_schema_name(Serdes())[schema_definition(path)["name"]]
    for record in SAMPLES[serde.schema.name]:
        assert serde.decode(serde.encode(record)) == record


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.stem)
def test_round_trip_generated_records(path: Path) -> None:
    """Extreme values (negative longs, long strings, big maps) survive too."""
    serde = serde_by_schema_name(Serdes())[schema_definition(path)["name"]]
    random.seed(path.stem)  # generate_many draws from the module's generator: keep it repeatable
    for record in generate_many(serde.schema.parsed, 25):
        assert serde.decode(serde.encode(record)) == record


def test_encoding_a_bad_record_raises_serde_error() -> None:
    """A record that does not fit its schema is refused with the project's error, not a crash."""
    serde = Serdes().send_request
    incomplete = {k: v for k, v in SEND_REQUEST.items() if k != "campaign_id"}
    with pytest.raises(SerdeError, match="cannot encode SendRequest"):
        serde.encode(incomplete)
    with pytest.raises(SerdeError, match="cannot encode SendRequest"):
        serde.encode({**SEND_REQUEST, "requested_at": "yesterday"})


# -- the single-object encoding, byte for byte -----------------------------------------------


def test_single_object_header_is_magic_then_little_endian_fingerprint() -> None:
    """Any Avro implementation must find the schema from these 10 bytes (Avro spec)."""
    path = SCHEMA_DIR / "SendRequest.avsc"
    canonical = to_parsing_canonical_form(fastavro.parse_schema(schema_definition(path)))
    expected = fingerprint(canonical, "CRC-64-AVRO")  # fastavro: the 8 bytes, little-endian, hex

    value = Serdes().send_request.encode(SEND_REQUEST)

    assert value[:2] == b"\xc3\x01"
    assert value[2:10] == bytes.fromhex(expected)
    assert struct.unpack("<Q", value[2:10])[0] == load_schema("SendRequest").fingerprint
    # The rest is the plain Avro binary body: another Avro library decodes it on its own.
    body = io.BytesIO(value[10:])
    assert fastavro.schemaless_reader(body, fastavro.parse_schema(schema_definition(path))) == (
        SEND_REQUEST
    )


def test_fingerprint_matches_the_avro_reference_value() -> None:
    """The Java implementation's CRC-64-AVRO of the schema "null" (Avro's own test data)."""
    assert crc64_avro(b'"null"') == 7195948357588979594


# -- schema evolution ------------------------------------------------------------------------


def test_v1_reader_reads_v2_data() -> None:
    """An old consumer keeps working while producers roll out a schema with a new field."""
    v1, v2 = load_schema("SendRequest"), send_request_v2()
    assert v1.fingerprint != v2.fingerprint
    written = Serde(v2).encode({**SEND_REQUEST, "priority": 9})

    reader = Serde(v1)
    with pytest.raises(UnknownSchemaError):
        reader.decode(written)  # v2 unknown to this reader yet: refused, never misread
    reader.add_writer(v2)

    assert reader.decode(written) == SEND_REQUEST


def test_v2_reader_reads_v1_data_with_the_default() -> None:
    """A new consumer reads records written before the field existed; the default fills it."""
    v1, v2 = load_schema("SendRequest"), send_request_v2()
    written = Serde(v1).encode(SEND_REQUEST)

    reader = Serde(v2)
    reader.add_writer(v1)

    assert reader.decode(written) == {**SEND_REQUEST, "priority": 5}


def test_project_serde_decodes_a_run_of_v2_records() -> None:
    """Every record decoded through schema resolution has the reader's fields only."""
    v2 = send_request_v2()
    serde = Serdes().send_request
    serde.add_writer(v2)
    records = [{**SEND_REQUEST, "message_id": f"m-{i}", "priority": i} for i in range(5)]
    decoded = [serde.decode(Serde(v2).encode(r)) for r in records]
    assert decoded == [{k: v for k, v in r.items() if k != "priority"} for r in records]


# -- undecodable bytes -----------------------------------------------------------------------


def _valid() -> bytes:
    return Serdes().send_request.encode(SEND_REQUEST)


def _unknown_fingerprint() -> bytes:
    value = _valid()
    return value[:2] + struct.pack("<Q", 0x0123456789ABCDEF) + value[10:]


def _bad_utf8() -> bytes:
    # message_id claims 2 bytes that are not UTF-8.
    return _valid()[:10] + b"\x04\xff\xfe" + _valid()[10 + 1 + len("m-000001"):]


UNDECODABLE: list[tuple[str, bytes | None, type[SerdeError], str]] = [
    ("none", None, SerdeError, "empty value"),
    ("empty", b"", SerdeError, "empty value"),
    ("garbage", b"hello, I am not Avro", SerdeError, "not an Avro value (first bytes 6865)"),
    ("json", json.dumps(SEND_REQUEST).encode(), SerdeError, "not an Avro value"),
    ("truncated-header", b"\xc3\x01\x67\xb3\x4a", SerdeError, "truncated single-object header"),
    ("unknown-fingerprint", _unknown_fingerprint(), UnknownSchemaError,
     "unknown schema fingerprint 0123456789abcdef for SendRequest"),
    ("header-only", _valid()[:10], SerdeError, "corrupt SendRequest body"),
    ("truncated-body", _valid()[:-3], SerdeError, "corrupt SendRequest body"),
    ("bad-utf8", _bad_utf8(), SerdeError, "corrupt SendRequest body"),
    ("trailing-bytes", _valid() + b"\x00\x00", SerdeError,
     "corrupt SendRequest body: 2 bytes after the record"),
    ("two-records-glued", _valid() + _valid(), SerdeError, "bytes after the record"),
    ("confluent-without-registry", b"\x00\x00\x00\x00\x01" + _valid()[10:], SerdeError,
     "not an Avro value"),
]


@pytest.mark.parametrize(
    ("value", "error", "reason"),
    [case[1:] for case in UNDECODABLE],
    ids=[case[0] for case in UNDECODABLE],
)
def test_undecodable_bytes_raise_serde_error_naming_the_reason(
    value: bytes | None, error: type[SerdeError], reason: str
) -> None:
    """Bad input becomes a dead-letter record with a reason, never a crash or a wrong record."""
    with pytest.raises(error) as caught:
        Serdes().send_request.decode(value)
    assert type(caught.value) is error
    assert isinstance(caught.value, EstopError)  # the CLI shows it as one line, not a traceback
    assert reason in caught.value.reason
    assert str(caught.value) == caught.value.reason
    assert len(caught.value.reason) < 200  # short enough for a Kafka header


# -- Confluent wire format with a registry ---------------------------------------------------


class InMemoryRegistry:
    """The two calls the serde makes on a schema registry, held in a dict: ids count from 1
    and one schema registered twice keeps its id, as Confluent's registry does."""

    def __init__(self) -> None:
        self.by_id: dict[int, Schema] = {}
        self.subjects: dict[str, list[int]] = {}
        self.register_calls = 0

    def register(self, subject: str, schema: Schema) -> int:
        self.register_calls += 1
        schema_id = next(
            (i for i, s in self.by_id.items() if s.fingerprint == schema.fingerprint),
            len(self.by_id) + 1,
        )
        self.by_id[schema_id] = schema
        self.subjects.setdefault(subject, []).append(schema_id)
        return schema_id

    def lookup(self, schema_id: int) -> Schema:
        return self.by_id[schema_id]  # KeyError for an unknown id, like a 404


def test_confluent_wire_format_bytes() -> None:
    """With a registry: 0x00, the 4-byte big-endian schema id, then the Avro body."""
    registry = InMemoryRegistry()
    registry.register("other-subject", load_schema("ControlCommand"))  # so the id is not 1
    value = Serdes(registry).send_request.encode(SEND_REQUEST)

    assert value[0] == 0
    (schema_id,) = struct.unpack(">I", value[1:5])
    assert schema_id == 2
    assert registry.subjects["estop.SendRequest"] == [2]
    body = io.BytesIO()
    fastavro.schemaless_writer(body, load_schema("SendRequest").parsed, SEND_REQUEST)
    assert value[5:] == body.getvalue()


def test_confluent_round_trip_through_a_shared_registry() -> None:
    """A consumer process with its own serdes finds the writer schema by id in the registry."""
    registry = InMemoryRegistry()
    producer_side, consumer_side = Serdes(registry), Serdes(registry)
    for path in SCHEMA_FILES:
        name = schema_definition(path)["name"]
        writer = serde_by_schema_name(producer_side)[name]
        reader = serde_by_schema_name(consumer_side)[name]
        for record in SAMPLES[name]:
            assert reader.decode(writer.encode(record)) == record


def test_confluent_registers_once_per_serde() -> None:
    """The registry is asked once, not once per record (it is a network call in production)."""
    registry = InMemoryRegistry()
    serde = Serdes(registry).send_request
    for i in range(10):
        serde.encode({**SEND_REQUEST, "message_id": f"m-{i}"})
    assert registry.register_calls == 1


def test_confluent_v1_reader_reads_v2_writer_found_in_the_registry() -> None:
    """Evolution needs no add_writer with a registry: the writer schema comes with the id."""
    registry = InMemoryRegistry()
    written = Serde(send_request_v2(), registry).encode({**SEND_REQUEST, "priority": 1})
    assert Serdes(registry).send_request.decode(written) == SEND_REQUEST


def test_confluent_reader_still_reads_single_object_values() -> None:
    """Turning a registry on does not strand records written before it."""
    old = Serdes().send_request.encode(SEND_REQUEST)
    assert Serdes(InMemoryRegistry()).send_request.decode(old) == SEND_REQUEST


@pytest.mark.parametrize(
    ("value", "error", "reason"),
    [
        (b"\x00\x00\x00\x00\x63" + b"\x00" * 6, UnknownSchemaError, "schema id 99 not in the registry"),
        (b"\x00\x00\x01", SerdeError, "truncated Confluent wire-format header"),
    ],
    ids=["unknown-id", "truncated-header"],
)
def test_confluent_undecodable_bytes(value: bytes, error: type[SerdeError], reason: str) -> None:
    """Registry-side failures are serde errors with a reason too, not KeyErrors."""
    with pytest.raises(error) as caught:
        Serdes(InMemoryRegistry()).send_request.decode(value)
    assert reason in caught.value.reason
