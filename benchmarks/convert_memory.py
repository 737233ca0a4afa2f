"""Peak memory and throughput of `dsprep convert` on large generated OpenAI-chat JSONL inputs, tokenized and packed.

Run it from the repository root:

    .venv/bin/python benchmarks/convert_memory.py                 # the target: a 1 GB and a 4 GB input (see below)
    .venv/bin/python benchmarks/convert_memory.py 100MB 400MB     # a quick check of the same comparison
    .venv/bin/python benchmarks/convert_memory.py --no-tokenize   # 1 GB and 4 GB, read + normalize + write only

For each size it writes a deterministic (seeded) JSONL file of rows such as
``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`` with 1-6 messages of a few hundred
to a few thousand characters each (some with non-ASCII text), plus a small fraction of invalid JSON lines so the
rejects path runs too. It then runs the whole pipeline, ``dsprep convert FILE --out DIR --quiet --tokenizer
mistral:tekken --template chatml --pack 4096`` (read, normalize, tokenize, pack, write), as a child process and
measures:

- peak RSS of the convert process (``ru_maxrss`` from ``os.wait4``) with an RSS timeline sampled from /proc, and the
  peak of the whole process tree's summed PSS, sampled (workers are children of a fork server, which ``ru_maxrss``
  of the convert process does not cover; PSS counts the pages they share once); peak memory = the larger of the two;
- wall time, input bytes, throughput in MB/s, rows/s and tokens/s;
- rows read / kept / rejected from the output's ``manifest.json``, checked against what was generated (rows with
  no assistant turn are rejected as ``no_trained_tokens`` too).

The summary prints every size's peak memory, the largest (target < --max-rss-mb, 1.5 GB) and the growth from the
smallest to the largest input (target < --max-growth, 20%), each with PASS/FAIL; the exit code is 1 on FAIL.

Time: 100 MB of this text holds about 20 M Tekken tokens (15.4 M kept: about a quarter of the rows are a lone user
message, or a system and a user message, and are rejected as no_trained_tokens after tokenizing), so 1 GB is about
200 M tokens and 4 GB about 800 M: at 0.5-1 M tokens/s (2 cores) the 4 GB run alone takes 14-27 minutes.
--no-tokenize measures the read/normalize/write path alone in a few minutes; memory flatness of tokenizing and
packing is then shown by smaller sizes (e.g. 250MB 1GB). Sizes and MB are binary units (1 MB = 2**20 bytes), as
in ``dsprep --shard-size``.
Generated files are removed after each size unless --keep.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import convert_flags, dsprep_cmd, proc_field_mb, tree_pss_mb, wait_sampling

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


def run_convert(
    src: Path, out: Path, log: Path, options: list[str]
) -> tuple[int, float, float, list[tuple[float, float]], float]:
    """Run dsprep convert; returns (exit code, wall s, peak RSS MB from wait4, RSS timeline, peak tree PSS MB)."""
    cmd = [*dsprep_cmd(), "convert", str(src), "--out", str(out), "--quiet", *options]
    print("running:", " ".join(cmd), flush=True)
    timeline: list[tuple[float, float]] = []
    tree_peak = [0.0]
    with open(log, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT)

        def sample() -> None:
            rss = proc_field_mb(proc.pid, "status", "VmRSS")
            if rss is not None:
                timeline.append((time.perf_counter() - start, rss))
            tree_peak[0] = max(tree_peak[0], tree_pss_mb(proc.pid) or 0.0)

        wall, usage = wait_sampling(proc, sample, SAMPLE_EVERY_S)
    return proc.returncode, wall, usage.ru_maxrss / 1024, timeline, tree_peak[0]  # ru_maxrss: KiB on Linux


def _timeline_text(timeline: list[tuple[float, float]], points: int = 10) -> str:
    if not timeline:
        return "(no samples)"
    step = max(1, len(timeline) // points)
    picked = timeline[::step]
    if picked[-1] is not timeline[-1]:
        picked.append(timeline[-1])
    return "  ".join(f"{t:.1f}s:{rss:.0f}" for t, rss in picked)


def convert_options(args: argparse.Namespace, dsprep: list[str]) -> list[str]:
    """The `dsprep convert` options of the measured pipeline, with --no-cache where the installed dsprep has it."""
    options = ["--format", "openai", *(["--no-cache"] if "--no-cache" in convert_flags(dsprep) else [])]
    if args.workers is not None:
        options += ["--workers", str(args.workers)]
    if not args.no_tokenize:
        options += ["--tokenizer", args.tokenizer, "--template", args.template, "--pack", str(args.pack)]
    return options


def measure(size: int, workdir: Path, args: argparse.Namespace) -> dict[str, float] | None:
    """Generate `size` bytes, convert them and print the report; returns the measured figures, None on failure."""
    src, out, log = workdir / "chat.jsonl", workdir / "out", workdir / "convert.log"
    try:
        t0 = time.perf_counter()
        lines, invalid = generate(src, size, args.seed, args.invalid_fraction)
        size = src.stat().st_size
        print(
            f"generated {src}: {size / MB:.1f} MB, {lines} lines ({invalid} invalid) "
            f"in {time.perf_counter() - t0:.1f}s",
            flush=True,
        )
        if out.exists():
            shutil.rmtree(out)
        code, wall, peak, timeline, tree_peak = run_convert(src, out, log, convert_options(args, dsprep_cmd()))
        if code != 0:
            print(log.read_text(errors="replace")[-4000:], file=sys.stderr)
            print(f"FAIL: dsprep convert exited with {code} after {wall:.1f}s (peak RSS {peak:.0f} MB)")
            return None
        manifest = json.loads((out / "manifest.json").read_text())
        totals = manifest["totals"]
        out_bytes = sum(s["bytes"] for s in manifest["shards"])
        print()
        print(f"input         {size / MB:,.1f} MB  ({size:,} bytes)")
        print(
            f"rows          read {totals['rows_read']:,}  kept {totals['rows_kept']:,}  "
            f"rejected {totals['rows_rejected']:,}  (generated {lines:,}, {invalid:,} invalid)"
        )
        print(f"output        {len(manifest['shards'])} shard(s), {out_bytes / MB:,.1f} MB")
        if "packing" in manifest:
            p = manifest["packing"]
            print(
                f"packing       {p['tokens']:,} tokens into {p['rows']:,} rows of {p['max_len']}, "
                f"efficiency {p['efficiency']:.4f}"
            )
        print(f"wall time     {wall:.1f} s")
        print(
            f"throughput    {size / MB / wall:,.1f} MB/s  {totals['rows_read'] / wall:,.0f} rows/s"
            + (f"  {manifest['packing']['tokens'] / wall:,.0f} tokens/s" if "packing" in manifest else "")
        )
        print(f"peak RSS      {peak:,.0f} MB  (the convert process, ru_maxrss)")
        print(f"peak tree PSS {tree_peak:,.0f} MB  (convert process, fork server and workers, summed PSS, sampled)")
        print(f"RSS timeline  {_timeline_text(timeline)}  (elapsed:MB)", flush=True)
        # rows without an assistant turn are rejected too; the unparsed ones must be exactly the invalid lines
        reasons = manifest["inputs"][0]["rejected_by_reason"]
        unparsed = sum(n for reason, n in reasons.items() if reason in ("invalid_json", "wrong_type"))
        print(f"rejected by   {reasons}")
        if (totals["rows_read"], unparsed) != (lines, invalid):
            print(f"FAIL: row counts do not match what was generated ({lines} lines, {invalid} invalid)")
            return None
        return {"bytes": size, "peak": max(peak, tree_peak), "wall": wall}
    finally:
        if args.keep:
            print(f"kept {src} and {out}")
        else:
            for path in (src, log):
                path.unlink(missing_ok=True)
            shutil.rmtree(out, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sizes", nargs="*", type=parse_size, help="input sizes, e.g. 100MB 400MB (default: 1GB 4GB)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (default: a new dir under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated input and output")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the generated data")
    parser.add_argument("--invalid-fraction", type=float, default=0.001, help="fraction of invalid JSON lines")
    parser.add_argument("--tokenizer", default="mistral:tekken", help="dsprep convert --tokenizer (default tekken)")
    parser.add_argument("--template", default="chatml", help="dsprep convert --template (default chatml)")
    parser.add_argument("--pack", type=int, default=4096, help="dsprep convert --pack L (default 4096)")
    parser.add_argument("--workers", type=int, default=None, help="dsprep convert --workers N (default: dsprep's)")
    parser.add_argument("--no-tokenize", action="store_true", help="read, normalize and write only (no tokenizer)")
    parser.add_argument("--max-rss-mb", type=float, default=1536.0, help="peak RSS target in MB (default 1536)")
    parser.add_argument("--max-growth", type=float, default=0.2, help="largest allowed peak RSS growth (default 0.2)")
    args = parser.parse_args()
    sizes = args.sizes or [parse_size("1GB"), parse_size("4GB")]

    own_dir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="dsprep-bench-", dir="/tmp")) if own_dir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    pipeline = (
        "read + normalize + write"
        if args.no_tokenize
        else (f"read + normalize + tokenize ({args.tokenizer}, {args.template}) + pack {args.pack} + write")
    )
    print(f"pipeline: {pipeline}", flush=True)
    runs: list[dict[str, float]] = []
    try:
        for size in sizes:
            run = measure(size, workdir, args)
            if run is None:
                return 1
            runs.append(run)
            print(flush=True)
    finally:
        if own_dir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print("summary")
    for run in runs:
        print(f"  {run['bytes'] / MB:>9,.1f} MB input: peak memory {run['peak']:,.0f} MB, {run['wall']:.1f} s")
    peaks = [run["peak"] for run in runs]
    top = max(peaks)
    ok = top < args.max_rss_mb
    print(f"max peak memory  {top:,.0f} MB  (target < {args.max_rss_mb:,.0f} MB) {'PASS' if ok else 'FAIL'}")
    if len(runs) > 1:
        growth = (peaks[-1] - peaks[0]) / peaks[0]
        grew_ok = abs(growth) < args.max_growth
        ok = ok and grew_ok
        print(
            f"peak memory difference  {growth:+.1%} from the smallest to the largest input "
            f"(target < {args.max_growth:.0%}) {'PASS' if grew_ok else 'FAIL'}"
        )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
