"""The schema registry of the Confluent wire format, through the client confluent-kafka ships
(``confluent_kafka.schema_registry``), for any registry that speaks Confluent's REST API; tested
against Apicurio Registry's ``/apis/ccompat/v7`` (tests/conftest.py, ``schema_registry``).

Each record type is registered under the subject ``<topic prefix><namespace>.<name>``
(``estop.NotSentEvent``: Confluent's RecordNameStrategy, prefixed like the topics so that two
installations sharing a registry keep their own versions); the registry's compatibility rule
decides whether a changed schema is accepted as a new version. Readers need only the id in
each value."""

from __future__ import annotations

import json
import re
from pathlib import Path

from confluent_kafka.schema_registry import Schema as RegistrySchema
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.common._httpx_compat import httpx  # the client's (httpx2)
from confluent_kafka.schema_registry.error import SchemaRegistryError as ClientError
from fastavro.schema import SchemaParseException, UnknownType

from streams.exceptions import UsageError
from streams.serde.exceptions import IncompatibleSchemaError, SchemaRegistryError, UnknownSchemaError
from streams.serde.schema import SCHEMA_DIR, Schema, load_schema, subject_for

NOT_FOUND = 404
CONFLICT = 409  # the compatibility rule refused the schema (or, Apicurio, a subject created meanwhile)
SCHEMA_NOT_FOUND = 40403
_JAVA_EXCEPTION = re.compile(r"^(?:[\w$]+\.)+[\w$]*Exception:\s*")


class ConfluentRegistry:
    """Registers writer schemas by subject and finds writer schemas by id; both cached (the
    client caches registrations, this class the parsed schemas), so the registry is asked once
    per schema and process, not once per record."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        # Two retries: a registry that does not answer fails the command within seconds.
        self._client = SchemaRegistryClient({"url": self.url, "timeout": timeout_s, "max.retries": 2})
        self._by_id: dict[int, Schema] = {}

    def register(self, subject: str, schema: Schema) -> int:
        """The id of ``schema`` under ``subject``, registered as a new version when it is not
        there yet; refused with IncompatibleSchemaError when the subject's compatibility rule
        does not allow it."""
        written = RegistrySchema(json.dumps(schema.definition), "AVRO")
        for attempt in (1, 2):
            try:
                schema_id = self._client.register_schema(subject, written)
                break
            except ClientError as exc:
                if exc.http_status_code != CONFLICT:
                    raise self._failure(f"registering {subject}", exc) from exc
                # Apicurio also answers 409 ("already exists") to the other clients creating a
                # subject at the same moment as one of them (seen with a worker's dispatchers'
                # first sent events): tried again, the schema is found or the rule answers.
                if attempt == 2:
                    raise IncompatibleSchemaError(
                        f"the schema registry at {self.url} refused {schema.name} as a new version "
                        f"of subject {subject} ({self._rule(subject)}): {_one_line(exc.error_message)}"
                    ) from exc
            except httpx.HTTPError as exc:
                raise self._failure(f"registering {subject}", exc) from exc
        self._by_id.setdefault(schema_id, schema)
        return schema_id

    def compatible(self, subject: str, schema: Schema) -> bool:
        """Whether the subject's compatibility rule would accept ``schema`` (a subject with no
        version yet accepts anything); nothing is registered."""
        try:
            return bool(self._client.test_compatibility(
                subject, RegistrySchema(json.dumps(schema.definition), "AVRO")))
        except ClientError as exc:
            if exc.http_status_code == NOT_FOUND:
                return True
            raise self._failure(f"checking {subject}", exc) from exc
        except httpx.HTTPError as exc:
            raise self._failure(f"checking {subject}", exc) from exc

    def lookup(self, schema_id: int) -> Schema:
        """The writer schema of ``schema_id``; UnknownSchemaError when the registry has none."""
        found = self._by_id.get(schema_id)
        if found is not None:
            return found
        try:
            registered = self._client.get_schema(schema_id)
        except ClientError as exc:
            if exc.http_status_code == NOT_FOUND or exc.error_code == SCHEMA_NOT_FOUND:
                raise UnknownSchemaError(f"schema id {schema_id} not in the registry") from exc
            raise self._failure(f"looking up schema id {schema_id}", exc) from exc
        except httpx.HTTPError as exc:
            raise self._failure(f"looking up schema id {schema_id}", exc) from exc
        if registered.schema_type not in (None, "AVRO") or registered.schema_str is None:
            raise UnknownSchemaError(f"schema id {schema_id} is not an Avro schema")
        try:
            schema = Schema(json.loads(registered.schema_str))
        except (ValueError, KeyError, TypeError, SchemaParseException, UnknownType) as exc:
            raise UnknownSchemaError(f"schema id {schema_id} is not a readable Avro record") from exc
        self._by_id[schema_id] = schema
        return schema

    def _rule(self, subject: str) -> str:
        """'compatibility BACKWARD': the subject's rule, else the registry's, for the error. A
        subject without a rule of its own may answer NONE (Apicurio does) or 404 (Confluent);
        a refusal means some rule applied, so NONE is not it."""
        for scope in ((subject,), ()):
            try:
                level = self._client.get_compatibility(*scope)
            except (ClientError, httpx.HTTPError):
                continue
            if level and level != "NONE":
                return f"compatibility {level}"
        return "its compatibility rule"

    def _failure(self, doing: str, exc: Exception) -> SchemaRegistryError:
        detail = _one_line(str(exc)) or type(exc).__name__
        return SchemaRegistryError(f"schema registry {self.url}: {doing} failed: {detail}")


def _one_line(text: str) -> str:
    """A registry's error message without a Java exception's class name, on one line."""
    return " ".join(_JAVA_EXCEPTION.sub("", text.strip()).split())


def register_schemas(registry: ConfluentRegistry, subject_prefix: str,
                     directory: Path = SCHEMA_DIR) -> list[tuple[str, int]]:
    """Register every ``*.avsc`` of ``directory`` under its subject; (subject, id) of each, in
    file name order. Every schema is checked against its subject's compatibility rule first, so
    a refused one leaves the registry as it was."""
    files = sorted(directory.glob("*.avsc"))
    if not files:
        raise UsageError(f"no *.avsc schema files in {directory}")
    schemas = [(subject_for(schema, subject_prefix), schema)
               for schema in (load_schema(path.stem, directory) for path in files)]
    for subject, schema in schemas:
        if not registry.compatible(subject, schema):
            registry.register(subject, schema)  # refused, with the registry's reason, writing nothing
    return [(subject, registry.register(subject, schema)) for subject, schema in schemas]
