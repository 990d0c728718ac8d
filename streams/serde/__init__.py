"""Avro values on every topic.

Without a schema registry a value is Avro single-object encoded: ``C3 01``, the 8-byte
little-endian CRC-64-AVRO fingerprint of the writer schema, then the binary body; any consumer
finds the schema by fingerprint in ``streams/schemas/``. With a registry (``ESTOP_SCHEMA_REGISTRY_URL``)
values use the Confluent wire format: ``00``, a 4-byte big-endian schema id, the body; each
record type is registered under its subject (``streams/serde/registry.py``).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import fastavro

from streams.serde.exceptions import SerdeError, UnknownSchemaError
from streams.serde.schema import SCHEMA_DIR, Schema, load_schema, subject_for

if TYPE_CHECKING:
    from streams.settings import Settings

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
_SO_HEADER = struct.Struct("<2sQ")
_CF_HEADER = struct.Struct(">bI")

__all__ = [
    "SCHEMA_DIR",
    "Schema",
    "SchemaRegistry",
    "SerdeError",
    "Serdes",
    "UnknownSchemaError",
    "load_schema",
    "subject_for",
]


class SchemaRegistry(Protocol):
    """What the Confluent wire format needs from a registry (``streams/serde/registry.py``)."""

    def register(self, subject: str, schema: Schema) -> int:
        """The schema's id; IncompatibleSchemaError when the registry refuses it."""
        ...

    def lookup(self, schema_id: int) -> Schema:
        """The writer schema of an id; UnknownSchemaError when the registry has none."""
        ...


class Serde:
    """Encodes one record type; decodes any known writer version into the reader schema."""

    def __init__(self, schema: Schema, registry: SchemaRegistry | None = None,
                 subject: str | None = None) -> None:
        self.schema = schema
        self._registry = registry
        self._subject = subject or subject_for(schema)
        self._writers: dict[int, Schema] = {schema.fingerprint: schema}
        self._registry_id: int | None = None
        self._prefix = _SO_HEADER.pack(SINGLE_OBJECT_MAGIC, schema.fingerprint)
        self._known_headers = {self._prefix}  # the envelope of every writer version accepted
        # Confluent wire-format headers (magic and id) of writers read once already, and the one
        # of this serde's own schema: the same cheap checks as for single-object values.
        self._known_registry_headers: set[bytes] = set()
        self._own_registry_header: bytes | None = None

    def add_writer(self, schema: Schema) -> None:
        """Accept values written with another (compatible) version of this schema."""
        self._writers[schema.fingerprint] = schema
        self._known_headers.add(_SO_HEADER.pack(SINGLE_OBJECT_MAGIC, schema.fingerprint))

    def has_known_header(self, value: bytes) -> bool:
        """Cheap envelope check (single-object magic and a known writer fingerprint, or the
        Confluent magic and the id of a writer read before) for a stage that routes by record
        headers and never reads the body; decode() checks the body."""
        return (value[:_SO_HEADER.size] in self._known_headers
                or value[:_CF_HEADER.size] in self._known_registry_headers)

    def prefix(self) -> bytes:
        """What precedes the Avro body of every value this serde writes."""
        if self._registry is None:
            return self._prefix
        if self._registry_id is None:
            self._registry_id = self._registry.register(self._subject, self.schema)
            self._own_registry_header = _CF_HEADER.pack(0, self._registry_id)
            self._known_registry_headers.add(self._own_registry_header)
        return _CF_HEADER.pack(0, self._registry_id)

    def own_body_offset(self, value: bytes) -> int | None:
        """Where the Avro body starts when ``value`` was written with exactly this serde's
        schema (single-object, or the Confluent wire format with its id); else None."""
        if value.startswith(self._prefix):
            return _SO_HEADER.size
        own = self._own_registry_header
        if own is not None and value.startswith(own):
            return _CF_HEADER.size
        return None

    def encode(self, record: Mapping[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self.prefix())
        try:
            fastavro.schemaless_writer(buf, self.schema.parsed, record)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SerdeError(f"cannot encode {self.schema.name}: {exc}") from exc
        return buf.getvalue()

    def decode(self, value: bytes | None) -> dict[str, Any]:
        if not value:
            raise SerdeError("empty value")
        writer = self._writer_for(value)
        offset = _SO_HEADER.size if value[:2] == SINGLE_OBJECT_MAGIC else _CF_HEADER.size
        body = io.BytesIO(value[offset:])
        try:
            reader = None if writer is self.schema else self.schema.parsed
            record = fastavro.schemaless_reader(body, writer.parsed, reader)
        except Exception as exc:  # fastavro raises many types on corrupt bodies
            raise SerdeError(f"corrupt {self.schema.name} body: {type(exc).__name__}") from exc
        if not isinstance(record, dict):
            raise SerdeError(f"{self.schema.name} body is not a record")
        trailing = len(value) - offset - body.tell()
        if trailing:
            # A value is exactly one record; extra bytes mean it was cut or glued together.
            raise SerdeError(f"corrupt {self.schema.name} body: {trailing} bytes after the record")
        if offset == _CF_HEADER.size:
            self._known_registry_headers.add(value[:offset])  # its writer resolves: a known envelope
            if writer.fingerprint == self.schema.fingerprint:
                self._own_registry_header = value[:offset]
        return record

    def _writer_for(self, value: bytes) -> Schema:
        if value[:2] == SINGLE_OBJECT_MAGIC:
            if len(value) < _SO_HEADER.size:
                raise SerdeError("truncated single-object header")
            _, fingerprint = _SO_HEADER.unpack_from(value)
            writer = self._writers.get(fingerprint)
            if writer is None:
                raise UnknownSchemaError(
                    f"unknown schema fingerprint {fingerprint:016x} for {self.schema.name}"
                )
            return writer
        if value[:1] == CONFLUENT_MAGIC and self._registry is not None:
            if len(value) < _CF_HEADER.size:
                raise SerdeError("truncated Confluent wire-format header")
            _, schema_id = _CF_HEADER.unpack_from(value)
            writer = self._registry.lookup(schema_id)
            return self._writers.setdefault(writer.fingerprint, writer)
        raise SerdeError(f"not an Avro value (first bytes {value[:2].hex() or 'none'})")


class Serdes:
    """One serde per record type of the project; with a registry, each under the subject
    ``subject_for(schema, subject_prefix)``."""

    def __init__(self, registry: SchemaRegistry | None = None, subject_prefix: str = "") -> None:
        def serde(name: str) -> Serde:
            schema = load_schema(name)
            return Serde(schema, registry, subject_for(schema, subject_prefix))

        self.send_request = serde("SendRequest")
        self.control_command = serde("ControlCommand")
        self.campaign_status = serde("CampaignStatus")
        self.sent = serde("SentEvent")
        self.not_sent = serde("NotSentEvent")
        self.failed = serde("FailedEvent")
        self.control_ack = serde("ControlAck")
        self.audit = serde("AuditEvent")
        self.ledger_entry = serde("LedgerEntry")
        self.ledger_checkpoint = serde("LedgerCheckpoint")
        self.receipt = serde("ProviderReceipt")
        self.feedback = serde("Feedback")
        self.guardrail_rule = serde("GuardrailRule")
        self.guardrail_state = serde("GuardrailState")
        self.guardrail_counts = serde("GuardrailCounts")
        self.canary = serde("CanaryState")


def serdes_for(settings: Settings) -> Serdes:
    """Single-object encoding, or the Confluent wire format when a registry is named
    (``ESTOP_SCHEMA_REGISTRY_URL``), with subjects prefixed like the topics."""
    if not settings.schema_registry_url:
        return Serdes()
    from streams.serde.registry import ConfluentRegistry  # loads the registry client only then

    return Serdes(ConfluentRegistry(settings.schema_registry_url), settings.topic_prefix)
