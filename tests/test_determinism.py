"""The same inputs and options give byte-identical shards, rejects and manifest."""

from __future__ import annotations

from pathlib import Path

from dsprep.config import ConvertConfig
from dsprep.pipeline import convert
from paths import FIXTURES


def _run(out: Path, **options: object) -> dict[str, bytes]:
    inputs = (str(FIXTURES / "formats"), str(FIXTURES / "bad" / "invalid_rows.jsonl"))
    convert(ConvertConfig(inputs=inputs, out=out, format="auto", **options))  # type: ignore[arg-type]
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_two_runs_are_byte_identical(tmp_path: Path) -> None:
    first = _run(tmp_path / "a")
    second = _run(tmp_path / "b")
    assert first == second
    assert set(first) == {"manifest.json", "part-00000.parquet", "rejects.jsonl"}


def test_small_shard_size_rolls_over_and_stays_deterministic(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("dsprep.shards.FLUSH_ROWS", 2)
    first = _run(tmp_path / "a", shard_bytes=1)
    assert len([n for n in first if n.endswith(".parquet")]) > 3
    assert first == _run(tmp_path / "b", shard_bytes=1)
