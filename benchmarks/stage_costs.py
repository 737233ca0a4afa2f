"""Where a worker's time goes: `dsprep.workers.process` and its parts, in CPU time relative to the bare encoder.

    .venv/bin/python benchmarks/stage_costs.py              # 5,000 conversations of compare_peers' corpus, seed 0
    .venv/bin/python benchmarks/stage_costs.py --rows 2000

It builds the same seeded multi-turn corpus `compare_peers.py` does (OpenAI-chat JSONL lines, in memory), then times
on one core, each the fastest of --repeat runs of ``time.process_time``:

- the ceiling: the tokenizer's tiktoken encoder alone (``encode_to_numpy``) on the conversations rendered
  beforehand, and dsprep's own engine alone (fastokens where installed: `dsprep.ordinary`) on the same texts;
- JSON parsing; normalizing (JSON included, as a worker does it); rendering the template; rendering plus the
  trained spans; dsprep's encoder on the rendered texts (ids and character offsets); the whole encode step (render,
  spans, tokens, labels); and `process` itself, on tasks of `dsprep.workers.TASK_ROWS` records.

Each is printed in seconds and as a multiple of the ceiling. dsprep end to end can reach a fraction f of the
ceiling only if everything besides encoding costs at most (1/f - 1) of it: 0.25 for f = 0.8.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import Corpus, openai_record


def _fastest(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5000, help="conversations (default 5000)")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed (default 0, as compare_peers)")
    parser.add_argument("--tokenizer", default="mistral:tekken", help="a tokenizer with a tiktoken encoder")
    parser.add_argument("--template", default="chatml")
    parser.add_argument("--max-len", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=5, help="keep each measurement's fastest of N (default 5)")
    opts = parser.parse_args()

    import orjson

    from dsprep.normalize import normalize_record
    from dsprep.sources import Record
    from dsprep.specs import load_spec
    from dsprep.workers import (
        TASK_ROWS,
        EncodeSpec,
        SourceInput,
        Stage,
        Task,
        _Collector,
        _normalized,
        encoder_for,
        process,
    )

    corpus = Corpus(opts.seed)
    lines = [json.dumps(openai_record(corpus.conversation()), ensure_ascii=False).encode() for _ in range(opts.rows)]
    spec = EncodeSpec(opts.tokenizer, opts.template, "assistant", opts.max_len, "drop")
    encoder = encoder_for(spec)
    fast = encoder.fast
    if fast is None:
        raise SystemExit(f"{opts.tokenizer} has no tiktoken encoder: nothing to compare with")
    source = SourceInput("corpus.jsonl", "corpus.jsonl", True, load_spec("openai"))
    stage = Stage((source,), spec, True)
    assert source.spec is not None
    rows = [normalize_record(orjson.loads(line), source.spec) for line in lines]
    for i, row in enumerate(rows):
        row["id"] = f"corpus.jsonl:{i + 1}"  # as a worker names a row (`dsprep.normalize.row_id` adds a digest)
    texts = [encoder._conversation_text(r["messages"], r["tools"])[0] for r in rows]

    def tasks() -> list[Task]:
        starts = range(0, len(lines), TASK_ROWS)
        return [
            Task(seq, 0, [Record(j, None, lines[j], pending=True) for j in range(i, min(i + TASK_ROWS, len(lines)))])
            for seq, i in enumerate(starts)
        ]

    def normalize() -> None:
        for task in tasks():
            _normalized(source, task.records, _Collector(source, task.locations))

    gc.freeze()  # as in a worker: start-up's objects are not walked by the collector
    fast.ordinary.wait()  # dsprep's engine built before anything is timed (fastokens where installed)
    to_numpy = fast.ordinary.tiktoken.encode_to_numpy
    ceiling = _fastest(lambda: [to_numpy(t, disallowed_special=()) for t in texts], opts.repeat)
    tokens = sum(len(to_numpy(t, disallowed_special=())) for t in texts)
    print(f"{opts.rows} conversations, {tokens / opts.rows:.0f} tokens on average; {opts.tokenizer} + {opts.template}")
    print(f"{'ceiling: encode_to_numpy on rendered text':44s} {ceiling:7.3f} s  1.000x")
    parts: list[tuple[str, Callable[[], object]]] = [
        (f"dsprep's engine alone ({fast.ordinary.engine})", lambda: [fast.ordinary.encode(t) for t in texts]),
        ("JSON parsing", lambda: [orjson.loads(line) for line in lines]),
        ("normalizing (JSON included)", normalize),
        ("rendering", lambda: [encoder._conversation_text(r["messages"], r["tools"]) for r in rows]),
        ("rendering + trained spans", lambda: [encoder._plan(r) for r in rows]),
        ("dsprep's encoder on rendered text", lambda: [fast.encode(t) for t in texts]),
        ("encode step (render, spans, tokens, labels)", lambda: encoder.encode(rows)),
        ("process() (all of a worker's work)", lambda: [process(stage, task) for task in tasks()]),
    ]
    for name, run in parts:
        seconds = _fastest(run, opts.repeat)
        print(f"{name:44s} {seconds:7.3f} s  {seconds / ceiling:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
