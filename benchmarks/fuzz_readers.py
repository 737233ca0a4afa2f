"""The long fuzz run: tens of thousands of random and mutated inputs through `dsprep convert`.

Uses the generators and checks of tests/test_fuzz_readers.py (every reader, every shipped format, damaged bytes,
wrong types, deep nesting, huge strings, NUL, invalid UTF-8, surrogates, duplicate keys, mixed formats) without
stopping at the first failure, and prints how many cases ran, how many crashed (traceback, internal error or an
undocumented exit code), how many broke the row accounting, and the first few failures with their inputs.

    .venv/bin/python benchmarks/fuzz_readers.py --cases 10000 [--seed 0]

Exit status 1 when any case failed.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_fuzz_readers as fz


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    counts: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    seen: set[str] = set()
    failures: list[tuple[str, dict[str, Any]]] = []
    families = {
        "files": fz.fuzz_case(),
        "mixed_jsonl": st.builds(
            lambda lines, fmt: fz.Case("mixed.jsonl", b"\n".join(lines) + b"\n", fmt, [], None),
            st.lists(fz.line(), min_size=1, max_size=6),
            st.sampled_from(fz.FORMATS),
        ),
        "noise": st.builds(
            lambda data, c: fz.Case(f"noise.{c}", data, "auto"),
            st.binary(max_size=200),
            st.sampled_from(["jsonl", "json", "csv", "tsv", "txt", "parquet", "arrow", "jsonl.gz"]),
        ),
    }
    shares = {"files": 0.7, "mixed_jsonl": 0.2, "noise": 0.1}
    start = time.monotonic()
    current = {"family": ""}
    for family, strategy in families.items():
        n = max(1, round(args.cases * shares[family]))
        current["family"] = family

        @seed(args.seed)
        @settings(
            max_examples=n, deadline=None, database=None, phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        @given(strategy)
        def run(case: fz.Case) -> None:
            counts["cases"] += 1
            counts[f"cases_{current['family']}"] += 1
            problems = fz.run_case(case)
            for problem in problems:
                kinds[problem.split(":", 3)[-1][:90] if problem.startswith("crash") else problem[:90]] += 1
            if any(p.startswith(("crash", "exit code")) for p in problems):
                counts["crashes"] += 1
            if any(p.startswith("accounting") for p in problems):
                counts["accounting_violations"] += 1
            if problems:
                counts["failed_cases"] += 1
                kind = problems[0][:60]
                if kind not in seen:
                    seen.add(kind)
                    failures.append((current["family"], {"case": case, "problems": problems}))

        run()
        print(f"{family}: {counts[f'cases_{family}']} cases, {time.monotonic() - start:.0f} s", flush=True)

    print(f"cases: {counts['cases']}")
    print(f"crashes: {counts['crashes']}")
    print(f"accounting violations: {counts['accounting_violations']}")
    print(f"failed cases (any invariant): {counts['failed_cases']}")
    print(f"time: {time.monotonic() - start:.0f} s")
    for kind, n in kinds.most_common():
        print(f"{n:6d} x {kind}")
    for family, failure in failures:
        case = failure["case"]
        print(f"--- {family}: {case.name} --format {case.fmt} {' '.join(case.options)}: {failure['problems']}")
        print(f"    data[:600] = {case.data[:600]!r}")
    return 1 if counts["failed_cases"] else 0


if __name__ == "__main__":
    sys.exit(main())
