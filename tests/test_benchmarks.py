"""The benchmark scripts that call dsprep's own functions still run against the current code, on tiny inputs.

They time internals (`dsprep.workers.process` and its parts, the encoder, the packer) that change shape as the code
does; a benchmark that no longer runs cannot check a target. Each runs here in seconds, with its printed verdict
lines present (what they say about speed at this size is not asserted).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("stage_costs.py", ["--rows", "40", "--repeat", "1"], ["ceiling: encode_to_numpy", "normalizing", "process()"]),
        ("tokenize_speed.py", ["--rows", "40", "--skip-trl"], ["ratio dsprep/HF tokenizer ceiling ="]),
        ("pack_quality.py", ["--rows", "60", "--synthetic", "2000"], ["dsprep above bound =", "speed target"]),
        (
            "workers_speed.py",
            ["--rows", "300", "--repeat", "1", "--pack", "512", "--target", "0"],
            ["outputs byte-identical: True", "the bare encoder on the pre-rendered rows", "(target >= 0.0: PASS)"],
        ),
    ],
)
def test_benchmark_runs_on_a_tiny_input(script: str, args: list[str], expected: list[str], tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    for line in expected:
        assert line in done.stdout, f"{script} printed no {line!r}:\n{done.stdout[-3000:]}"


def test_the_benchmarks_time_dsprep_with_its_bytecode_compiled(tmp_path: Path) -> None:
    """An installed wheel has its bytecode; an editable checkout run with PYTHONDONTWRITEBYTECODE would compile every
    module again on each timed run. The benchmarks compile the package the running Python imports first."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from bench_common import compile_dsprep
    finally:
        sys.path.remove(str(BENCHMARKS))
    import importlib.util

    cached = []
    for module in ("dsprep.pipeline", "dsprep.workers", "dsprep.cli"):
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.cached is not None
        cached.append(Path(spec.cached))
    for path in cached:
        path.unlink(missing_ok=True)
    compile_dsprep()
    for path in cached:
        assert path.is_file(), f"no bytecode at {path}"
