"""Many small inputs: their records share tasks (and staged pieces), and everything per input stays as if each input
had been converted alone — the reports, the rows, the rejects, a stop at the first bad row, and a resumed run."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import dsprep.pipeline
from dsprep.config import ConvertConfig
from dsprep.errors import RowFailure
from dsprep.pipeline import convert
from dsprep.workers import TASK_ROWS, BatchResult

TOKENIZED = {"tokenizer": "mistral:tekken", "template": "chatml", "cache": False}
COUNTS = ("rows_read", "rows_kept", "rows_rejected", "rejected_by_reason", "kinds")


def _chat(rng: random.Random, words: list[str]) -> dict[str, Any]:
    messages = []
    for _ in range(rng.randint(1, 2)):
        for role in ("user", "assistant"):
            messages.append({"role": role, "content": " ".join(rng.choices(words, k=rng.randint(1, 30)))})
    return {"messages": messages}


def _small_inputs(folder: Path, files: int = 70, seed: int = 3) -> list[Path]:
    """`files` small inputs of 0 to 14 records: chats and alpaca rows, with invalid lines, empty assistant turns and
    rows over the length limit scattered among them."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(300)]
    folder.mkdir()
    paths = []
    for n in range(files):
        lines = []
        alpaca = n % 9 == 4
        for i in range(rng.randint(0, 14) if n else 3):
            if rng.random() < 0.06:
                lines.append('{"messages": [oops')
            elif alpaca:
                lines.append(json.dumps({"instruction": " ".join(rng.choices(words, k=5)), "output": "ok " * (i + 1)}))
            elif rng.random() < 0.05:
                lines.append(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                      {"role": "assistant", "content": ""}]}))  # fmt: skip
            elif rng.random() < 0.04:
                lines.append(json.dumps({"messages": [{"role": "user", "content": "x " * 900},
                                                      {"role": "assistant", "content": "y"}]}))  # fmt: skip
            else:
                lines.append(json.dumps(_chat(rng, words)))
        path = folder / f"part-{n:03d}.jsonl"
        path.write_text("".join(line + "\n" for line in lines))
        paths.append(path)
    return paths


def _rows(out: Path) -> list[dict[str, Any]]:
    return [row for shard in sorted(out.glob("*.parquet")) for row in pq.read_table(shard).to_pylist()]


def _counting_pieces(monkeypatch: pytest.MonkeyPatch) -> list[BatchResult]:
    """Record every piece the run stores (inline runs only: the pool's workers store their own)."""
    stored: list[BatchResult] = []
    store = dsprep.pipeline.store_piece

    def counting(folder: Path, result: BatchResult) -> BatchResult:
        stored.append(result)
        return store(folder, result)

    monkeypatch.setattr(dsprep.pipeline, "store_piece", counting)
    return stored


def test_small_inputs_share_tasks_and_keep_their_own_accounts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = _small_inputs(tmp_path / "in")
    options = {**TOKENIZED, "max_len": 512}
    stored = _counting_pieces(monkeypatch)
    together = convert(ConvertConfig(inputs=tuple(map(str, inputs)), out=tmp_path / "together", workers=1, **options))
    records = sum(r.rows_read for r in together.inputs)
    assert len(stored) == -(-records // TASK_ROWS) < len(inputs)  # tasks by rows, not by files
    assert max(len(r.shares) for r in stored) > 10

    rows: list[dict[str, Any]] = []
    rejects = b""
    for i, path in enumerate(inputs):
        out = tmp_path / f"alone-{i}"
        alone = convert(ConvertConfig(inputs=(str(path),), out=out, workers=1, **options))
        mine, theirs = together.manifest["inputs"][i], alone.manifest["inputs"][0]
        assert {k: mine[k] for k in COUNTS} == {k: theirs[k] for k in COUNTS}, path.name
        assert mine["format"] == theirs["format"]
        rows += _rows(out)
        rejects += (out / "rejects.jsonl").read_bytes()
    assert _rows(tmp_path / "together") == rows
    assert (tmp_path / "together" / "rejects.jsonl").read_bytes() == rejects
    reasons = {k for r in together.manifest["inputs"] for k in r["rejected_by_reason"]}
    assert {"invalid_json", "empty_content", "too_long"} <= reasons, reasons
    assert {r["format"] for r in together.manifest["inputs"]} >= {"openai", "alpaca"}


def test_a_pool_gives_the_same_bytes_for_tasks_across_inputs(tmp_path: Path) -> None:
    inputs = tuple(map(str, _small_inputs(tmp_path / "in")))
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        convert(ConvertConfig(inputs=inputs, out=out, workers=workers, pack=1024, **TOKENIZED))
        outs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outs[0] == outs[1]


def test_the_first_bad_row_is_named_in_its_own_input(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    (folder / "a.jsonl").write_text(good + "\n" + good + "\n")
    (folder / "b.jsonl").write_text(good + "\n" + good + "\n\n{broken\n" + good + "\n")
    config = ConvertConfig(inputs=(str(folder),), out=tmp_path / "out", on_error="fail", workers=1, **TOKENIZED)
    with pytest.raises(RowFailure, match=r"b\.jsonl:4: .*JSON"):
        convert(config)
    rejected = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["source_file"].rsplit("/", 1)[-1], r["source_row"]) for r in rejected] == [("b.jsonl", 3)]


def test_a_stopped_run_over_small_inputs_resumes_to_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = tuple(map(str, _small_inputs(tmp_path / "in", files=120, seed=5)))
    config = ConvertConfig(inputs=inputs, out=tmp_path / "out", workers=1, pack=1024, **TOKENIZED)
    store = dsprep.pipeline.store_piece
    stored: list[int] = []

    def stopping(folder: Path, result: BatchResult) -> BatchResult:
        kept = store(folder, result)
        stored.append(result.seq)
        if len(stored) == 2:
            raise KeyboardInterrupt  # Ctrl-C after two pieces, the second spanning several inputs
        return kept

    monkeypatch.setattr(dsprep.pipeline, "store_piece", stopping)
    with pytest.raises(KeyboardInterrupt):
        convert(config)
    monkeypatch.setattr(dsprep.pipeline, "store_piece", store)
    notes: list[str] = []
    resumed = convert(config, on_note=notes.append)
    assert resumed.resumed_pieces == 2, notes
    convert(ConvertConfig(inputs=inputs, out=tmp_path / "whole", workers=1, pack=1024, **TOKENIZED))
    files = {p.name: p.read_bytes() for p in sorted((tmp_path / "whole").iterdir())}
    assert {p.name: p.read_bytes() for p in sorted((tmp_path / "out").iterdir())} == files
    assert json.loads(files["manifest.json"])["inputs"][5]["rows_read"] > 0
