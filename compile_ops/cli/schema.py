"""The one JSON document every command prints with ``--json`` (and ``bench --out`` saves).

Every document carries ``"schema": "compile-ops/1"``; a change that removes or renames a key, or
changes its meaning, bumps the number. Adding a key does not. ``SCHEMA`` is the JSON Schema
(draft 2020-12) of all three commands' documents; docs/commands.md describes each key.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SCHEMA", "SCHEMA_ID", "document"]

SCHEMA_ID = "compile-ops/1"


def document(command: str, *, ok: bool, **fields: Any) -> dict[str, Any]:
    """The common head (schema, command, versions, verdict) followed by ``fields``."""
    import torch

    from . import version

    return {
        "schema": SCHEMA_ID,
        "command": command,
        "compile_ops": version(),
        "torch": torch.__version__,
        "ok": ok,
        **fields,
    }


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
    }


_STR, _INT, _BOOL, _NUM = ({"type": t} for t in ("string", "integer", "boolean", "number"))
_STRS = {"type": "array", "items": _STR}

_TIMING = {
    "median_us": _NUM,
    "p25_us": _NUM,
    "p75_us": _NUM,
    "blocks": _INT,
    "calls_per_block": _INT,
}
_SIZED = {"op": _STR, "dtype": _STR, "bytes": _INT, "variant": _STR}

_CHECK = _obj(
    {
        "world_size": _INT,
        "backend": _STR,
        "patches": {
            "type": "array",
            "items": _obj({"name": _STR, "state": _STR, "reason": _STR}),
        },
        "rows": {
            "type": "array",
            "items": _obj(
                {
                    "section": {"enum": ["collectives", "dtypes", "moe"]},
                    "name": _STR,
                    "world_size": _INT,
                    "backend": _STR,
                    "eager_ok": _BOOL,
                    "compiled_ok": _BOOL,
                    "graph_breaks": _INT,
                    "seconds": _NUM,
                    "error": _STR,
                    "ok": _BOOL,
                }
            ),
        },
    }
)

_AUDIT = _obj(
    {
        "namespace": _STR,
        "counts": _obj({"ok": _INT, "warn": _INT, "fail": _INT}),
        "ops": {
            "type": "array",
            "items": _obj(
                {
                    "op": _STR,
                    "fake": {"type": ["string", "null"]},
                    "schema": _STR,
                    "opcheck": {"enum": ["pass", "fail", "-"]},
                    "problems": _STRS,
                    "status": {"enum": ["ok", "warn", "fail"]},
                }
            ),
        },
    }
)

_BENCH = _obj(
    {
        "env": {"type": "object", "additionalProperties": _STR},
        "latency": {"type": "array", "items": _obj({**_SIZED, **_TIMING})},
        "overhead": {"type": "array", "items": _obj({**_SIZED, **_TIMING})},
        "dispatch": {"type": "array", "items": _obj({"variant": _STR, **_TIMING})},
        "generated": {"type": "array", "items": _obj({"fn": _STR, "copies": _STRS})},
        "errors": _STRS,
        "targets": {
            "type": "array",
            "items": _obj({"target": _STR, "met": _BOOL, "detail": _STR}),
        },
        "strict": _BOOL,
    },
    {"link_gbps": {"type": ["number", "null"]}},
)

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    "title": "compile-ops command output",
    "type": "object",
    "required": ["schema", "command", "compile_ops", "torch", "ok"],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "command": {"enum": ["check", "bench", "audit"]},
        "compile_ops": _STR,
        "torch": _STR,
        "ok": _BOOL,
    },
    "allOf": [
        {"if": {"properties": {"command": {"const": c}}}, "then": body}
        for c, body in (("check", _CHECK), ("bench", _BENCH), ("audit", _AUDIT))
    ],
}
