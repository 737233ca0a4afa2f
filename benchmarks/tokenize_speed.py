"""Tokenization throughput of dsprep's exact-mask encoder against the raw tokenizer and TRL's SFT data preparation.

Run it from the repository root with a Python that has dsprep installed, and TRL for measurement (c):

    .venv-trl/bin/python benchmarks/tokenize_speed.py                 # 20k rows, TRL with dataset_num_proc=1
    .venv-trl/bin/python benchmarks/tokenize_speed.py --workers 2     # TRL with dataset_num_proc=2
    .venv/bin/python benchmarks/tokenize_speed.py --skip-trl               # (a) and (b) only

It generates a deterministic (seeded) multi-turn chat corpus of --rows conversations in pseudo-English (Zipf-weighted
words built from syllables, with punctuation, lists and code blocks), builds dsprep's canonical normalized rows from
it, loads one tokenizer (--tokenizer) and one chat template (--template), and times three things on the same
conversations, tokenizer object and template text:

(a) ceiling: the Hugging Face (Rust) tokenizer alone on the pre-rendered conversations, ``tok(texts[i:i + 1000],
    add_special_tokens=False)`` (rendering is done beforehand and not timed): what every peer's tokenizing runs on
    (dsprep may encode a tokenizer with a faster encoder, tiktoken for ``mistral:tekken``; `compare_peers.py` holds
    dsprep to the fastest encoder measured);
(b) dsprep: ``Encoder(loaded, template, EncodeOptions()).encode(rows[i:i + 1024])``: render + tokenize + exact
    assistant-only labels;
(c) TRL: ``SFTTrainer._prepare_dataset`` with ``SFTConfig(assistant_only_loss=True, packing=False, max_length=None,
    dataset_num_proc=--workers)`` on a ``datasets.Dataset`` with a ``messages`` column, called without a model (the
    same method ``SFTTrainer.__init__`` calls): per-example ``apply_chat_template(...,
    return_assistant_tokens_mask=True)`` plus the labels map. datasets' caching is disabled and HF caches point at a
    fresh temporary folder.

It prints rows, tokens, seconds and tokens/s for each, checks that (b) and (c) produce the same tokens as (a) (and
compares the trained-token labels of (b) and (c)), and prints ``ratio dsprep/HF tokenizer ceiling = X`` (for
information) and ``ratio dsprep/trl = X`` (target >= 3) with PASS/FAIL. The exit code is 0 even on FAIL: this is a
report.
TOKENIZERS_PARALLELISM is set to "true" at start so all three run with the same setting (dsprep sets that default
anyway when it loads a tokenizer); datasets turns it off in its forked workers when --workers > 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from typing import Any

from bench_common import Corpus, Timer, offline_hf, verdict, version

_HF_TMP = offline_hf("tokenize-speed-hf-")

import numpy as np  # noqa: E402

from dsprep.encode import IGNORE, EncodeOptions, Encoder  # noqa: E402
from dsprep.errors import RowError  # noqa: E402
from dsprep.schema import NORMALIZED  # noqa: E402
from dsprep.templates import load_template, render, template_messages  # noqa: E402
from dsprep.tokenizers import load_tokenizer  # noqa: E402

CEILING_BATCH = 1000
DSPREP_BATCH = 1024
TARGET_TRL = 3.0


def canonical_row(i: int, conversation: list[tuple[str, str]]) -> dict[str, Any]:
    """A dsprep normalized row (every NORMALIZED column; a conversation fills messages and tools)."""
    messages = [
        {"role": role, "content": content, "name": None, "tool_calls": None, "tool_call_id": None,
         "reasoning": None, "train": None, "weight": None, "extra": None}
        for role, content in conversation
    ]  # fmt: skip
    row: dict[str, Any] = dict.fromkeys(NORMALIZED.names)
    row.update(id=f"bench-{i}", kind="conversation", messages=messages, tools=None,
               source_file="synthetic.jsonl", source_row=i)  # fmt: skip
    return row


# --- measurements ----------------------------------------------------------------------------------------------------
def measure_ceiling(tok: Any, texts: list[str]) -> tuple[Timer, int]:
    n_tokens = 0
    with Timer() as timer:
        for i in range(0, len(texts), CEILING_BATCH):
            out = tok(texts[i : i + CEILING_BATCH], add_special_tokens=False)
            n_tokens += sum(len(ids) for ids in out["input_ids"])
    return timer, n_tokens


def measure_dsprep(loaded: Any, template: Any, rows: list[dict[str, Any]]) -> tuple[Timer, list[Any], Encoder]:
    encoder = Encoder(loaded, template, EncodeOptions())
    results: list[Any] = []
    with Timer() as timer:
        for i in range(0, len(rows), DSPREP_BATCH):
            results.extend(encoder.encode(rows[i : i + DSPREP_BATCH]))
    return timer, results, encoder


def measure_trl(tok: Any, template_text: str, conversations: list[Any], workers: int) -> tuple[Timer, Any]:
    import datasets
    from trl import SFTConfig, SFTTrainer

    datasets.disable_caching()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    tok.chat_template = template_text
    ds = datasets.Dataset.from_dict({"messages": conversations})
    with tempfile.TemporaryDirectory(prefix="tokenize-speed-trl-") as out_dir:
        with warnings.catch_warnings():  # SFTConfig warns about deprecated TrainingArguments names it sets itself
            warnings.simplefilter("ignore", FutureWarning)
            args = SFTConfig(output_dir=out_dir, assistant_only_loss=True, packing=False, max_length=None,
                             dataset_num_proc=workers, use_cpu=True, report_to="none")  # fmt: skip
        # What SFTTrainer.__init__ sets before it calls _prepare_dataset: the template has {% generation %} markers,
        # so TRL keeps the tokenizer's own template (chat_template=None); a conversational LM dataset is not
        # completion-only.
        fake_self = argparse.Namespace(_tokenizer=tok, chat_template=None, completion_only_loss=False)
        with Timer() as timer:
            out = SFTTrainer._prepare_dataset(fake_self, ds, tok, args, False, None, "train")
    return timer, out


def flat(column: Any) -> tuple[np.ndarray, np.ndarray]:
    """(values, per-row lengths) of an Arrow list<int> column."""
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = arr.offsets.to_numpy()
    values = arr.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
    return values, np.diff(offsets)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20000, help="conversations to generate (default 20000)")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    parser.add_argument("--tokenizer", default="mistral:tekken", help="dsprep tokenizer name or folder")
    parser.add_argument("--template", default="chatml", help="dsprep chat template name or .jinja file")
    parser.add_argument("--workers", type=int, default=1, help="TRL dataset_num_proc (default 1)")
    parser.add_argument("--skip-trl", action="store_true", help="skip measurement (c)")
    args = parser.parse_args()

    t0 = time.perf_counter()
    corpus = Corpus(args.seed)
    convs = [corpus.conversation() for _ in range(args.rows)]
    rows = [canonical_row(i, c) for i, c in enumerate(convs)]
    gen_s = time.perf_counter() - t0
    n_msgs = sum(len(c) for c in convs)
    n_words = sum(len(text.split()) for c in convs for _, text in c)
    print(f"corpus: {args.rows} conversations, {n_msgs} messages, {n_words} words, seed {args.seed}, "
          f"generated in {gen_s:.1f} s")  # fmt: skip

    loaded = load_tokenizer(args.tokenizer)
    tok = loaded.tokenizer
    template = load_template(args.template, loaded.chat_template)
    special = loaded.special_tokens
    tmsgs = [template_messages(r["messages"]) for r in rows]
    t0 = time.perf_counter()
    texts = [render(template, m, special_tokens=special) for m in tmsgs]
    render_s = time.perf_counter() - t0
    print(f"tokenizer {args.tokenizer} ({type(tok).__name__}), template {template.name} ({template.origin}); "
          f"pre-rendered {len(texts)} texts, {sum(map(len, texts)) / 1e6:.1f} M chars in {render_s:.1f} s "
          "(not timed below)")  # fmt: skip

    # (a) ceiling
    a_time, a_tokens = measure_ceiling(tok, texts)
    lengths = np.array([len(ids) for ids in tok(texts[:2000], add_special_tokens=False)["input_ids"]])
    print(f"rendered length (first {len(lengths)} rows): median {int(np.median(lengths))}, mean {lengths.mean():.0f}, "
          f"max {lengths.max()} tokens")  # fmt: skip

    # (b) dsprep
    b_time, results, encoder = measure_dsprep(loaded, template, rows)
    errors = [r for r in results if isinstance(r, RowError)]
    encoded = [out for r in results if not isinstance(r, RowError) for out in r]
    b_tokens = sum(int(r["num_tokens"]) for r in encoded)
    b_trained = sum(int(r["num_trained"]) for r in encoded)
    print(f"dsprep: {len(encoded)} rows out, {len(errors)} errors, mask methods {encoder.method_counts}, "
          f"{b_trained} trained tokens ({b_trained / max(b_tokens, 1):.1%})")  # fmt: skip
    if errors:
        print(f"  first error: {errors[0]}")
    print(f"dsprep tokens == ceiling tokens: {b_tokens == a_tokens} ({b_tokens} vs {a_tokens})")

    # (c) TRL
    c: tuple[Timer, int, int] | None = None
    trl_note = "skipped (--skip-trl)" if args.skip_trl else ""
    if not args.skip_trl:
        try:
            import trl  # noqa: F401
        except ImportError as exc:
            trl_note = f"skipped: TRL is not installed in {sys.executable} ({exc})"
    if trl_note:
        print(f"TRL: {trl_note}")
    else:
        c_time, out = measure_trl(tok, template.text, tmsgs, args.workers)
        c_ids, c_lens = flat(out.data.column("input_ids"))
        c_labels, _ = flat(out.data.column("labels"))
        c_tokens, c_trained = int(c_ids.size), int(np.count_nonzero(c_labels != IGNORE))
        c = (c_time, c_tokens, c_trained)
        print(f"TRL: {len(out)} rows out, columns {out.column_names}, {c_trained} trained tokens "
              f"({c_trained / max(c_tokens, 1):.1%}); TOKENIZERS_PARALLELISM is now "
              f"{os.environ.get('TOKENIZERS_PARALLELISM')!r}")  # fmt: skip
        print(f"TRL tokens == ceiling tokens: {c_tokens == a_tokens} ({c_tokens} vs {a_tokens}, "
              f"difference {c_tokens - a_tokens:+d})")  # fmt: skip
        if not errors and len(encoded) == len(out):
            b_ids = np.concatenate([r["input_ids"] for r in encoded])
            b_labels = np.concatenate([r["labels"] for r in encoded])
            b_lens = np.array([r["num_tokens"] for r in encoded])
            if np.array_equal(b_lens, c_lens) and np.array_equal(b_ids, c_ids):
                diff = np.flatnonzero(b_labels != c_labels)
                rows_diff = len(set(np.searchsorted(np.cumsum(b_lens), diff, side="right").tolist()))
                print(f"dsprep vs TRL: input_ids identical; labels differ at {diff.size} tokens in {rows_diff} rows")
            else:
                n_rows = int(np.count_nonzero(b_lens != c_lens))
                print(f"dsprep vs TRL: input_ids differ ({n_rows} rows of different length)")

    # report
    nproc = os.cpu_count()
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    print()
    print(f"machine: nproc={nproc} (sched_getaffinity {len(os.sched_getaffinity(0))}), load average {load}; "
          f"python {sys.version.split()[0]} ({sys.executable})")  # fmt: skip
    dists = ("dsprep", "tokenizers", "transformers", "jinja2", "trl", "datasets", "torch")
    print("versions: " + ", ".join(f"{d} {version(d)}" for d in dists))
    print(f"TOKENIZERS_PARALLELISM=true for all three (set at start; datasets sets it to false in its forked "
          f"workers when --workers > 1); TRL dataset_num_proc={args.workers}")  # fmt: skip
    print()
    header = (f"{'measurement':<48} {'rows':>7} {'tokens':>11} {'seconds':>9} {'tokens/s':>11}   {'cpu s':>7} "
              f"{'tokens/cpu-s':>12} {'load':>5}")  # fmt: skip
    print(header)
    print("-" * len(header))
    table = [("(a) ceiling: tokenizer on pre-rendered text", a_time, a_tokens),
             ("(b) dsprep: Encoder.encode (render+tok+mask)", b_time, b_tokens)]  # fmt: skip
    if c is not None:
        table.append((f"(c) TRL: _prepare_dataset, num_proc={args.workers}", c[0], c[1]))
    for name, timer, toks in table:
        print(f"{name:<48} {args.rows:>7} {toks:>11} {timer.wall:>9.2f} {toks / timer.wall:>11,.0f}   "
              f"{timer.cpu:>7.1f} {toks / timer.cpu:>12,.0f} {timer.load:>5.2f}")  # fmt: skip
    print(
        "(seconds and tokens/s are wall clock, which the ratios use; cpu s = user+system CPU of this process, its "
        "threads and its reaped child processes; load = 1-minute load average when the measurement started)"
    )
    print()
    a_rate, b_rate = a_tokens / a_time.wall, b_tokens / b_time.wall
    r_ceiling = b_rate / a_rate
    print(f"ratio dsprep/HF tokenizer ceiling = {r_ceiling:.2f}  (for information: the encoder every peer runs; "
          "compare_peers.py holds dsprep to the fastest encoder of the tokenizer)")  # fmt: skip
    if c is not None:
        r_trl = b_rate / (c[1] / c[0].wall)
        print(f"ratio dsprep/trl = {r_trl:.2f}  (target >= {TARGET_TRL}) {verdict(r_trl >= TARGET_TRL)}")
    else:
        print(f"ratio dsprep/trl = n/a  ({trl_note})")
    per_cpu = [toks / timer.cpu for _, timer, toks in table]
    print(f"(per CPU-second instead of wall clock: dsprep/ceiling {per_cpu[1] / per_cpu[0]:.2f}"
          + (f", dsprep/trl {per_cpu[1] / per_cpu[2]:.2f})" if c is not None else ")"))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
