"""Speed of `dsprep convert --workers 1` against `--workers 2`, and byte identity of their outputs.

    .venv/bin/python benchmarks/workers_speed.py --rows 20000

Generates a seeded chat corpus (JSONL, openai format, lognormal turn lengths), converts it with
``--tokenizer mistral:tekken --template chatml`` once per worker count, prints seconds and the speedup, and checks that
every output file is byte-identical. A report: the exit code is 1 only when the outputs differ.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = [f"w{i}x" for i in range(3000)]


def corpus(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for _ in range(rows):
            messages = []
            for _turn in range(rng.choice((1, 1, 2, 3))):
                for role in ("user", "assistant"):
                    n = max(1, int(rng.lognormvariate(3.5, 1.0)))
                    messages.append({"role": role, "content": " ".join(rng.choices(WORDS, k=n))})
            fh.write(json.dumps({"messages": messages}) + "\n")


def run(src: Path, out: Path, workers: int) -> float:
    cmd = [sys.executable, "-m", "dsprep", "convert", str(src), "--out", str(out), "-q", "--no-cache", "--format",
           "openai", "--tokenizer", "mistral:tekken", "--template", "chatml", "--workers", str(workers)]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = root / "chats.jsonl"
        corpus(src, args.rows)
        one = run(src, root / "one", 1)
        two = run(src, root / "two", 2)
        same = all((root / "one" / p.name).read_bytes() == p.read_bytes() for p in (root / "two").iterdir())
        print(f"rows {args.rows}: workers 1 {one:.1f} s, workers 2 {two:.1f} s, speedup {one / two:.2f}x")
        print(f"outputs byte-identical: {same}")
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
