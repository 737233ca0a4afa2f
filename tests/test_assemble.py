"""Packed rows written chunk by chunk from bucket files equal the rows packed from every example held at once."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import dsprep.assemble
from dsprep.config import ConvertConfig
from dsprep.pack import materialize, plan_packing
from dsprep.pipeline import convert
from paths import FIXTURES

L = 512


def _read(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])


@pytest.mark.parametrize("seed", [None, 3])
def test_bucketed_packing_equals_packing_in_memory(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch, seed: int | None
) -> None:
    inputs = (str(shared_data / "alpaca" / "llamafactory__alpaca_en_demo.json"), str(FIXTURES / "formats"))
    common = {"inputs": inputs, "tokenizer": "mistral:tekken", "template": "chatml", "max_len": L, "workers": 1}
    convert(ConvertConfig(out=tmp_path / "unpacked", format="auto", **common))
    tokenized = _read(tmp_path / "unpacked")
    packable = pc.invert(pc.is_in(tokenized["kind"], pa.array(["preference", "kto"])))
    examples = tokenized.filter(packable)
    plan = plan_packing(examples.column("num_tokens").to_numpy().astype("int64"), L)
    if seed is not None:
        plan = plan.shuffled(seed)
    expected = materialize(examples, plan)

    monkeypatch.setattr(dsprep.assemble, "CHUNK_TOKENS", 7 * L)  # chunks of 7 rows
    monkeypatch.setattr(dsprep.assemble, "MAX_BUCKETS", 4)  # several chunks per bucket
    monkeypatch.setattr(dsprep.assemble, "ROUTE_BUFFER_BYTES", 1 << 16)  # many flushes
    convert(ConvertConfig(out=tmp_path / "packed", pack=L, shuffle_seed=seed, **common))
    packed = _read(tmp_path / "packed")
    assert packed.num_rows == plan.rows > 28
    assert packed.equals(expected)
