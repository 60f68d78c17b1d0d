"""metrics.json's JSON Schema (``metrics.schema.json`` beside this module) and a small validator for it.

``jsonschema`` is not a dependency, so :func:`validate` implements the subset of JSON Schema 2020-12
the file uses: ``type`` (one or a list), ``const``, ``enum``, ``minimum``/``maximum``, ``properties``,
``required``, ``additionalProperties`` (false or a schema), ``items``, ``minItems``/``maxItems``,
``anyOf`` and local ``$ref`` (``#/$defs/...``). Any other keyword in the schema is an error, so the
schema cannot silently ask for more than is checked.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA_PATH", "SchemaError", "load_schema", "validate"]

SCHEMA_PATH = Path(__file__).with_name("metrics.schema.json")
_ANNOTATIONS = {"$schema", "$id", "title", "description", "$defs"}
_KNOWN = _ANNOTATIONS | {"type", "const", "enum", "minimum", "maximum", "properties", "required",
                         "additionalProperties", "items", "minItems", "maxItems", "anyOf", "$ref"}
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


class SchemaError(ValueError):
    """The document does not match the schema; the message names the JSON path."""


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def validate(doc: Any, schema: dict[str, Any] | None = None) -> None:
    """Raise :class:`SchemaError` when ``doc`` does not match ``schema`` (default: metrics.schema.json)."""
    root = schema if schema is not None else load_schema()
    _check(doc, root, root, "$")


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    if not ref.startswith("#/"):
        raise SchemaError(f"only local $ref is supported, got {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _check(v: Any, s: dict[str, Any], root: dict[str, Any], path: str) -> None:
    unknown = set(s) - _KNOWN
    if unknown:
        raise SchemaError(f"schema at {path} uses unsupported keywords {sorted(unknown)}")
    if "$ref" in s:
        _check(v, _resolve(s["$ref"], root), root, path)
    if "anyOf" in s:
        errors = []
        for sub in s["anyOf"]:
            try:
                _check(v, sub, root, path)
                break
            except SchemaError as exc:
                errors.append(str(exc))
        else:
            raise SchemaError(f"{path}: matches none of anyOf ({'; '.join(errors)})")
    if "type" in s:
        types = s["type"] if isinstance(s["type"], list) else [s["type"]]
        if not any(_TYPES[t](v) for t in types):
            raise SchemaError(f"{path}: {v!r} is not of type {types}")
    if "const" in s and v != s["const"]:
        raise SchemaError(f"{path}: {v!r} != {s['const']!r}")
    if "enum" in s and v not in s["enum"]:
        raise SchemaError(f"{path}: {v!r} not one of {s['enum']}")
    if _TYPES["number"](v):
        if "minimum" in s and v < s["minimum"]:
            raise SchemaError(f"{path}: {v} < minimum {s['minimum']}")
        if "maximum" in s and v > s["maximum"]:
            raise SchemaError(f"{path}: {v} > maximum {s['maximum']}")
    if isinstance(v, dict):
        for key in s.get("required", []):
            if key not in v:
                raise SchemaError(f"{path}: missing required {key!r}")
        props = s.get("properties", {})
        for key, value in v.items():
            if key in props:
                _check(value, props[key], root, f"{path}.{key}")
            elif "additionalProperties" in s:
                extra = s["additionalProperties"]
                if extra is False:
                    raise SchemaError(f"{path}: unexpected property {key!r}")
                if isinstance(extra, dict):
                    _check(value, extra, root, f"{path}.{key}")
    if isinstance(v, list):
        if "minItems" in s and len(v) < s["minItems"]:
            raise SchemaError(f"{path}: fewer than {s['minItems']} items")
        if "maxItems" in s and len(v) > s["maxItems"]:
            raise SchemaError(f"{path}: more than {s['maxItems']} items")
        if "items" in s:
            for i, item in enumerate(v):
                _check(item, s["items"], root, f"{path}[{i}]")
