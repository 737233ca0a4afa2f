"""Packed rows train exactly like their examples run alone: per-token losses agree to 1e-9 on a tiny float64 Llama.

Examples come from real sample files, tokenized and packed by `dsprep convert --pack`. Inside its packed row each
example is run (a) through transformers with `position_ids` and no `attention_mask` (its packed-sequence detection;
`use_cache=False`, since a cache switches that detection off) on `sdpa` and `eager`, and (b) with an explicit
block-diagonal causal mask built from `seq_lens`. A negative control passes an all-ones mask and must differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from dsprep.config import ConvertConfig
from dsprep.pipeline import convert

torch = pytest.importorskip("torch", reason="the isolation proof needs torch (pip install torch==2.13.0)")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.shared_data
FILES = ["sharegpt/fastchat__dummy_conversation.json", "openai/openai-cookbook__drone_training.jsonl",
         "text/mlx-examples__lora_wikisql_train.jsonl"]  # fmt: skip


@pytest.fixture(scope="module")
def packed_rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    from paths import SHARED_DATA

    if not (SHARED_DATA / "SOURCES.md").is_file():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    out = tmp_path_factory.mktemp("packed")
    inputs = tuple(str(SHARED_DATA / f) for f in FILES)
    convert(ConvertConfig(inputs=inputs, out=out, overwrite=True, tokenizer="mistral:v3", template="chatml", pack=512))
    rows = [r for p in sorted(Path(out).glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]
    rows = [r for r in rows if len(r["seq_lens"]) >= 3]
    assert len(rows) >= 4
    return rows[:6]


def _model(attn: str) -> Any:
    config = transformers.LlamaConfig(
        vocab_size=32768, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, attn_implementation=attn,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).to(torch.float64).eval()


def _token_losses(logits: Any, labels: Any) -> Any:
    """Per-position loss after the causal shift: position t predicts labels[t+1]; NaN where that label is -100."""
    targets = labels[1:]
    losses = torch.nn.functional.cross_entropy(logits[:-1], targets.clamp(min=0), reduction="none")
    return torch.where(targets == -100, torch.full_like(losses, float("nan")), losses)


def _alone(model: Any, row: dict[str, Any]) -> list[Any]:
    out, start = [], 0
    for n in row["seq_lens"]:
        ids = torch.tensor(row["input_ids"][start : start + n])[None]
        labels = torch.tensor(row["labels"][start : start + n])
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits[0]
        out.append(_token_losses(logits, labels))
        start += n
    return out


def _packed(model: Any, row: dict[str, Any], **kwargs: Any) -> list[Any]:
    ids = torch.tensor(row["input_ids"])[None]
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False, **kwargs).logits[0]
    losses = _token_losses(logits, torch.tensor(row["labels"]))
    out, start = [], 0
    for n in row["seq_lens"]:
        out.append(losses[start : start + n - 1])  # the example's own targets; start+n-1 predicts the next example
        start += n
    return out


def _max_delta(a: list[Any], b: list[Any]) -> float:
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        assert torch.equal(torch.isnan(x), torch.isnan(y))  # the same supervised targets, packed and alone
        mask = ~torch.isnan(x)
        if mask.any():
            worst = max(worst, float((x[mask] - y[mask]).abs().max()))
    return worst


def _block_mask(seq_lens: list[int]) -> Any:
    total = sum(seq_lens)
    doc = torch.repeat_interleave(torch.arange(len(seq_lens)), torch.tensor(seq_lens))
    allowed = (doc[:, None] == doc[None, :]) & torch.ones(total, total, dtype=torch.bool).tril()
    mask = torch.zeros(total, total, dtype=torch.float64).masked_fill(~allowed, torch.finfo(torch.float64).min)
    return mask[None, None]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_losses_equal_examples_alone(packed_rows: list[dict[str, Any]], attn: str) -> None:
    model = _model(attn)
    for row in packed_rows:
        alone = _alone(model, row)
        positions = torch.tensor(row["position_ids"])[None]
        assert _max_delta(_packed(model, row, position_ids=positions), alone) <= 1e-9
        block = _block_mask(row["seq_lens"])
        assert _max_delta(_packed(model, row, position_ids=positions, attention_mask=block), alone) <= 1e-9
        leaky = _packed(
            model, row, position_ids=positions, attention_mask=torch.ones(1, len(row["input_ids"]), dtype=torch.long)
        )
        assert _max_delta(leaky, alone) > 1e-4  # negative control: without isolation the losses differ
