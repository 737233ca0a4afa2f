"""The report as JSON, and its published JSON Schema (``dsprep/report/report_schema.json``)."""

from __future__ import annotations

from importlib import resources
from typing import Any

import orjson

__all__ = ["load_schema", "to_json"]

SCHEMA_FILE = "report_schema.json"


def to_json(report: dict[str, Any]) -> bytes:
    """The report as indented JSON (keys in report order; non-ASCII kept)."""
    return orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def load_schema() -> dict[str, Any]:
    """The JSON Schema every `--json` report validates against."""
    return orjson.loads(resources.files("dsprep.report").joinpath(SCHEMA_FILE).read_bytes())  # type: ignore[no-any-return]
