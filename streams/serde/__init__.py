"""Avro values on every topic.

Without a schema registry a value is Avro single-object encoded: ``C3 01``, the 8-byte
little-endian CRC-64-AVRO fingerprint of the writer schema, then the binary body; any consumer
finds the schema by fingerprint in ``schemas/``. With a registry (``ESTOP_SCHEMA_REGISTRY_URL``)
values use the Confluent wire format: ``00``, a 4-byte big-endian schema id, the body.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import fastavro
from fastavro.schema import to_parsing_canonical_form

from streams.serde.exceptions import SerdeError, UnknownSchemaError
from streams.serde.fingerprint import crc64_avro

SCHEMA_DIR = Path(__file__).resolve().parent.parent.parent / "schemas"
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
_SO_HEADER = struct.Struct("<2sQ")
_CF_HEADER = struct.Struct(">bI")
SINGLE_OBJECT_HEADER_SIZE = _SO_HEADER.size

__all__ = [
    "Schema",
    "SchemaRegistry",
    "SerdeError",
    "Serdes",
    "UnknownSchemaError",
    "load_schema",
]


class Schema:
    """A parsed Avro schema with its fingerprint."""

    def __init__(self, definition: Mapping[str, Any]) -> None:
        self.definition = dict(definition)
        self.name: str = self.definition["name"]
        self.parsed = fastavro.parse_schema(self.definition)
        canonical = to_parsing_canonical_form(self.parsed)
        self.fingerprint = crc64_avro(canonical.encode())


def load_schema(name: str, directory: Path = SCHEMA_DIR) -> Schema:
    """Load ``schemas/<name>.avsc``."""
    path = directory / f"{name}.avsc"
    try:
        return Schema(json.loads(path.read_text()))
    except FileNotFoundError as exc:
        raise SerdeError(f"no schema file {path}") from exc


class SchemaRegistry(Protocol):
    """What the Confluent wire format needs from a registry."""

    def register(self, subject: str, schema: Schema) -> int: ...

    def lookup(self, schema_id: int) -> Schema: ...


class Serde:
    """Encodes one record type; decodes any known writer version into the reader schema."""

    def __init__(self, schema: Schema, registry: SchemaRegistry | None = None,
                 subject: str | None = None) -> None:
        self.schema = schema
        self._registry = registry
        self._subject = subject or f"estop.{schema.name}"
        self._writers: dict[int, Schema] = {schema.fingerprint: schema}
        self._registry_id: int | None = None
        self._prefix = _SO_HEADER.pack(SINGLE_OBJECT_MAGIC, schema.fingerprint)
        self._known_headers = {self._prefix}  # the envelope of every writer version accepted

    def add_writer(self, schema: Schema) -> None:
        """Accept values written with another (compatible) version of this schema."""
        self._writers[schema.fingerprint] = schema
        self._known_headers.add(_SO_HEADER.pack(SINGLE_OBJECT_MAGIC, schema.fingerprint))

    def has_known_header(self, value: bytes) -> bool:
        """Cheap envelope check (single-object magic and a known writer fingerprint) for a stage
        that routes by record headers and never reads the body; decode() checks the body."""
        return value[:_SO_HEADER.size] in self._known_headers

    def prefix(self) -> bytes:
        """What precedes the Avro body of every value this serde writes."""
        if self._registry is None:
            return self._prefix
        if self._registry_id is None:
            self._registry_id = self._registry.register(self._subject, self.schema)
        return _CF_HEADER.pack(0, self._registry_id)

    def is_own_single_object(self, value: bytes) -> bool:
        """Single-object encoded with exactly this serde's schema (its body starts at offset
        ``SINGLE_OBJECT_HEADER_SIZE``)."""
        return value.startswith(self._prefix)

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
            try:
                writer = self._registry.lookup(schema_id)
            except Exception as exc:
                raise UnknownSchemaError(f"schema id {schema_id} not in the registry") from exc
            self._writers.setdefault(writer.fingerprint, writer)
            return writer
        raise SerdeError(f"not an Avro value (first bytes {value[:2].hex() or 'none'})")


class Serdes:
    """One serde per record type of the project."""

    def __init__(self, registry: SchemaRegistry | None = None) -> None:
        self.send_request = Serde(load_schema("SendRequest"), registry)
        self.control_command = Serde(load_schema("ControlCommand"), registry)
        self.campaign_status = Serde(load_schema("CampaignStatus"), registry)
        self.sent = Serde(load_schema("SentEvent"), registry)
        self.not_sent = Serde(load_schema("NotSentEvent"), registry)
        self.failed = Serde(load_schema("FailedEvent"), registry)
        self.control_ack = Serde(load_schema("ControlAck"), registry)
        self.audit = Serde(load_schema("AuditEvent"), registry)
        self.ledger_entry = Serde(load_schema("LedgerEntry"), registry)
        self.ledger_checkpoint = Serde(load_schema("LedgerCheckpoint"), registry)
        self.receipt = Serde(load_schema("ProviderReceipt"), registry)


def serdes_for(registry_url: str | None) -> Serdes:
    """Single-object encoding, or the Confluent wire format when a registry is named."""
    if not registry_url:
        return Serdes()
    from streams.serde.registry import HttpSchemaRegistry

    return Serdes(HttpSchemaRegistry(registry_url))
