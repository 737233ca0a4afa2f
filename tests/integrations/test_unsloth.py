"""Unsloth on dsprep's packed shards (CPU backend): trains, keeps examples apart, refuses another tokenizer's shards.

Runs in the Unsloth environment only, alone in its process (importing unsloth patches transformers, TRL and PEFT):
    .venv-unsloth/bin/python -m pytest -m unsloth tests/integrations/test_unsloth.py -p no:cacheprovider
Elsewhere the whole module is skipped before unsloth is imported.
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
with warnings.catch_warnings():  # unsloth's import chain emits third-party deprecation warnings
    warnings.simplefilter("ignore")
    unsloth = pytest.importorskip("unsloth", reason="needs the Unsloth environment (.venv-unsloth)")

import pyarrow.parquet as pq
import torch

from dsprep.config import ConvertConfig
from dsprep.errors import VerifyError
from dsprep.integrations import unsloth as us
from dsprep.pipeline import convert
from isolation import example_loss_deltas, float64_model

SOURCE = "sharegpt/fastchat__dummy_conversation.json"
ENTRY = Path(__file__).resolve().parents[2] / "train_entry" / "unsloth_sft.py"


def _entry() -> Any:
    spec = importlib.util.spec_from_file_location("unsloth_sft", ENTRY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shard_rows(folder: Path) -> dict[int, dict[tuple[int, ...], list[int]]]:
    """Each packed row of the shards: length -> input_ids -> position_ids."""
    rows: dict[int, dict[tuple[int, ...], list[int]]] = {}
    for path in sorted(folder.glob("part-*.parquet")):
        for row in pq.read_table(path, columns=["input_ids", "position_ids"]).to_pylist():
            rows.setdefault(len(row["input_ids"]), {})[tuple(row["input_ids"])] = row["position_ids"]
    return rows


def _assert_shard_boundaries(ids: list[int], pos: list[int], rows: dict[int, dict[tuple[int, ...], list[int]]]) -> int:
    """The flattened batch is whole shard rows back to back, with each row's own position_ids; returns the rows."""
    at, count = 0, 0
    while at < len(ids):
        matches = [n for n, by_ids in rows.items() if tuple(ids[at : at + n]) in by_ids]
        assert matches, f"batch tokens from {at} are not a shard row"
        n = matches[0]
        assert pos[at : at + n] == rows[n][tuple(ids[at : at + n])], f"position_ids differ from the shard at {at}"
        at, count = at + n, count + 1
    return count


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    return str(tmp_path / "hf-datasets")


@pytest.mark.unsloth
@pytest.mark.shared_data
@pytest.mark.slow
def test_trains_on_packed_shards_with_examples_isolated(
    tiny_model_dir: Path, packed_shards: Path, tmp_path: Path, hf_cache: str
) -> None:
    entry = _entry()
    args = entry.parse_args(
        ["--shards", str(packed_shards), "--model", str(tiny_model_dir), "--out", str(tmp_path / "run"),
         "--max-steps", "3", "--batch-size", "4", "--lora-r", "8", "--dtype", "float32", "--lr", "1e-3"]
    )  # fmt: skip
    trainer = entry.build(args)
    assert trainer._dsprep_isolation.startswith("Unsloth CPU backend")
    rows, rows_per_step = _shard_rows(packed_shards), 4
    fed: list[dict[str, torch.Tensor]] = []
    reached: list[dict[str, Any]] = []

    def on_feed(module: Any, positional: tuple, kwargs: dict[str, Any]) -> None:  # what the trainer feeds the model
        assert "attention_mask" not in kwargs or kwargs["attention_mask"] is None, "attention_mask fed for packed rows"
        ids, pos = kwargs["input_ids"], kwargs["position_ids"]
        assert ids.shape[0] == 1 and pos.shape == ids.shape
        assert _assert_shard_boundaries(ids[0].tolist(), pos[0].tolist(), rows) == rows_per_step
        fed.append({k: kwargs[k].detach().clone() for k in ("input_ids", "labels", "position_ids")})

    def on_decoder(module: Any, positional: tuple, kwargs: dict[str, Any]) -> None:  # what reaches the Llama decoder
        assert kwargs.get("attention_mask") is None, "an attention_mask reached the decoder for packed rows"
        assert torch.equal(kwargs["position_ids"], fed[-1]["position_ids"])
        reached.append(kwargs)

    decoder = trainer.model.get_base_model().model
    handles = [
        trainer.model.register_forward_pre_hook(on_feed, with_kwargs=True),
        decoder.register_forward_pre_hook(on_decoder, with_kwargs=True),
    ]
    try:
        result = trainer.train()
    finally:
        for handle in handles:
            handle.remove()

    assert trainer.state.global_step == 3
    assert len(fed) == len(reached) == 3
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 3 and all(math.isfinite(x) for x in [*losses, result.training_loss])

    # Cross-trainer check: the first batch as fed gives every example the losses it has alone (float64 model).
    first = fed[0]
    worst, examples = example_loss_deltas(
        float64_model(tiny_model_dir), first["input_ids"], first["labels"], first["position_ids"]
    )
    assert examples >= rows_per_step
    assert worst <= 1e-9, f"an example's loss inside the batch differs from alone by {worst:.3g}"


@pytest.mark.unsloth
@pytest.mark.shared_data
def test_refuses_shards_of_another_tokenizer(
    tiny_model_dir: Path, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tekken"
    config = ConvertConfig(inputs=(str(shared_data / SOURCE),), out=out, tokenizer="mistral:tekken", pack=256)
    convert(config)
    with pytest.raises(VerifyError, match=r"tokenizer mismatch.*mistral:tekken"):
        us.verified_shards(out, tiny_model_dir)
    code = _entry().main(["--shards", str(out), "--model", str(tiny_model_dir), "--out", str(tmp_path / "run")])
    assert code == VerifyError.exit_code
    assert "tokenizer mismatch" in capsys.readouterr().err


@pytest.mark.unsloth
def test_check_batch_rejects_leaky_batches() -> None:
    features = [{"seq_lengths": [3, 2]}, {"seq_lengths": [2]}]
    good = {
        "input_ids": torch.arange(7)[None],
        "labels": torch.tensor([[-100, 1, 2, -100, 4, -100, 6]]),
        "position_ids": torch.tensor([[0, 1, 2, 0, 1, 0, 1]]),
    }
    us.check_batch(features, good)
    with pytest.raises(us.IsolationError, match="attention_mask"):
        us.check_batch(features, {**good, "attention_mask": torch.ones(1, 7, dtype=torch.long)})
    with pytest.raises(us.IsolationError, match="boundaries"):
        us.check_batch(features, {**good, "position_ids": torch.arange(7)[None]})
    with pytest.raises(us.IsolationError, match="padding-free"):
        us.check_batch(features, {k: v.reshape(7, 1) for k, v in good.items()})
    with pytest.raises(us.IsolationError, match="packed_seq_lengths"):
        us.check_batch(features, good, unsloth_path=True)
    us.check_batch(
        features, {**good, "packed_seq_lengths": torch.tensor([3, 2, 2], dtype=torch.int32)}, unsloth_path=True
    )
