"""Avro serde: every schema round-trips, versions evolve both ways, bad bytes fail loudly.

No broker needed: these pin down the bytes every producer and consumer of the project agree on.
The Confluent wire format is tested against a real schema registry, the session's Apicurio
Registry (its compatibility rule BACKWARD), each test under subjects of its own.
"""

from __future__ import annotations

import copy
import io
import json
import random
import struct
import subprocess
import threading
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from fastavro.schema import fingerprint, to_parsing_canonical_form
from fastavro.utils import generate_many

from streams.exceptions import EstopError
from streams.serde import SCHEMA_DIR, Schema, Serde, Serdes, load_schema, subject_for
from streams.serde.exceptions import SchemaRegistryError, SerdeError, UnknownSchemaError
from streams.serde.fingerprint import crc64_avro
from streams.serde.registry import ConfluentRegistry
from tests.ecosystem.apicurio import ApicurioRegistry
from tests.support import free_port, run_estop

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
            "partitions": ["send-requests.email:0", "dispatch.email:3"],
            "control_offsets": [17],
        },
        {   # A process acknowledging partitions newly assigned to it: no command.
            "process_id": "dispatcher.sms@host:9", "roles": ["dispatcher.sms"], "command_id": "",
            "campaign_id": "", "command_requested_at": 0, "applied_at": 1_732_600_002_000,
            "halted": 0, "partitions": ["dispatch.sms:1"], "control_offsets": [17, 4],
        },
    ],
    "LedgerEntry": [
        {
            "message_id": "spring-sale:sms:7", "campaign_id": "spring-sale",
            "recipient_id": "+48600000007", "input_offset": 41, "state": "accepted",
            "provider_id": "smsc-19", "submitted_at": 1_732_600_001_000,
            "handed_at": 1_732_600_001_020, "attempts": 1, "outcome": None, "occurred_at": None,
            "stop_command_id": None, "stop_requested_at": None, "reason": None,
        },
        {
            "message_id": "spring-sale:sms:8", "campaign_id": "spring-sale",
            "recipient_id": "+48600000008", "input_offset": 42, "state": "reported",
            "provider_id": "smsc-20", "submitted_at": 1_732_600_001_000,
            "handed_at": 1_732_600_001_030, "attempts": 2, "outcome": "cancelled",
            "occurred_at": 1_732_600_009_000, "stop_command_id": "cmd-1",
            "stop_requested_at": 1_732_600_008_000, "reason": "wrong discount code",
        },
    ],
    "LedgerCheckpoint": [{"receipts_offset": 0}, {"receipts_offset": 123_456}],
    "Feedback": [
        {"feedback_id": "f-1", "kind": "complaint", "bounce_type": None,
         "message_id": "spring-sale:email:7", "campaign_id": "spring-sale", "channel": "email",
         "source": "esp-webhook", "detail": "abuse report", "occurred_at": 1_732_600_010_000},
        {"feedback_id": "f-2", "kind": "bounce", "bounce_type": "hard",
         "message_id": "spring-sale:email:8", "campaign_id": "spring-sale", "channel": "email",
         "source": "esp-webhook", "detail": None, "occurred_at": 1_732_600_011_000},
    ],
    "GuardrailRule": [
        {"name": "bounce", "scope": "*", "enabled": True, "metric": "bounce", "threshold": 0.05,
         "min_sample": 200, "window": "first", "window_size": 1000, "channels": [],
         "updated_by": "builtin", "updated_at": 0},
        {"name": "complaints", "scope": "spring-sale", "enabled": True, "metric": "complaint",
         "threshold": 0.003, "min_sample": 500, "window": "sliding", "window_size": 600,
         "channels": ["email"], "updated_by": "alice", "updated_at": 1_732_600_000_000},
    ],
    "GuardrailCounts": [
        {"campaign_id": "spring-sale", "channel": "email", "outcomes": 120,
         "hits": {"bounce": 9, "hard_bounce": 9, "provider_failure": 9}, "at": 1_732_600_012_000},
    ],
    "GuardrailState": [
        {"campaign_id": "spring-sale", "channel": "email", "rule": "bounce", "window": "first:1000",
         "buckets": [{"start": 0, "sample": 250, "hits": 20}], "tripped_at": 1_732_600_012_000,
         "trip_reason": "bounce rate 8.0% >= 5.0% over 250 outcomes", "stop_command_id": None},
    ],
    "CanaryState": [
        {"campaign_id": "spring-sale", "state": "holding", "share": 0.02,
         "cohort": {"email": 200, "sms": 200}, "planned": {"email": 10_000, "sms": 10_000},
         "hold_until": 1_732_600_600_000, "released_by": None, "updated_at": 1_732_600_000_000},
        {"campaign_id": "spring-sale", "state": "released", "share": 0.02, "cohort": {"email": 200},
         "planned": {"email": 10_000}, "hold_until": 1_732_600_600_000, "released_by": "ops",
         "updated_at": 1_732_600_100_000},
    ],
    "ProviderReceipt": [
        {"channel": "email", "message_id": "spring-sale:email:1", "provider_id": "4jg5Yz1",
         "delivered": True, "occurred_at": 1_732_600_003_000, "detail": "sent: 250 2.0.0 Ok",
         "source": "mta-agent@mx1"},
        {"channel": "sms", "message_id": "", "provider_id": "smsc-19", "delivered": False,
         "occurred_at": 1_732_600_004_000, "detail": "UNDELIV", "source": "worker@host:9"},
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
        "FailedEvent", "ControlAck", "AuditEvent", "LedgerEntry", "LedgerCheckpoint",
        "ProviderReceipt", "Feedback", "GuardrailRule", "GuardrailState", "GuardrailCounts",
        "CanaryState",
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


# -- Confluent wire format with a registry (the session's Apicurio Registry) ------------------


class CountingRegistry(ConfluentRegistry):
    """estop's registry client, counting the serde's register calls (the real registry answers
    each one)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.register_calls = 0

    def register(self, subject: str, schema: Schema) -> int:
        self.register_calls += 1
        return super().register(subject, schema)


def registry_admin(registry: ApicurioRegistry) -> SchemaRegistryClient:
    """An independent client of the same registry, to see what estop registered."""
    return SchemaRegistryClient({"url": registry.ccompat_url})


def test_confluent_wire_format_bytes(schema_registry: ApicurioRegistry, subject_prefix: str) -> None:
    """With a registry: 0x00, the 4-byte big-endian schema id, then the Avro body."""
    registry = ConfluentRegistry(schema_registry.ccompat_url)
    other_id = registry.register(f"{subject_prefix}other-subject", load_schema("ControlCommand"))
    value = Serdes(registry, subject_prefix).send_request.encode(SEND_REQUEST)

    assert value[0] == 0
    (schema_id,) = struct.unpack(">I", value[1:5])
    assert schema_id != other_id
    registered = registry_admin(schema_registry).get_latest_version(f"{subject_prefix}estop.SendRequest")
    assert (registered.schema_id, registered.version) == (schema_id, 1)
    stored = json.loads(registry_admin(schema_registry).get_schema(schema_id).schema_str or "null")
    assert Schema(stored).fingerprint == load_schema("SendRequest").fingerprint
    body = io.BytesIO()
    fastavro.schemaless_writer(body, load_schema("SendRequest").parsed, SEND_REQUEST)
    assert value[5:] == body.getvalue()


def test_confluent_round_trip_through_a_shared_registry(schema_registry: ApicurioRegistry,
                                                        subject_prefix: str) -> None:
    """A consumer process with its own serdes finds the writer schema by id in the registry."""
    producer_side = Serdes(ConfluentRegistry(schema_registry.ccompat_url), subject_prefix)
    consumer_side = Serdes(ConfluentRegistry(schema_registry.ccompat_url), subject_prefix)
    for path in SCHEMA_FILES:
        name = schema_definition(path)["name"]
        writer = serde_by_schema_name(producer_side)[name]
        reader = serde_by_schema_name(consumer_side)[name]
        for record in SAMPLES[name]:
            assert reader.decode(writer.encode(record)) == record


def test_confluent_registers_once_per_serde(schema_registry: ApicurioRegistry,
                                            subject_prefix: str) -> None:
    """The registry is asked once, not once per record (it is a network call in production)."""
    registry = CountingRegistry(schema_registry.ccompat_url)
    serde = Serdes(registry, subject_prefix).send_request
    for i in range(10):
        serde.encode({**SEND_REQUEST, "message_id": f"m-{i}"})
    assert registry.register_calls == 1


def test_confluent_v1_reader_reads_v2_writer_found_in_the_registry(schema_registry: ApicurioRegistry,
                                                                   subject_prefix: str) -> None:
    """Evolution needs no add_writer with a registry: the writer schema comes with the id."""
    v2 = send_request_v2()
    writer = Serde(v2, ConfluentRegistry(schema_registry.ccompat_url), subject_for(v2, subject_prefix))
    written = writer.encode({**SEND_REQUEST, "priority": 1})
    reader = Serdes(ConfluentRegistry(schema_registry.ccompat_url), subject_prefix)
    assert reader.send_request.decode(written) == SEND_REQUEST


def test_confluent_reader_still_reads_single_object_values(schema_registry: ApicurioRegistry) -> None:
    """Turning a registry on does not strand records written before it."""
    old = Serdes().send_request.encode(SEND_REQUEST)
    assert Serdes(ConfluentRegistry(schema_registry.ccompat_url)).send_request.decode(old) == SEND_REQUEST


@pytest.mark.parametrize(
    ("value", "error", "reason"),
    [
        (b"\x00\x7f\xff\xff\xff" + b"\x00" * 6, UnknownSchemaError,
         "schema id 2147483647 not in the registry"),
        (b"\x00\x00\x01", SerdeError, "truncated Confluent wire-format header"),
    ],
    ids=["unknown-id", "truncated-header"],
)
def test_confluent_undecodable_bytes(schema_registry: ApicurioRegistry, value: bytes,
                                     error: type[SerdeError], reason: str) -> None:
    """Registry-side failures are serde errors with a reason too, not KeyErrors."""
    with pytest.raises(error) as caught:
        Serdes(ConfluentRegistry(schema_registry.ccompat_url)).send_request.decode(value)
    assert reason in caught.value.reason


def test_processes_registering_a_subject_at_the_same_moment_all_get_its_id(
        schema_registry: ApicurioRegistry, subject_prefix: str) -> None:
    """Apicurio answers 409 "already exists" to the other clients creating a subject at the
    same moment as one of them (seen when a worker's dispatchers published their first sent
    events): every one of them still gets the schema's id, none an error."""
    clients = 6

    def register_at_once(subject: str, schema: Schema) -> tuple[list[int], list[str]]:
        ids: list[int] = []
        errors: list[str] = []
        ready = threading.Barrier(clients)

        def register() -> None:
            registry = ConfluentRegistry(schema_registry.ccompat_url)
            ready.wait()
            try:
                ids.append(registry.register(subject, schema))
            except EstopError as exc:
                errors.append(str(exc))

        threads = [threading.Thread(target=register) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return ids, errors

    for name in ("SentEvent", "NotSentEvent", "FailedEvent"):
        ids, errors = register_at_once(f"{subject_prefix}estop.{name}", load_schema(name))
        assert errors == []
        assert len(ids) == clients and len(set(ids)) == 1


def test_a_registry_that_does_not_answer_is_not_a_bad_record() -> None:
    """A value whose writer cannot be looked up because the registry is down is fine data: the
    error is not a SerdeError, so no stage dead-letters it; one line naming the registry."""
    url = f"http://127.0.0.1:{free_port()}/apis/ccompat/v7"
    value = b"\x00\x00\x00\x00\x07" + b"\x00" * 6
    with pytest.raises(SchemaRegistryError) as caught:
        Serdes(ConfluentRegistry(url)).send_request.decode(value)
    assert not isinstance(caught.value, SerdeError)
    assert str(caught.value).startswith(f"schema registry {url}: looking up schema id 7 failed: ")
    assert "\n" not in str(caught.value)


def test_a_writer_read_once_makes_its_confluent_envelope_known(schema_registry: ApicurioRegistry,
                                                               subject_prefix: str) -> None:
    """The gate and dispatcher check only the envelope of a record they route by its headers:
    a Confluent value is known once its writer id was read (or written) by this process, as a
    single-object value is by its fingerprint; an id never read is not."""
    written = Serdes(ConfluentRegistry(schema_registry.ccompat_url), subject_prefix).send_request.encode(
        SEND_REQUEST)
    reader = Serdes(ConfluentRegistry(schema_registry.ccompat_url), subject_prefix).send_request
    assert not reader.has_known_header(written)
    assert reader.own_body_offset(written) is None
    assert reader.decode(written) == SEND_REQUEST
    assert reader.has_known_header(written)
    assert reader.own_body_offset(written) == 5
    unread_id = b"\x00" + struct.pack(">I", struct.unpack(">I", written[1:5])[0] + 1) + written[5:]
    assert not reader.has_known_header(unread_id)
    assert reader.has_known_header(Serdes().send_request.encode(SEND_REQUEST))


def _schema_folder(target: Path, extra_field: dict[str, Any] | None) -> Path:
    """A copy of schemas/ with SendRequest given ``extra_field`` (none: unchanged)."""
    target.mkdir()
    for path in SCHEMA_FILES:
        definition = schema_definition(path)
        if extra_field is not None and definition["name"] == "SendRequest":
            definition["fields"].append(extra_field)
        (target / path.name).write_text(json.dumps(definition))
    return target


def test_backward_compatibility_accepts_a_compatible_change_and_refuses_an_incompatible_one(
        schema_registry: ApicurioRegistry, subject_prefix: str, tmp_path: Path) -> None:
    """The registry's rule is BACKWARD: `estop schemas register` registers estop's schemas, then
    a SendRequest with a new field that has a default (readers of the new version can read the
    old data) as version 2; a new field without a default is refused with one line and exit
    code 2, and nothing is registered."""
    env = {"ESTOP_SCHEMA_REGISTRY_URL": schema_registry.ccompat_url, "ESTOP_TOPIC_PREFIX": subject_prefix}
    subject = f"{subject_prefix}estop.SendRequest"
    admin_client = registry_admin(schema_registry)

    def registered(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
        return {line.split(": id ")[0]: int(line.split(": id ")[1]) for line in result.stdout.splitlines()}

    first = run_estop("schemas", "register", env=env)
    assert first.returncode == 0, first.stderr
    ids = registered(first)
    assert set(ids) == {f"{subject_prefix}estop.{schema_definition(p)['name']}" for p in SCHEMA_FILES}

    compatible = _schema_folder(tmp_path / "compatible", {"name": "priority", "type": "int", "default": 5})
    second = run_estop("schemas", "register", "--dir", str(compatible), env=env)
    assert second.returncode == 0, second.stderr
    assert registered(second)[subject] != ids[subject]
    assert {k: v for k, v in registered(second).items() if k != subject} == {
        k: v for k, v in ids.items() if k != subject}
    assert admin_client.get_versions(subject) == [1, 2]

    incompatible = _schema_folder(tmp_path / "incompatible", {"name": "tenant", "type": "string"})
    third = run_estop("schemas", "register", "--dir", str(incompatible), env=env)
    assert third.returncode == 2
    assert third.stdout == ""
    lines = third.stderr.strip().splitlines()
    assert len(lines) == 1, third.stderr
    assert lines[0].startswith(
        f"estop: the schema registry at {schema_registry.ccompat_url} refused SendRequest as a new "
        f"version of subject {subject} (compatibility BACKWARD): "), lines[0]
    assert "tenant" in lines[0]
    assert admin_client.get_versions(subject) == [1, 2]
