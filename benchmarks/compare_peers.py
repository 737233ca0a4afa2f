"""dsprep convert end to end against the raw tokenizer ceiling and the peers' data preparation, in one run.

Run it from the repository root with the Python that has dsprep installed:

    .venv/bin/python benchmarks/compare_peers.py                       # 50k conversations, peers on the first 10k
    .venv/bin/python benchmarks/compare_peers.py --rows 2000 --peer-rows 500 --skip axolotl   # a quick check

It generates a deterministic (seeded) multi-turn chat corpus of --rows conversations (`bench_common.Corpus`: Zipf
pseudo-English with lists and code blocks, 0-1 system prompt and 1-6 turns) as OpenAI-chat JSONL, saves the tokenizer
(--tokenizer, mistral:tekken by default) with the ChatML template (--template) as its chat_template into a folder the
peers load, and measures, each in its own child process (peak memory = the larger of the child's ``ru_maxrss``
from ``wait4`` and its process tree's summed PSS, sampled):

- ceiling: the Rust tokenizer alone on the pre-rendered conversations (all rows), twice: in one process with its
  own thread pool (TOKENIZERS_PARALLELISM=true), and in one single-threaded process per core, each on a share of
  the rows; the faster of the two is the ceiling the ratio uses. Where dsprep encodes the tokenizer with tiktoken
  (``mistral:tekken``), that encoder alone in one process per core too, through ``encode_ordinary`` and through
  ``encode_to_numpy`` (the call dsprep makes); the faster of those is the ceiling of a ratio of its own; and
  ``encode_to_numpy`` in a single process, for how far the encoder alone scales from one core to N; and that
  encoder plus writing its arrays as dsprep's packed Parquet, one process per core (the floor of tokenizing and
  writing the shards, reported for information); where fastokens is installed, the engine dsprep runs that encoder
  on (`dsprep.ordinary`) alone and plus the same writing, one process per core, for information;
- dsprep: ``dsprep convert corpus.jsonl --tokenizer T --template chatml --pack L --out DIR`` as the CLI, with
  ``--workers 1`` and ``--workers N`` (N = the cores this process may use) when the installed dsprep has --workers,
  plus a one-row convert for the fixed start-up (imports, tokenizer and template load, output); steady state =
  tokens / (end-to-end seconds - start-up seconds);
- TRL (``SFTTrainer._prepare_dataset``, assistant-only loss, bfd packing, num_proc 1 and 2), torchtune
  (``SFTDataset`` + ``PackedDataset``), Axolotl (chat_template tokenize step + multipack) and LLaMA-Factory
  (``get_dataset`` with packing) in their own environments (`peer_worker.py` says exactly what each runs), on the
  first --peer-rows conversations.

With --repeat N every measurement (ceilings, start-up, dsprep runs, peers) runs N times and keeps its fastest run,
which steadies the numbers on a machine whose speed drifts; the tiktoken measurements and dsprep's --workers
settings take turns (tiktoken, 1, N, tiktoken, 1, N, ...), so the drift weighs on both sides of their ratios alike.
Throughput is compared per token of input: tok/s = the ceiling's token count of the rows a path processed divided by
its seconds, so paths that ran on the subsample compare with the full-corpus ones. The table also gives each path's
own token count and whether it matches the ceiling's where the tokenizer and template are the same. It prints
``dsprep/raw tokenizer ceiling`` (target >= 0.8; the ceiling is the fastest of the tokenizer's own encoders
measured, the Hugging Face tokenizer's and, for ``mistral:tekken``, tiktoken's, as mistral-common runs it) and
``dsprep/best TRL`` (target >= 3) with PASS/FAIL, both on dsprep's steady state (the ceiling's and the peers'
seconds exclude their start-up as well), plus the ratio to the Hugging Face tokenizer's ceiling, to dsprep's own
engine alone and with the writing, and the end-to-end ratio to TRL for information. A verdict is given only for
runs that did the work measured: dsprep packed every row <= L and rejected every longer one, TRL's tokens are the
ceiling's truncated to L and it trained some. The exit code is 0 even on FAIL: this is a report.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench_common import Corpus, convert_flags, dsprep_cmd, openai_record, tree_pss_mb, verdict, version

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().with_name("peer_worker.py")
PEERS = ("trl", "torchtune", "axolotl", "llamafactory")
TARGET_CEILING = 0.8
TARGET_TRL = 3.0
T = TypeVar("T")


@dataclass
class Measured:
    """One row of the report."""

    name: str
    rows_in: int
    base_tokens: int  # the ceiling's token count of the rows processed
    seconds: float
    rss_mb: float
    own_tokens: int | None = None
    rows_out: int | None = None
    packed_tokens: int | None = None
    tokens_note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def run_child(cmd: list[str], log: Path, cwd: Path | None = None) -> tuple[int, float, float, str]:
    """Run cmd; returns (exit code, wall seconds, peak memory MB, stdout); stderr goes to log.

    Peak memory is the larger of the child's ``ru_maxrss`` (from ``wait4``) and its process tree's summed PSS,
    sampled: dsprep's workers are children of a fork server, which ``ru_maxrss`` does not cover.
    """
    with open(log, "ab") as err:
        err.write(("\n$ " + " ".join(cmd) + "\n").encode())
        err.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=cwd)
        assert proc.stdout is not None
        tree_peak = [0.0]
        finished = threading.Event()

        def sample() -> None:
            while not finished.wait(0.25):
                tree_peak[0] = max(tree_peak[0], tree_pss_mb(proc.pid) or 0.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        out = proc.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        finished.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; tell Popen
    return proc.returncode, wall, max(usage.ru_maxrss / 1024, tree_peak[0]), out


def worker_result(stdout: str) -> dict[str, Any] | None:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[-1][len("RESULT ") :]) if lines else None


def default_python(name: str) -> str | None:
    path = REPO / f".venv-{name}" / "bin" / "python"
    return str(path) if path.exists() else None


def write_corpus(path: Path, rows: int, seed: int) -> dict[str, int]:
    corpus = Corpus(seed)
    messages = 0
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(rows):
            conv = corpus.conversation()
            messages += len(conv)
            fh.write(json.dumps(openai_record(conv), ensure_ascii=False) + "\n")
    return {"rows": rows, "messages": messages, "bytes": path.stat().st_size}


def has_fast_encoder(name: str) -> bool:
    """Whether dsprep encodes with tokenizer `name` through its tiktoken encoder (`LoadedTokenizer.fast`)."""
    from dsprep.tokenizers import load_tokenizer

    return getattr(load_tokenizer(name), "fast", None) is not None


def save_tokenizer(name: str, template: str, target: Path) -> str:
    """The dsprep tokenizer with the dsprep template as its chat_template, saved for the peers; returns its class."""
    from dsprep.templates import load_template
    from dsprep.tokenizers import load_tokenizer

    loaded = load_tokenizer(name)
    tok = loaded.tokenizer
    tok.chat_template = load_template(template, loaded.chat_template).text
    tok.save_pretrained(str(target))
    return type(tok).__name__


def _peer_run(cmd: list[str], log: Path) -> tuple[float, tuple[int, float, dict[str, Any] | None]]:
    code, _, rss, out = run_child(cmd, log, cwd=WORKER.parent)
    r = worker_result(out)
    return (r["seconds"] if code == 0 and r is not None else float("inf")), (code, rss, r)


def has_fastokens() -> bool:
    """Whether dsprep's encoder runs on fastokens here (`dsprep.ordinary`)."""
    import importlib.util

    return importlib.util.find_spec("fastokens") is not None


def _ceiling_run(cmd: list[str], log: Path) -> tuple[float, tuple[dict[str, Any], float]]:
    code, _, rss, out = run_child(cmd, log)
    ceiling = worker_result(out)
    if code != 0 or ceiling is None:
        raise SystemExit(f"the ceiling measurement failed ({code}); see {log}")
    return ceiling["seconds"], (ceiling, rss)


def _dsprep_run(
    dsprep: list[str], src: Path, out: Path, opts: argparse.Namespace, workers: int | None, log: Path, no_cache: bool
) -> tuple[float, tuple[float, float, dict[str, Any]]]:
    shutil.rmtree(out, ignore_errors=True)
    wall, rss, manifest = run_dsprep(dsprep, src, out, opts, workers, log, no_cache)
    return wall, (wall, rss, manifest)


def run_dsprep(
    dsprep: list[str], src: Path, out: Path, opts: argparse.Namespace, workers: int | None, log: Path, no_cache: bool
) -> tuple[float, float, dict[str, Any]]:
    cmd = [
        *dsprep,
        "convert",
        str(src),
        "--tokenizer",
        opts.tokenizer,
        "--template",
        opts.template,
        "--pack",
        str(opts.max_len),
        "--out",
        str(out),
        "--quiet",
    ]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    if no_cache:  # a cached output would make the run instant
        cmd += ["--no-cache"]
    code, wall, rss, _ = run_child(cmd, log)
    if code != 0:
        raise SystemExit(f"dsprep convert exited with {code}; see {log}")
    return wall, rss, json.loads((out / "manifest.json").read_text())


def fastest(runs: Iterable[tuple[float, T]]) -> T:
    """The result of the run with the fewest seconds (each run: seconds, result)."""
    return min(runs, key=lambda run: run[0])[1]


def best_of(repeat: int, measure: Callable[[], tuple[float, T]]) -> T:
    """Run `measure` `repeat` times and keep the run with the fewest seconds (its first value)."""
    return fastest(measure() for _ in range(max(1, repeat)))


def clip_sums(lengths: list[int], max_len: int) -> dict[str, int]:
    """Token totals of `lengths` as the paths see them: all, rows <= L only (dropped), min(len, L) (truncated)."""
    return {
        "all": sum(lengths),
        "kept": sum(n for n in lengths if n <= max_len),
        "truncated": sum(min(n, max_len) for n in lengths),
        "over": sum(n > max_len for n in lengths),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50000, help="conversations to generate (default 50000)")
    parser.add_argument("--peer-rows", type=int, default=10000, help="subsample for TRL/torchtune/Axolotl/LLaMA-F.")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    parser.add_argument("--max-len", type=int, default=4096, help="packed row length L (default 4096)")
    parser.add_argument("--tokenizer", default="mistral:tekken", help="dsprep tokenizer name or folder")
    parser.add_argument("--template", default="chatml", help="dsprep chat template name or .jinja file")
    parser.add_argument("--workers", type=int, default=None, help="dsprep --workers N (default: cores available)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run every measurement N times and keep each one's fastest (default 1)"
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=PEERS,
        metavar="PEER",
        help=f"skip a peer ({', '.join(PEERS)}); repeatable",
    )
    for peer in PEERS:
        parser.add_argument(
            f"--{peer}-python",
            default=default_python(peer),
            help=f"Python of an environment with {peer} (default: .venv-{peer} if it exists)",
        )
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (default: a new temporary dir)")
    opts = parser.parse_args()
    opts.peer_rows = min(opts.peer_rows, opts.rows)
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="compare-peers-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "children.log"
    corpus, tok_dir = workdir / "corpus.jsonl", workdir / "tokenizer"

    t0 = time.perf_counter()
    stats = write_corpus(corpus, opts.rows, opts.seed)
    tok_class = save_tokenizer(opts.tokenizer, opts.template, tok_dir)
    print(
        f"corpus: {stats['rows']} conversations, {stats['messages']} messages, {stats['bytes'] / 1e6:.1f} MB "
        f"OpenAI-chat JSONL, seed {opts.seed} ({time.perf_counter() - t0:.1f} s); tokenizer {opts.tokenizer} "
        f"({tok_class}), template {opts.template}, L={opts.max_len}; work folder {workdir}",
        flush=True,
    )
    base = [str(WORKER), "--corpus", str(corpus), "--tokenizer", str(tok_dir), "--max-len", str(opts.max_len)]
    results: list[Measured] = []

    # ceiling: the tokenizer's own threads, one single-threaded process per core, and dsprep's tiktoken encoder
    n_cores = len(os.sched_getaffinity(0))
    runs = [("hf", num_proc) for num_proc in sorted({1, n_cores})]
    fast_runs: list[tuple[str, int]] = []
    if has_fast_encoder(opts.tokenizer):
        fast_runs = [("tiktoken", n_cores), ("tiktoken-numpy", n_cores)]
        if n_cores > 1:  # how far the bare encoder itself scales here, beside dsprep's --workers 1 vs N
            fast_runs.append(("tiktoken-numpy", 1))
        fast_runs.append(("tiktoken-parquet", n_cores))  # the floor of tokenizing and writing the shards alone
        if has_fastokens():  # dsprep's own engine for that encoder, alone and with the writing
            fast_runs += [("fastokens", n_cores), ("fastokens-parquet", n_cores)]

    def ceiling_cmd(encoder: str, num_proc: int) -> list[str]:
        return [sys.executable, base[0], "ceiling", *base[1:], "--num-proc", str(num_proc), "--encoder", encoder,
                "--tokenizer-name", opts.tokenizer]  # fmt: skip

    ceiling_runs: dict[tuple[str, int], list[tuple[float, tuple[dict[str, Any], float]]]] = {}
    for run in runs:
        ceiling_runs[run] = [_ceiling_run(ceiling_cmd(*run), log) for _ in range(max(1, opts.repeat))]

    # dsprep
    dsprep = dsprep_cmd()
    flags = convert_flags(dsprep)
    has_workers, no_cache = "--workers" in flags, "--no-cache" in flags
    one = workdir / "one.jsonl"
    with open(corpus, encoding="utf-8") as src, open(one, "w", encoding="utf-8") as dst:
        dst.write(src.readline())
    one_out, one_workers = workdir / "out-one", 1 if has_workers else None
    startup, _, _ = best_of(opts.repeat, lambda: _dsprep_run(dsprep, one, one_out, opts, one_workers, log, no_cache))
    settings: list[int | None] = sorted({1, opts.workers or n_cores}) if has_workers else [None]
    # rounds: the bare encoder's runs and dsprep's --workers settings take turns (1, N, 1, N, ...), so that this
    # machine's drift in speed weighs on both sides of each ratio alike
    timed: dict[int | None, list[tuple[float, tuple[float, float, dict[str, Any]]]]] = {n: [] for n in settings}
    for run in fast_runs:
        ceiling_runs[run] = []
    for _ in range(max(1, opts.repeat)):
        for run in fast_runs:
            ceiling_runs[run].append(_ceiling_run(ceiling_cmd(*run), log))
        for workers in settings:
            out_dir = workdir / f"out-w{workers or 1}"
            timed[workers].append(_dsprep_run(dsprep, corpus, out_dir, opts, workers, log, no_cache))

    ceilings: list[Measured] = []
    lengths: list[int] = []
    for (encoder, num_proc), done in ceiling_runs.items():
        ceiling, rss = fastest(done)
        if lengths and ceiling["lengths"] != lengths:
            raise SystemExit("the ceiling's token counts differ between its runs")
        lengths = ceiling["lengths"]
        how = f"{num_proc} process{'es' * (num_proc > 1)}"
        if encoder == "hf" and num_proc == 1:
            how = f"{n_cores} threads"
        what = {"hf": "tokenizer", "tiktoken": "tiktoken encoder", "tiktoken-numpy": "tiktoken to arrays",
                "tiktoken-parquet": "tiktoken + Parquet", "fastokens": "dsprep's engine (fastokens) alone",
                "fastokens-parquet": "fastokens + Parquet"}[encoder]  # fmt: skip
        m = Measured(f"ceiling: {what}, {how}", opts.rows, sum(lengths), ceiling["seconds"], rss)
        m.own_tokens = ceiling["tokens"]
        m.extra["encoder"] = encoder
        m.extra["num_proc"] = num_proc
        ceilings.append(m)
        results.append(m)
    full, sub = clip_sums(lengths, opts.max_len), clip_sums(lengths[: opts.peer_rows], opts.max_len)
    print(
        f"rendered lengths: mean {full['all'] / len(lengths):.0f}, max {max(lengths)} tokens; "
        f"{full['over']} of {opts.rows} rows longer than {opts.max_len} ({sub['over']} in the first "
        f"{opts.peer_rows})",
        flush=True,
    )

    dsprep_rows: list[Measured] = []
    shard_digests: set[tuple[str, ...]] = set()
    for workers in settings:
        out_dir = workdir / f"out-w{workers or 1}"
        wall, rss, manifest = fastest(timed[workers])
        packing = manifest["packing"]
        label = f"dsprep convert --workers {workers}" if workers is not None else "dsprep convert (no --workers)"
        m = Measured(
            label,
            opts.rows,
            full["all"],
            wall,
            rss,
            own_tokens=packing["tokens"],
            rows_out=packing["rows"],
            packed_tokens=packing["tokens"],
            extra={"steady": full["all"] / max(wall - startup, 1e-9)},
        )
        # the work measured is the work done: every row <= L packed, every longer row rejected
        m.extra["complete"] = packing["tokens"] == full["kept"] and manifest["totals"]["rows_rejected"] == full["over"]
        m.tokens_note = "= ceiling (rows <= L)" if packing["tokens"] == full["kept"] else "!= ceiling (rows <= L)"
        m.tokens_note += f"; {manifest['totals']['rows_rejected']} rejected"
        dsprep_rows.append(m)
        results.append(m)
        shard_digests.add(tuple(s["sha256"] for s in manifest["shards"]))
        shutil.rmtree(out_dir)
    identical = len(shard_digests) == 1

    # peers
    notes: list[str] = []
    plan = [("trl", 1), ("trl", 2), ("torchtune", 1), ("axolotl", 1), ("llamafactory", 1)]
    for peer, num_proc in plan:
        python = getattr(opts, f"{peer}_python")
        if peer in opts.skip or python is None:
            why = "--skip" if peer in opts.skip else f"no environment (--{peer}-python, or .venv-{peer} in {REPO})"
            if num_proc == 1:
                notes.append(f"{peer}: skipped ({why})")
            continue
        cmd = [python, base[0], peer, *base[1:], "--rows", str(opts.peer_rows), "--num-proc", str(num_proc)]
        print(f"measuring {peer} (num_proc {num_proc}) on {opts.peer_rows} rows ...", flush=True)
        code, rss, r = best_of(opts.repeat, lambda cmd=cmd: _peer_run(cmd, log))
        if code != 0 or r is None:
            notes.append(f"{peer} num_proc={num_proc}: failed with exit code {code}; see {log}")
            continue
        name = {
            "trl": f"TRL _prepare_dataset bfd, num_proc={num_proc}",
            "torchtune": "torchtune SFTDataset+PackedDataset",
            "axolotl": "Axolotl chat_template+multipack",
            "llamafactory": "LLaMA-Factory get_dataset packing",
        }[peer]
        m = Measured(
            name,
            opts.peer_rows,
            sub["all"],
            r["seconds"],
            rss,
            own_tokens=r["tokens"],
            rows_out=r.get("rows_out"),
            extra=r,
        )
        if peer == "trl":
            m.extra["complete"] = r["tokens"] == sub["truncated"] and bool(r.get("trained"))
            m.packed_tokens = r["tokens"]
            m.tokens_note = (
                "= ceiling (truncated to L)"
                if r["tokens"] == sub["truncated"]
                else (f"!= ceiling truncated to L ({r['tokens'] - sub['truncated']:+d})")
            )
        elif peer == "torchtune":
            m.packed_tokens = r["tokens"]
            m.tokens_note = (
                f"{r['tokens'] - sub['truncated']:+d} vs ceiling truncated to L: per-message encoding "
                "(torchtune's ModelTokenizer way), not comparable one to one"
            )
        elif peer == "axolotl":
            m.packed_tokens = r["packed_tokens"]
            m.tokens_note = (
                "= ceiling" if r["tokens"] == sub["all"] else f"{r['tokens'] - sub['all']:+d} vs ceiling"
            ) + f"; {r['dropped']} rows over L dropped"
        else:
            m.packed_tokens = r["tokens"]
            m.tokens_note = "its own chatml template (markers as added special tokens): not comparable"
        results.append(m)

    # report
    print()
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    print(
        f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {n_cores} cores available "
        f"(nproc {os.cpu_count()}), load average {load}; python {sys.version.split()[0]}; fastest of "
        f"{max(1, opts.repeat)} run(s) each"
    )
    from dsprep.version import __version__  # the code measured, which an editable install's metadata may lag

    dists = ("tokenizers", "transformers")
    print(f"versions (dsprep side): dsprep {__version__}, " + ", ".join(f"{d} {version(d)}" for d in dists))
    header = (
        f"{'measurement':<40} {'rows':>6} {'seconds':>8} {'rows/s':>8} {'tok/s':>10} {'peak mem':>9} "
        f"{'packed':>7} {'eff':>6}  tokens"
    )
    print(header)
    print("-" * len(header))
    for m in results:
        eff = f"{m.packed_tokens / (m.rows_out * opts.max_len):.4f}" if m.rows_out and m.packed_tokens else ""
        own = f"{m.own_tokens} {m.tokens_note}" if m.own_tokens is not None else ""
        print(
            f"{m.name:<40} {m.rows_in:>6} {m.seconds:>8.2f} {m.rows_in / m.seconds:>8.0f} "
            f"{m.base_tokens / m.seconds:>10,.0f} {m.rss_mb:>7.0f}MB {m.rows_out or '':>7} {eff:>6}  {own}"
        )
    print(
        "(tok/s = the ceiling's token count of the rows processed / seconds; peers ran on the first "
        f"{opts.peer_rows} rows and compare per token; eff = packed tokens / (packed rows x {opts.max_len}); "
        "peer seconds exclude their imports and loading, dsprep's are the whole CLI process)"
    )
    for note in notes:
        print(note)
    print()
    hf_ceilings = [m for m in ceilings if m.extra["encoder"] == "hf"]
    top = max(hf_ceilings, key=lambda m: m.base_tokens / m.seconds)
    raw_ceilings = [m for m in ceilings if m.extra["encoder"] in ("hf", "tiktoken", "tiktoken-numpy")]
    fastest_ceiling = max(raw_ceilings, key=lambda m: m.base_tokens / m.seconds)
    best = max(dsprep_rows, key=lambda m: m.base_tokens / m.seconds)
    print(f"dsprep start-up (one-row convert): {startup:.2f} s")
    for m in dsprep_rows:
        print(
            f"{m.name}: end to end {m.base_tokens / m.seconds:,.0f} tok/s, steady state "
            f"{m.extra['steady']:,.0f} tok/s ({full['all']} ceiling tokens over {m.seconds - startup:.2f} s)"
        )
    if len(settings) > 1:
        speedup = dsprep_rows[0].seconds / dsprep_rows[-1].seconds
        print(f"workers {settings[-1]} vs 1: {speedup:.2f}x; shards byte-identical: {identical}")
        alone = {m.extra["num_proc"]: m.seconds for m in ceilings if m.extra["encoder"] == "tiktoken-numpy"}
        if 1 in alone and n_cores in alone:
            scaling = alone[1] / alone[n_cores]
            print(f"  (the bare tiktoken encoder, 1 vs {n_cores} processes on the same rows: {scaling:.2f}x)")
    if best.seconds < 2 * startup:  # the start-up (a separate, noisy measurement) would dominate the difference
        print(f"steady state: n/a, the run took less than twice the start-up; use more --rows ({opts.rows})")
        return 0
    if not best.extra["complete"]:  # a run that rejected or lost rows did less work than the ceiling it is held to
        print(f"verdicts: n/a, {best.name} did not pack every row <= L and reject each longer one ({best.tokens_note})")
        return 0
    r_ceiling = best.extra["steady"] / (fastest_ceiling.base_tokens / fastest_ceiling.seconds)
    print(
        f"ratio dsprep/raw tokenizer ceiling = {r_ceiling:.2f}  ({best.name}, steady state; target >= "
        f"{TARGET_CEILING}) {verdict(r_ceiling >= TARGET_CEILING)}; against the fastest of this tokenizer's own "
        f"encoders measured ({fastest_ceiling.name.removeprefix('ceiling: ')}; mistral-common encodes Tekken with "
        "tiktoken, the peers with the Hugging Face tokenizer)"
    )
    engine = next((m for m in ceilings if m.extra["encoder"] == "fastokens"), None)
    engine_floor = next((m for m in ceilings if m.extra["encoder"] == "fastokens-parquet"), None)
    if engine is not None:
        print(
            f"ratio dsprep/{engine.name.removeprefix('ceiling: ')} = "
            f"{best.extra['steady'] / (engine.base_tokens / engine.seconds):.2f}  (steady state; for information: "
            f"the engine dsprep encodes with, bare, is {fastest_ceiling.seconds / engine.seconds:.1f}x that ceiling, "
            "so reading, rendering, masks, packing and writing, not encoding, bound dsprep)"
        )
    if engine_floor is not None:
        print(
            f"ratio dsprep/{engine_floor.name.removeprefix('ceiling: ')} = "
            f"{best.extra['steady'] / (engine_floor.base_tokens / engine_floor.seconds):.2f}  (steady state; for "
            "information: dsprep's engine plus writing its arrays as packed Parquet, and nothing else)"
        )
    r_hf = best.extra["steady"] / (top.base_tokens / top.seconds)
    print(
        f"ratio dsprep/{top.name.removeprefix('ceiling: ')} = {r_hf:.2f}  (steady state; for information: the "
        "Hugging Face tokenizer is the encoder every peer runs)"
    )
    fast_ceilings = [m for m in ceilings if m.extra["encoder"] in ("tiktoken", "tiktoken-numpy")]
    encoder_ceiling = max(fast_ceilings, key=lambda m: m.base_tokens / m.seconds) if fast_ceilings else None
    floor = next((m for m in ceilings if m.extra["encoder"] == "tiktoken-parquet"), None)
    if floor is not None and encoder_ceiling is not None:
        print(
            f"ratio dsprep/{floor.name.removeprefix('ceiling: ')} = "
            f"{best.extra['steady'] / (floor.base_tokens / floor.seconds):.2f}  (steady state; for information: "
            "that encoder plus writing its arrays as packed Parquet with pyarrow, and nothing else); it reaches "
            f"{encoder_ceiling.seconds / floor.seconds:.2f}x the encoder's ceiling: a path that only encoded and "
            "wrote would reach no more"
        )
    trl = [m for m in results if m.name.startswith("TRL") and m.extra["complete"]]
    if trl:
        best_trl = max(trl, key=lambda m: m.base_tokens / m.seconds)
        trl_rate = best_trl.base_tokens / best_trl.seconds
        r_trl = best.extra["steady"] / trl_rate
        print(
            f"ratio dsprep/best TRL = {r_trl:.2f}  ({best.name}, steady state, vs {best_trl.name}, whose seconds "
            f"exclude its start-up too; target >= {TARGET_TRL}) {verdict(r_trl >= TARGET_TRL)}; end to end "
            f"{(best.base_tokens / best.seconds) / trl_rate:.2f}"
        )
    else:
        print("ratio dsprep/best TRL = n/a (TRL not measured, or its tokens differ from the ceiling's truncated to L)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
