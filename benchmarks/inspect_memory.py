"""Peak RSS of `dsprep inspect` on a large JSONL (default 1 GB), to show memory stays bounded.

Run: .venv/bin/python benchmarks/inspect_memory.py [--gb 1.0] [--keep]

Writes a synthetic OpenAI-chat JSONL (10% exact duplicates) under a temporary folder, runs `dsprep inspect --json`
on it in a child process, and prints rows, wall time and the child's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_input(path: Path, size: int) -> int:
    rng = random.Random(0)
    words = [
        "the",
        "a",
        "model",
        "data",
        "token",
        "train",
        "shard",
        "pack",
        "row",
        "chat",
        "user",
        "answer",
        "tool",
        "value",
    ]
    written = rows = 0
    previous: list[bytes] = []
    with path.open("wb") as f:
        while written < size:
            if previous and rng.random() < 0.1:
                line = rng.choice(previous)
            else:
                text = " ".join(rng.choices(words, k=rng.randint(20, 400)))
                msgs = [
                    {"role": "user", "content": f"question {rows}: {text[:200]}"},
                    {"role": "assistant", "content": text},
                ]
                line = json.dumps({"messages": msgs}).encode() + b"\n"
                if len(previous) < 1000:
                    previous.append(line)
            f.write(line)
            written += len(line)
            rows += 1
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="Input size in GB.")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary folder.")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dsprep-inspect-bench-"))
    src = tmp / "big.jsonl"
    rows = write_input(src, int(args.gb * (1 << 30)))
    code = ("import sys; from dsprep.report.cli import inspect_command; "
            "inspect_command.main(sys.argv[1:], standalone_mode=True)")  # fmt: skip
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(src), "--quiet", "--json", str(tmp / "r.json")], check=True)
    elapsed = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    report = json.loads((tmp / "r.json").read_text())
    dups = report["inputs"][0]["duplicates"]["rows"]
    print(f"{src.stat().st_size / (1 << 30):.2f} GB, {rows} rows ({dups} duplicates found): "
          f"{elapsed:.1f} s, peak RSS {peak_mb:.0f} MB")  # fmt: skip
    if not args.keep:
        import shutil

        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
