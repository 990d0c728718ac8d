"""A minimal Confluent Schema Registry client (REST), used only when a registry URL is set."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from streams.serde import Schema
from streams.serde.exceptions import SerdeError


class HttpSchemaRegistry:
    """Registers writer schemas by subject and looks writer schemas up by id, with a cache."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self._url = url.rstrip("/")
        self._timeout = timeout_s
        self._by_id: dict[int, Schema] = {}

    def register(self, subject: str, schema: Schema) -> int:
        body = json.dumps({"schema": json.dumps(schema.definition)}).encode()
        reply = self._call("POST", f"/subjects/{subject}/versions", body)
        schema_id = int(reply["id"])
        self._by_id[schema_id] = schema
        return schema_id

    def lookup(self, schema_id: int) -> Schema:
        if schema_id not in self._by_id:
            reply = self._call("GET", f"/schemas/ids/{schema_id}")
            self._by_id[schema_id] = Schema(json.loads(reply["schema"]))
        return self._by_id[schema_id]

    def _call(self, method: str, path: str, body: bytes | None = None) -> dict[str, Any]:
        request = urllib.request.Request(
            self._url + path,
            data=body,
            method=method,
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                result: dict[str, Any] = json.loads(response.read())
                return result
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise SerdeError(f"schema registry {self._url}{path}: {exc}") from exc
