"""Peak memory and throughput of `dsprep convert` on a large OpenAI-chat JSONL file.

Run it from the repository root:

    .venv/bin/python benchmarks/convert_memory.py --size 1GB     # the target run (a few minutes)
    .venv/bin/python benchmarks/convert_memory.py --size 100MB   # a quick check
    .venv/bin/python benchmarks/convert_memory.py --size 100MB --tokenizer mistral:tekken --pack 4096  # tokenize+pack

It writes a deterministic (seeded) JSONL file of the requested size, of rows such as
``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`` with 1-6 messages of a few hundred
to a few thousand characters each (some with non-ASCII text), plus a small fraction of invalid JSON lines so the
rejects path runs too. It then runs ``dsprep convert FILE --out DIR --quiet`` as a child process and measures:

- peak RSS of the child (``ru_maxrss`` from ``os.wait4``), plus an RSS timeline sampled from /proc while it runs;
- with worker processes (``--workers``, tokenizing runs), the peak of the whole process tree's summed PSS, sampled
  (workers are children of a fork server, which ``ru_maxrss`` of the convert process does not cover; PSS counts the
  pages they share with it once);
- wall time, input bytes, throughput in MB/s and rows/s;
- rows read / kept / rejected from the output's ``manifest.json``, checked against what was generated.

It prints PASS when the peak RSS stays under --max-rss-mb (600 MB, the target for a 1 GB input) and the row counts
match, else FAIL and exits 1. Sizes and MB are binary units (1 MB = 2**20 bytes), as in ``dsprep --shard-size``.
Generated files are removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MB = 1 << 20
UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
POOL_SIZE = 4000  # distinct messages generated once, then combined into rows
CHUNK_CHARS = 4 << 20  # write the file in pieces of about this many characters
SAMPLE_EVERY_S = 0.1

WORDS_TEXT = (
    "the model should answer the question using the context below and explain each step of its reasoning clearly "
    "data training loss gradient batch token sequence length evaluation metric dataset split validation function "
    "return value error handling python code example list dictionary string integer float parameter argument user "
    "assistant system prompt response summary translate paragraph document section table figure result analysis "
    "because therefore however although meanwhile instead finally first second third next then also only very "
    "customer order invoice shipping address payment refund product review rating recommendation schedule meeting "
    "weather forecast temperature city country history science biology chemistry physics mathematics proof theorem"
)
WORDS = tuple(WORDS_TEXT.split())
NON_ASCII = (
    "Grüße aus München, schöne Übersicht über die Größenordnung.",
    "Le café était très agréable, merci beaucoup à l'équipe.",
    "Привет, как дела? Это пример текста на русском языке.",
    "これは日本語のテキストの例です。よろしくお願いします。",
    "这是一个中文句子的例子，用于测试编码。",
    "مرحبا، هذا مثال على نص باللغة العربية.",
    "Ελληνικά: καλημέρα, τι κάνεις σήμερα;",
    "Emoji check 🚀✨🙂 and math ∑ x² ≤ ∞ → ok.",
)
CODE = (
    "\n\n```python\ndef add(a, b):\n    return a + b\n\nprint(add(2, 3))\n```\n\n",
    '\n\n```json\n{"name": "example", "values": [1, 2, 3], "ok": true}\n```\n\n',
    "\n\n| column | value |\n|---|---|\n| a | 1 |\n| b | 2 |\n\n",
)
LENGTHS = {"system": (100, 800), "user": (200, 2000), "assistant": (300, 4000)}


def parse_size(text: str) -> int:
    """'1GB', '100MB', '512k', '4096' -> bytes (binary units)."""
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)i?b?\s*$", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 100MB or 1GB")
    return int(float(m.group(1)) * UNITS[m.group(2).lower()])


def _text(rng: random.Random, length: int) -> str:
    parts: list[str] = []
    n = 0
    while n < length:
        roll = rng.random()
        if roll < 0.03:
            piece = " " + rng.choice(NON_ASCII)
        elif roll < 0.05:
            piece = rng.choice(CODE)
        else:
            words = rng.choices(WORDS, k=rng.randint(6, 18))
            piece = " " + " ".join(words).capitalize() + rng.choice((".", ".", ".", "?", "!", ":"))
        parts.append(piece)
        n += len(piece)
    return "".join(parts).strip()[:length] or "ok"


def _pool(rng: random.Random) -> dict[str, list[str]]:
    """Per role, serialized messages missing their closing '"}', so a row id can be appended to the content."""
    pool: dict[str, list[str]] = {}
    for role, (lo, hi) in LENGTHS.items():
        count = POOL_SIZE // 4 if role == "system" else POOL_SIZE
        pool[role] = [
            json.dumps({"role": role, "content": _text(rng, rng.randint(lo, hi))}, ensure_ascii=False)[:-2]
            for _ in range(count)
        ]
    return pool


def generate(path: Path, size: int, seed: int, invalid_fraction: float) -> tuple[int, int]:
    """Write about `size` bytes of JSONL to `path`; returns (lines written, invalid lines among them)."""
    rng = random.Random(seed)
    pool = _pool(rng)
    system, user, assistant = pool["system"], pool["user"], pool["assistant"]
    rand, randint, choice = rng.random, rng.randint, rng.choice
    lines = invalid = written = 0
    with open(path, "wb") as fh:
        while written < size:
            chunk: list[str] = []
            chars = 0
            while chars < min(CHUNK_CHARS, size - written):
                n = randint(1, 6)
                msgs = []
                if n >= 2 and rand() < 0.4:
                    msgs.append(choice(system) + '"}')
                    n -= 1
                for i in range(n):
                    head = choice(user if i % 2 == 0 else assistant)
                    msgs.append(head + (f' (ref {lines:09d})"}}' if i == 0 else '"}'))
                line = '{"messages": [' + ", ".join(msgs) + "]}"
                if rand() < invalid_fraction:
                    line = line[: randint(1, len(line) - 2)]  # truncated: never valid JSON
                    invalid += 1
                chunk.append(line)
                chars += len(line) + 1
                lines += 1
            data = ("\n".join(chunk) + "\n").encode()
            fh.write(data)
            written += len(data)
    return lines, invalid


def _kb_field(path: str, name: str) -> float | None:
    """A ``Name:   123 kB`` line of a /proc file, in MB."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(name):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _rss_mb(pid: int) -> float | None:
    return _kb_field(f"/proc/{pid}/status", "VmRSS:")


def _pss_mb(pid: int) -> float | None:
    return _kb_field(f"/proc/{pid}/smaps_rollup", "Pss:")


def _tree_pss_mb(pid: int) -> float | None:
    """Summed PSS (shared pages divided among their users) of `pid` and all its descendants."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        total += _pss_mb(p) or 0.0
        stack.extend(children.get(p, []))
    return total or None


def run_convert(
    src: Path, out: Path, log: Path, options: list[str]
) -> tuple[int, float, float, list[tuple[float, float]], float]:
    """Run dsprep convert; returns (exit code, wall s, peak RSS MB from wait4, RSS timeline, peak tree PSS MB)."""
    script = Path(sys.executable).with_name("dsprep")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "dsprep"]
    cmd += ["convert", str(src), "--out", str(out), "--quiet", *options]
    print("running:", " ".join(cmd), flush=True)
    timeline: list[tuple[float, float]] = []
    tree_peak = [0.0]
    with open(log, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(SAMPLE_EVERY_S):
                rss = _rss_mb(proc.pid)
                if rss is not None:
                    timeline.append((time.perf_counter() - start, rss))
                tree_peak[0] = max(tree_peak[0], _tree_pss_mb(proc.pid) or 0.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; tell Popen
    return proc.returncode, wall, usage.ru_maxrss / 1024, timeline, tree_peak[0]  # ru_maxrss: KiB on Linux


def _timeline_text(timeline: list[tuple[float, float]], points: int = 10) -> str:
    if not timeline:
        return "(no samples)"
    step = max(1, len(timeline) // points)
    picked = timeline[::step]
    if picked[-1] is not timeline[-1]:
        picked.append(timeline[-1])
    return "  ".join(f"{t:.1f}s:{rss:.0f}" for t, rss in picked)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1GB"), help="input size, e.g. 100MB or 1GB")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (default: a new dir under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated input and output")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the generated data")
    parser.add_argument("--invalid-fraction", type=float, default=0.001, help="fraction of invalid JSON lines")
    parser.add_argument("--max-rss-mb", type=float, default=600.0, help="peak RSS target in MB (PASS below it)")
    parser.add_argument("--tokenizer", help="tokenize with this tokenizer (e.g. mistral:tekken)")
    parser.add_argument("--template", default="chatml", help="chat template when tokenizing (default chatml)")
    parser.add_argument("--pack", type=int, help="pack into rows of at most this many tokens (needs --tokenizer)")
    parser.add_argument("--workers", type=int, help="dsprep --workers (default: dsprep's, every usable core)")
    args = parser.parse_args()
    options = ["--no-cache", "--format", "openai"]
    if args.tokenizer:
        options += ["--tokenizer", args.tokenizer, "--template", args.template]
    if args.pack:
        options += ["--pack", str(args.pack)]
    if args.workers:
        options += ["--workers", str(args.workers)]

    own_dir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="dsprep-bench-", dir="/tmp")) if own_dir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    src, out, log = workdir / "chat.jsonl", workdir / "out", workdir / "convert.log"
    try:
        t0 = time.perf_counter()
        lines, invalid = generate(src, args.size, args.seed, args.invalid_fraction)
        size = src.stat().st_size
        print(
            f"generated {src}: {size / MB:.1f} MB, {lines} lines ({invalid} invalid) "
            f"in {time.perf_counter() - t0:.1f}s",
            flush=True,
        )
        if out.exists():
            shutil.rmtree(out)
        code, wall, peak, timeline, tree_peak = run_convert(src, out, log, options)
        if code != 0:
            print(log.read_text(errors="replace")[-4000:], file=sys.stderr)
            print(f"FAIL: dsprep convert exited with {code} after {wall:.1f}s (peak RSS {peak:.0f} MB)")
            return 1
        manifest = json.loads((out / "manifest.json").read_text())
        totals = manifest["totals"]
        out_bytes = sum(s["bytes"] for s in manifest["shards"])
        reasons = manifest["inputs"][0]["rejected_by_reason"]
        unparsed = sum(n for reason, n in reasons.items() if reason in ("invalid_json", "wrong_type"))
        counts_ok = (totals["rows_read"], unparsed) == (lines, invalid)
        rss_ok = max(peak, tree_peak) < args.max_rss_mb
        print()
        print(f"input         {size / MB:,.1f} MB  ({size:,} bytes)")
        print(
            f"rows          read {totals['rows_read']:,}  kept {totals['rows_kept']:,}  "
            f"rejected {totals['rows_rejected']:,}  (generated {lines:,}, {invalid:,} invalid)  {reasons}"
        )
        print(f"output        {len(manifest['shards'])} shard(s), {out_bytes / MB:,.1f} MB")
        print(f"wall time     {wall:.1f} s")
        print(f"throughput    {size / MB / wall:,.1f} MB/s  {totals['rows_read'] / wall:,.0f} rows/s")
        print(f"peak RSS      {peak:,.0f} MB  (target < {args.max_rss_mb:.0f} MB)")
        print(f"peak tree PSS {tree_peak:,.0f} MB  (convert process, fork server and workers, summed PSS, sampled)")
        print(f"RSS timeline  {_timeline_text(timeline)}  (elapsed:MB)")
        if "packing" in manifest:
            p = manifest["packing"]
            rows = f"{p['rows']:,} rows of {p['max_len']}"
            print(f"packing       {p['tokens']:,} tokens, {rows}, {p['efficiency']:.2%} full")
        if not counts_ok:
            print(f"row counts do not match what was generated ({lines} lines, {invalid} invalid)")
        ok = rss_ok and counts_ok
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        if args.keep:
            print(f"kept {workdir}")
        elif own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            for p in (src, log):
                p.unlink(missing_ok=True)
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
