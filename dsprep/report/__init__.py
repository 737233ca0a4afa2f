"""`dsprep inspect`: a validation report for raw fine-tuning files and for dsprep shards.

`build_report(paths, InspectOptions(...))` returns the report as a dict following the versioned JSON Schema
shipped as ``dsprep/report/report_schema.json``; `dsprep.report.terminal`, `dsprep.report.html` and
`dsprep.report.jsonout` render it, and `dsprep.report.gate` turns ``--fail-on`` rules into an exit code (11).
"""

from __future__ import annotations

from dsprep.report.build import REPORT_VERSION, InspectOptions, build_report
from dsprep.report.gate import GATE_EXIT_CODE, GateFailed, evaluate, parse_rules

__all__ = ["GATE_EXIT_CODE", "REPORT_VERSION", "GateFailed", "InspectOptions", "build_report", "evaluate",
           "parse_rules"]  # fmt: skip
