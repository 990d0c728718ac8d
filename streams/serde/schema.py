"""The Avro schemas of the records (``streams/schemas/<Name>.avsc``), parsed with their
fingerprints, and the registry subject of each: what both the serdes (``streams.serde``) and
the registry client (``streams.serde.registry``) read, so neither imports the other for it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import SchemaParseException, UnknownType, to_parsing_canonical_form

from streams.serde.exceptions import SerdeError
from streams.serde.fingerprint import crc64_avro

# Shipped in the package (streams/schemas/), so an installed estop reads them without a checkout.
SCHEMA_DIR = Path(str(resources.files("streams") / "schemas"))


class Schema:
    """A parsed Avro schema with its fingerprint."""

    def __init__(self, definition: Mapping[str, Any]) -> None:
        self.definition = dict(definition)
        self.name: str = self.definition["name"]
        self.parsed = fastavro.parse_schema(self.definition)
        canonical = to_parsing_canonical_form(self.parsed)
        self.fingerprint = crc64_avro(canonical.encode())


def load_schema(name: str, directory: Path = SCHEMA_DIR) -> Schema:
    """Load ``<directory>/<name>.avsc`` (estop's own schemas by default)."""
    path = directory / f"{name}.avsc"
    try:
        return Schema(json.loads(path.read_text()))
    except FileNotFoundError as exc:
        raise SerdeError(f"no schema file {path}") from exc
    except (ValueError, KeyError, TypeError, SchemaParseException, UnknownType) as exc:
        raise SerdeError(f"{path} is not an Avro record schema: {exc}") from exc


def subject_for(schema: Schema, subject_prefix: str = "") -> str:
    """The registry subject of a record type's versions: ``<prefix><namespace>.<name>``
    (Confluent's RecordNameStrategy, prefixed like the topics)."""
    namespace = schema.definition.get("namespace")
    return f"{subject_prefix}{namespace}.{schema.name}" if namespace else f"{subject_prefix}{schema.name}"
