"""Google's contract for FCM HTTP v1 requests: the ``fcm.v1`` discovery document that
google-api-python-client ships (``googleapiclient/discovery_cache/documents/fcm.v1.json``), the
same description Google's own client libraries are generated from. ``problems`` lists every way a
request departs from it: the method and path of ``messages:send``, and the body against the
``SendMessageRequest`` schema (unknown fields, types, enum values such as priorities, ``ttl`` as a
duration string, fields the document marks "Required.")."""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import googleapiclient

DURATION = re.compile(r"^-?\d+(\.\d{1,9})?s$")  # google-duration: "60s", "3.000000001s"


@cache
def discovery() -> dict[str, Any]:
    path = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents" / "fcm.v1.json"
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def problems(method: str, path: str, body: Any) -> list[str]:
    """Every departure of one request from ``projects.messages.send``; empty when Google's
    contract takes it."""
    send = discovery()["resources"]["projects"]["resources"]["messages"]["methods"]["send"]
    found = []
    if method != send["httpMethod"]:
        found.append(f"method {method}, not {send['httpMethod']}")
    template = send["path"]  # v1/{+parent}/messages:send
    prefix, _, suffix = template.partition("{+parent}")
    parent = path.lstrip("/").removeprefix(prefix).removesuffix(suffix)
    if not path.lstrip("/").startswith(prefix) or not path.endswith(suffix) or \
            not re.match(send["parameters"]["parent"]["pattern"], parent):
        found.append(f"path {path} does not match {template}")
    return found + _check(body, {"$ref": send["request"]["$ref"]}, "")


def _check(value: Any, schema: dict[str, Any], where: str) -> list[str]:
    if "$ref" in schema:
        schema = discovery()["schemas"][schema["$ref"]]
    name = where or "the body"
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            return [f"{name} must be an object"]
        found = []
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            path = f"{where}.{key}" if where else key
            if key in properties:
                found += _check(item, properties[key], path)
            elif extra is not None:
                found += _check(item, extra, path)
            else:
                found.append(f"unknown field {path}")
        found += [f"missing required field {where + '.' if where else ''}{key}"
                  for key, spec in properties.items()
                  if spec.get("description", "").startswith("Required.") and key not in value]
        return found
    if kind == "array":
        if not isinstance(value, list):
            return [f"{name} must be an array"]
        return [p for i, item in enumerate(value) for p in _check(item, schema["items"], f"{where}[{i}]")]
    if kind == "string":
        if not isinstance(value, str):
            return [f"{name} must be a string, not {value!r}"]
        if "enum" in schema and value not in schema["enum"]:
            return [f"{name} must be one of {', '.join(schema['enum'])}, not {value!r}"]
        if schema.get("format") == "google-duration" and not DURATION.match(value):
            return [f"{name} must be a duration such as \"60s\", not {value!r}"]
        if schema.get("format") == "google-datetime":
            try:
                datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                return [f"{name} must be an RFC 3339 time, not {value!r}"]
        return []
    if kind == "boolean" and not isinstance(value, bool):
        return [f"{name} must be true or false, not {value!r}"]
    if kind == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
        return [f"{name} must be an integer, not {value!r}"]
    if kind == "number" and (isinstance(value, bool) or not isinstance(value, int | float)):
        return [f"{name} must be a number, not {value!r}"]
    return []
