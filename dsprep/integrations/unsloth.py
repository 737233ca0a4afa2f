"""Unsloth: `FastLanguageModel` + TRL's SFTTrainer on dsprep's packed shards, with every example kept apart.

Import order matters: `import unsloth` patches transformers, TRL and PEFT, so `load_unsloth()` runs before anything
imports them (dsprep imports transformers lazily, and this module imports nothing heavy at import time).

A batch reaches the model as one flattened row: the packed rows concatenated, `position_ids` restarting at every
example (built by TRL's padding-free collator from the shards' `seq_lens`, renamed `seq_lengths`) and no
`attention_mask`. On a GPU, Unsloth wraps that collator and adds `packed_seq_lengths`, which its varlen attention
uses. Unsloth's CPU backend turns `padding_free` off in `SFTConfig`, which would pad the rows and attend across
examples; `keep_isolation` turns it back on (transformers then finds the examples from `position_ids`) and checks
every batch, on every backend, before the model sees it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from dsprep.errors import DsprepError, VerifyError
from dsprep.integrations.common import prepared_shards, require

__all__ = [
    "IsolationError",
    "check_batch",
    "keep_isolation",
    "load_model",
    "load_unsloth",
    "sft_trainer",
    "shard_dataset",
    "verified_shards",
]

COLUMNS = ["input_ids", "labels", "seq_lens"]


class IsolationError(DsprepError):
    """A batch would let packed examples attend to each other (the trainer's collator breaks the shards' isolation)."""

    exit_code = 8


def load_unsloth() -> ModuleType:
    """Import unsloth (before transformers, TRL and PEFT), or explain how to install it."""
    return require("unsloth", extra="unsloth")


def verified_shards(folder: str | Path, model_dir: str | Path) -> tuple[dict[str, Any], list[str]]:
    """`dsprep verify` packed shards and check they were tokenized with the model folder's tokenizer, as saved."""
    from dsprep.tokenizers import load_tokenizer

    manifest, files = prepared_shards(folder, load_tokenizer(str(model_dir)).tokenizer)
    if manifest["stage"] != "packed":
        raise VerifyError(f"{folder}: stage {manifest['stage']!r}; this entry trains on packed shards (--pack L)")
    return manifest, files


def load_model(
    model_dir: str | Path,
    max_seq_length: int,
    *,
    load_in_4bit: bool = False,
    dtype: str = "auto",
    lora_r: int = 16,
    seed: int = 3407,
) -> tuple[Any, Any]:
    """`FastLanguageModel.from_pretrained` + `get_peft_model` (LoRA on attention and MLP projections)."""
    fast = load_unsloth().FastLanguageModel
    import torch

    model, tokenizer = fast.from_pretrained(
        model_name=str(model_dir),
        max_seq_length=max_seq_length,
        dtype=None if dtype == "auto" else getattr(torch, dtype),
        load_in_4bit=load_in_4bit,
    )
    model = fast.get_peft_model(model, r=lora_r, lora_alpha=lora_r, random_state=seed)
    return model, tokenizer


def shard_dataset(files: Sequence[str], max_len: int, cache_dir: str | None = None) -> Any:
    """The shards as a `datasets.Dataset` of `input_ids`, `labels` and `seq_lengths` (TRL's name for `seq_lens`)."""
    datasets = require("datasets", extra="unsloth")
    ds = datasets.Dataset.from_parquet(list(files), columns=COLUMNS, cache_dir=cache_dir)
    ds = ds.rename_column("seq_lens", "seq_lengths")
    # Every row holds at most max_len tokens (dsprep verify checked it). Unsloth reads this claim instead of turning
    # padding-free off for pre-tokenized data it cannot truncate itself.
    ds._unsloth_truncated_to = max_len
    return ds


def sft_trainer(model: Any, tokenizer: Any, dataset: Any, output_dir: str | Path, **config: Any) -> Any:
    """TRL's SFTTrainer (as patched by Unsloth) in padding-free mode on `dataset`, isolation checked per batch."""
    load_unsloth()
    import torch
    from trl import SFTConfig, SFTTrainer

    defaults: dict[str, Any] = {
        "bf16": model.dtype == torch.bfloat16,
        "fp16": model.dtype == torch.float16,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
    }
    args = SFTConfig(
        output_dir=str(output_dir),
        padding_free=True,
        max_length=None,  # rows are already at most the pack length
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        **{**defaults, **config},
    )
    trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=dataset, args=args)
    keep_isolation(trainer)
    return trainer


def keep_isolation(trainer: Any) -> str:
    """Make the trainer's collator emit isolated packed batches and check each one; says which path is used.

    GPU: Unsloth's padding-free path must be active (its attention needs `packed_seq_lengths`). CPU backend:
    padding-free is turned back on in TRL's collator, so transformers detects the examples from `position_ids`.
    """
    unsloth = load_unsloth()
    collator = trainer.data_collator
    if not hasattr(collator, "padding_free"):
        raise IsolationError(f"unexpected collator {type(collator).__name__}: cannot make it padding-free")
    device = getattr(unsloth, "DEVICE_TYPE", "cuda")
    unsloth_path = bool(getattr(collator, "_unsloth_padding_free_lengths_wrapped", False))
    collator.padding_free = True  # the CPU backend sets SFTConfig.padding_free = False, and TRL copied it
    trainer.padding_free = True
    if device == "cpu":
        path = "Unsloth CPU backend: TRL padding-free restored (position_ids restart per example, no attention_mask)"
    elif unsloth_path:
        path = f"Unsloth padding-free on {device} (packed_seq_lengths for varlen attention)"
    else:  # Unsloth left padding-free off: turn it on the way Unsloth does, or refuse
        from unsloth.utils.packing import enable_padding_free_metadata

        enable_padding_free_metadata(trainer.model, trainer)
        unsloth_path = bool(getattr(collator, "_unsloth_padding_free_lengths_wrapped", False))
        if not unsloth_path:
            raise IsolationError(
                f"Unsloth's padding-free path is off on {device}, so packed examples would attend to each other; "
                "check Unsloth's messages above (UNSLOTH_DISABLE_AUTO_PADDING_FREE, an unsupported model)"
            )
        path = f"Unsloth padding-free on {device}, enabled by dsprep (packed_seq_lengths for varlen attention)"
    collator.torch_call = _guarded(collator.torch_call, unsloth_path)
    trainer._dsprep_isolation = path
    print(f"dsprep: isolation: {path}")
    return path


def _guarded(torch_call: Callable[[list[dict[str, Any]]], dict[str, Any]], unsloth_path: bool) -> Callable:
    printed = False

    def guarded(features: list[dict[str, Any]]) -> dict[str, Any]:
        nonlocal printed
        batch = torch_call(features)
        check_batch(features, batch, unsloth_path=unsloth_path)
        if not printed:
            printed = True
            shapes = {k: tuple(v.shape) for k, v in batch.items() if hasattr(v, "shape")}
            print(f"dsprep: first batch: {len(features)} rows -> {shapes}")
        return batch

    return guarded


def check_batch(features: Sequence[dict[str, Any]], batch: dict[str, Any], *, unsloth_path: bool = False) -> None:
    """Raise IsolationError unless `batch` keeps the examples of `features` (rows with `seq_lengths`) apart."""
    lengths = [int(n) for f in features for n in f["seq_lengths"]]
    expected = [p for n in lengths for p in range(n)]
    if "attention_mask" in batch:
        raise IsolationError("the collated batch carries an attention_mask: packed examples would attend across")
    pos = batch.get("position_ids")
    if pos is None or pos.shape[0] != 1 or pos.shape[1] < len(expected):
        raise IsolationError(f"padding-free batch expected, got position_ids {None if pos is None else pos.shape}")
    if pos[0, : len(expected)].tolist() != expected or (batch["labels"][0, len(expected) :] != -100).any():
        raise IsolationError("position_ids do not restart exactly at the shards' example boundaries")
    if unsloth_path:
        meta = batch.get("packed_seq_lengths")
        if meta is None or meta.tolist() != lengths:
            raise IsolationError("Unsloth's packed_seq_lengths do not match the shards' example lengths")
