"""--workers: shards, rejects and manifest are byte-identical for any number of worker processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from dsprep.config import ConvertConfig
from dsprep.pipeline import convert
from paths import FIXTURES


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def _convert(out: Path, inputs: list[Path], workers: int, **options: Any) -> dict[str, bytes]:
    convert(ConvertConfig(inputs=tuple(str(i) for i in inputs), out=out, workers=workers, **options))
    return _files(out)


def test_normalized_output_is_the_same_for_one_and_two_workers(tmp_path: Path) -> None:
    inputs = [FIXTURES / "formats", FIXTURES / "bad" / "invalid_rows.jsonl"]
    one = _convert(tmp_path / "one", inputs, 1)
    two = _convert(tmp_path / "two", inputs, 2)
    assert one == two
    assert one["rejects.jsonl"]  # the bad rows went through the workers too
    assert b"workers" not in one["manifest.json"]


def test_packed_output_is_the_same_for_one_and_two_workers(tmp_path: Path, shared_data: Path) -> None:
    inputs = [
        shared_data / "alpaca" / "llamafactory__alpaca_en_demo.json",  # about 1000 rows: several tasks
        shared_data / "sharegpt" / "llamafactory__glaive_toolcall_en_demo.json",
        shared_data / "preference" / "llamafactory__dpo_en_demo.json",  # not packable: rejected in the workers
        FIXTURES / "bad" / "invalid_rows.jsonl",
    ]
    options = {"tokenizer": "mistral:tekken", "template": "chatml", "pack": 2048, "shard_bytes": 200_000}
    one = _convert(tmp_path / "one", inputs, 1, **options)
    two = _convert(tmp_path / "two", inputs, 2, **options)
    assert one == two
    manifest = orjson.loads(one["manifest.json"])
    assert manifest["packing"]["rows"] > 10
    assert manifest["totals"]["rows_read"] > 1000
    reasons = {orjson.loads(line)["reason"] for line in one["rejects.jsonl"].splitlines()}
    assert "not_packable" in reasons and len(reasons) > 1


def test_a_failing_row_stops_a_pool_without_hanging(tmp_path: Path) -> None:
    from dsprep.errors import RowFailure

    config = ConvertConfig(
        inputs=(str(FIXTURES / "bad" / "invalid_rows.jsonl"), str(FIXTURES / "formats")),
        out=tmp_path / "out",
        on_error="fail",
        workers=2,
    )
    with pytest.raises(RowFailure, match=r"invalid_rows\.jsonl:"):
        convert(config)
    assert not (tmp_path / "out" / "manifest.json").exists()
