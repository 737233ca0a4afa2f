"""`--fail-on`: CI gates over a report, e.g. ``rejected>0.01,untrained_rows>0,duplicates>0.05``.

A rule is ``METRIC OP VALUE`` (OP one of ``> >= < <= ==``; VALUE a number or a percentage such as ``1%``); the
gate fails when any rule holds. A failed gate exits with code 11 (`GateFailed`).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dsprep.errors import DsprepError
from dsprep.report.checks import ANOMALIES

__all__ = ["METRICS", "GateFailed", "Rule", "evaluate", "metrics", "parse_rules"]

GATE_EXIT_CODE = 11
RULE = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|==|>|<)\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")
OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq,
}  # fmt: skip
METRICS = {
    "rejected": "share of rows read that were rejected (0..1), by raw inputs and output folders alike",
    "rejected_rows": "number of rows rejected",
    "duplicates": "share of rows that duplicate an earlier row of the same input (0..1)",
    "duplicate_rows": "number of such rows",
    "overlap": "rows of a later input also found in an earlier one (e.g. valid in train)",
    "findings": "rows with any finding, summed over all findings",
    "untrained_rows": "rows with no trained token (needs --tokenizer, or tokenized shards)",
    "over_max_len": "share of encoded rows over --max-len (needs raw inputs, --tokenizer and --max-len or --pack)",
    "packing_efficiency": "tokens / slots of the packing estimate (needs raw inputs, --tokenizer and --pack)",
    **{name: f"rows with the finding: {text}" for name, text in ANOMALIES.items()},
}
SHARES = ("rejected", "duplicates", "over_max_len", "packing_efficiency")  # 0..1; the others count rows


class GateFailed(DsprepError):
    """A `--fail-on` rule held."""

    exit_code = GATE_EXIT_CODE


@dataclass(frozen=True)
class Rule:
    """One parsed `--fail-on` rule."""

    metric: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


def parse_rules(text: str) -> list[Rule]:
    """Parse a comma-separated rule list; raises ValueError naming the bad rule, an unknown metric, a percentage on
    a metric that counts rows, or a list without any rule."""
    rules = []
    for part in filter(str.strip, text.split(",")):
        m = RULE.match(part)
        if not m:
            raise ValueError(f"{part.strip()!r} is not a rule such as rejected>0.01 or duplicates>=5%")
        metric, op, number, pct = m.groups()
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
        if pct and metric not in SHARES:
            raise ValueError(f"{part.strip()!r}: {metric} counts rows; a percentage applies to the shares "
                             f"{', '.join(SHARES)}")  # fmt: skip
        rules.append(Rule(metric, op, float(number) / (100 if pct else 1)))
    if not rules:
        raise ValueError(f"{text!r} holds no rule; give rules such as rejected>0.01,duplicates>=5%")
    return rules


def metrics(report: dict[str, Any]) -> dict[str, float]:
    """Every gate metric the report can give (those needing a tokenizer or --pack only when present). Rejects count
    over the report's totals (raw inputs and output folders' runs); duplicates and findings over the raw inputs."""
    inputs, shards, tokens = report["inputs"], report["shards"], report["tokens"]
    read, rejected = report["totals"]["rows_read"], report["totals"]["rows_rejected"]
    raw_read = sum(i["rows"]["read"] for i in inputs)
    dups = sum(i["duplicates"]["rows"] for i in inputs)
    out: dict[str, float] = {
        "rejected": rejected / read if read else 0.0, "rejected_rows": rejected,
        "duplicates": dups / raw_read if raw_read else 0.0, "duplicate_rows": dups,
        "overlap": sum(o["rows"] for o in report["overlaps"]),
    }  # fmt: skip
    for name in ANOMALIES:
        out[name] = sum(i["findings"].get(name, {}).get("count", 0) for i in inputs)
    out["findings"] = sum(out[name] for name in ANOMALIES)
    untrained = [s["token_stats"]["untrained_rows"] for s in shards if s.get("token_stats")]
    if tokens is not None:
        untrained.append(tokens["untrained_rows"])
        if tokens["max_len"] is not None:
            out["over_max_len"] = tokens["overflow"]["share_over"]
        if tokens["packing"] is not None:
            out["packing_efficiency"] = tokens["packing"]["efficiency"]
    if untrained:
        out["untrained_rows"] = sum(untrained)
    return out


def _missing(metric: str, report: dict[str, Any]) -> str:
    """Why `report` gives no value for `metric`, naming what it lacks."""
    options = report["options"]
    if metric == "untrained_rows":
        return "untrained_rows needs --tokenizer for raw inputs, or an output folder of tokenized shards"
    lacks = [] if report["inputs"] else ["raw inputs (output folders are not measured against a limit)"]
    if options["tokenizer"] is None:
        lacks.append("--tokenizer")
    if metric == "over_max_len" and options["max_len"] is None and options["pack"] is None:
        lacks.append("--max-len or --pack")
    if metric == "packing_efficiency" and options["pack"] is None:
        lacks.append("--pack")
    return f"{metric} needs {' and '.join(lacks)}"


def evaluate(rules: list[Rule], report: dict[str, Any]) -> dict[str, Any]:
    """The gate's verdict: each rule with the metric's value and whether it held (a failure). A rule whose metric
    the report cannot give raises ValueError saying what it needs."""
    values = metrics(report)
    results = []
    for rule in rules:
        if rule.metric not in values:
            raise ValueError(f"{rule}: {_missing(rule.metric, report)}")
        value = values[rule.metric]
        results.append({"rule": str(rule), "metric": rule.metric, "value": value,
                        "failed": OPS[rule.op](value, rule.value)})  # fmt: skip
    return {"rules": results, "passed": not any(r["failed"] for r in results)}
