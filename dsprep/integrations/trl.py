"""TRL: dsprep shards as the already-processed datasets SFTTrainer and DPOTrainer take, and the trainers built on them.

Supported TRL: ``>=1.9,!=1.15.*`` (1.9.0, 1.14.2 and 1.16.0 train on CPU in the tests). TRL 1.15 computes the loss
only through a Triton kernel (``trl/kernels/chunked_logprob.py``), so it cannot train without a GPU; 1.16 runs the
same chunked loss in torch off CUDA/XPU, and 1.14 and older compute the loss from the model's logits.

SFT reads packed shards (or tokenized, unpacked ones) as ``input_ids``, ``labels`` and ``seq_lengths``: the shard's
``seq_lens`` under the one name TRL's collator reads. With ``padding_free=True`` the collator concatenates a batch
into one row, rebuilds ``position_ids`` restarting at every example and sends no ``attention_mask``, which is what
transformers needs to keep packed examples apart. DPO reads tokenized preference shards as ``prompt_ids``,
``chosen_ids`` and ``rejected_ids``, less the pairs DPOTrainer's own filter drops (`fitting_pairs`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dsprep.errors import ConfigError, VerifyError
from dsprep.integrations.common import MissingExtraError, require

if TYPE_CHECKING:
    import datasets
    import trl

__all__ = [
    "DPO_COLUMNS",
    "DPO_NEEDS",
    "SFT_COLUMNS",
    "SFT_NEEDS",
    "SUPPORTED_TRL",
    "dpo_dataset",
    "dpo_trainer",
    "fitting_pairs",
    "sft_dataset",
    "sft_trainer",
]

SUPPORTED_TRL = ">=1.9,!=1.15.*"
SFT_COLUMNS = ("input_ids", "labels", "seq_lengths")
DPO_COLUMNS = {"prompt_input_ids": "prompt_ids", "chosen_input_ids": "chosen_ids", "rejected_input_ids": "rejected_ids"}
# what each trainer needs, said when the shards hold something else (or nothing): `prepared_shards(needs=...)`
SFT_NEEDS = "SFT needs conversation or text rows: convert SFT data with --tokenizer (and --pack L to pack them)"
DPO_NEEDS = "DPO needs preference rows: convert preference data with --tokenizer and without --pack"


def _trl() -> Any:
    trl = require("trl", extra="trl")
    if trl.__version__.startswith("1.15.") and not require("torch", extra="trl").cuda.is_available():
        raise MissingExtraError(
            f"trl {trl.__version__} computes the loss with a Triton kernel that needs a GPU; "
            f"install a supported version for CPU: pip install 'trl{SUPPORTED_TRL}'"
        )
    return trl


def _folder(shards: Sequence[str | Path]) -> str:
    """The output folder the shard files are in (`prepared_shards` gives files inside one folder)."""
    parents = {Path(s).parent for s in shards}
    return str(parents.pop()) if len(parents) == 1 else "the shards"


def _refusal(shards: Sequence[str | Path], table: pa.Table, need: str) -> VerifyError:
    """Say what the shards hold and what this trainer needs instead."""
    folder = _folder(shards)
    if table.num_rows == 0:
        held = "no rows"  # `prepared_shards(..., needs=...)` says why, from the manifest and rejects
    elif "seq_lens" in table.column_names:
        held = "packed SFT rows"
    else:
        held = f"tokenized {' and '.join(sorted(k for k in pc.unique(table['kind']).to_pylist() if k))} rows"
    return VerifyError(f"{folder} holds {held}; {need}")


def _read(shards: Sequence[str | Path]) -> pa.Table:
    return pa.concat_tables([pq.read_table(str(s)) for s in shards])


def sft_dataset(shards: Sequence[str | Path]) -> datasets.Dataset:
    """Packed or tokenized shards as a Dataset of `SFT_COLUMNS`; an unpacked row is one example (`[num_tokens]`).

    Checks that a supported TRL is installed, so that the refusals come before a model loads.
    """
    _trl()
    ds = require("datasets", extra="trl")
    table = _read(shards)
    if "seq_lens" in table.column_names:
        rows = table.rename_columns({"seq_lens": "seq_lengths"})
    else:
        rows = table.filter(pc.is_valid(table["input_ids"]))  # preference and KTO rows have no input_ids
        offsets = pa.array(range(rows.num_rows + 1), pa.int32())
        lengths = pa.ListArray.from_arrays(offsets, rows["num_tokens"].combine_chunks())
        rows = rows.append_column("seq_lengths", lengths)
    if rows.num_rows == 0:
        raise _refusal(shards, table, SFT_NEEDS)
    return ds.Dataset(rows.select(list(SFT_COLUMNS)))


def dpo_dataset(shards: Sequence[str | Path], *, max_length: int | None = None) -> datasets.Dataset:
    """Tokenized preference shards as a Dataset of `prompt_ids`, `chosen_ids` and `rejected_ids`.

    With `max_length`, the pairs DPOTrainer would leave out are left out here (see `fitting_pairs`), before a model
    loads. Checks that a supported TRL is installed.
    """
    _trl()
    ds = require("datasets", extra="trl")
    table = _read(shards)
    if "kind" not in table.column_names or table.num_rows == 0:  # packed shards have no kind: SFT rows only
        raise _refusal(shards, table, DPO_NEEDS)
    pairs = table.filter(pc.equal(table["kind"], "preference"))
    if pairs.num_rows == 0:  # KTO rows have prompt_input_ids too, but no chosen/rejected pair
        raise _refusal(shards, table, DPO_NEEDS)
    pairs = pairs.select(list(DPO_COLUMNS)).rename_columns(DPO_COLUMNS)
    if max_length is not None:
        pairs = pairs.filter(fitting_pairs(pairs["prompt_ids"], max_length, _folder(shards)))
    return ds.Dataset(pairs)


def fitting_pairs(prompt_ids: Any, max_length: int, where: str) -> Any:
    """A mask of the pairs DPOTrainer keeps under `max_length`, given their `prompt_ids` (an Arrow list array).

    TRL 1.16's `DPOTrainer._prepare_dataset` drops a pair when `len(prompt_ids) >= max_length` (under its default
    `truncation_mode="keep_start"`): truncation would cut every completion token away and the pair would train on
    nothing (loss ln 2). One line on stderr says how many are left out; a `ConfigError` when that is every pair.
    """
    lengths = pc.list_value_length(prompt_ids)
    keep = pc.less(lengths, max_length)
    total = len(prompt_ids)
    left_out = total - (pc.sum(keep).as_py() or 0)
    if total and left_out == total:
        raise ConfigError(
            f"{where}: max_length {max_length} (--max-length) leaves no completion token in any of its {total} "
            f"preference pairs (the shortest prompt has {pc.min(lengths).as_py()} tokens): raise it or leave it unset"
        )
    if left_out:
        print(
            f"dsprep: {where}: left out {left_out} of {total} preference pairs whose prompt alone fills max_length "
            f"{max_length} (no completion token would remain)",
            file=sys.stderr,
        )
    return keep


def sft_trainer(
    *,
    model: Any,
    tokenizer: Any,
    dataset: datasets.Dataset,
    output_dir: str | Path,
    max_steps: int = -1,
    batch_size: int = 4,
    learning_rate: float = 2e-5,
    bf16: bool = False,
    **config: Any,
) -> trl.SFTTrainer:
    """An SFTTrainer over an `sft_dataset`: skips TRL's dataset preparation, padding-free batches, no truncation.

    `config` goes to `SFTConfig` as is (e.g. `gradient_accumulation_steps`, `logging_steps`, `seed`).
    """
    trl = _trl()
    args = trl.SFTConfig(
        output_dir=str(output_dir),
        dataset_kwargs={"skip_prepare_dataset": True},
        padding_free=True,
        max_length=None,  # rows are already at most the packed length; TRL would not enforce it padding-free anyway
        per_device_train_batch_size=batch_size,
        max_steps=max_steps,
        learning_rate=learning_rate,
        bf16=bf16,
        report_to="none",
        **config,
    )
    return trl.SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


def dpo_trainer(
    *,
    model: Any,
    tokenizer: Any,
    dataset: datasets.Dataset,
    output_dir: str | Path,
    max_steps: int = -1,
    batch_size: int = 2,
    learning_rate: float = 1e-6,
    max_length: int | None = None,
    bf16: bool = False,
    **config: Any,
) -> trl.DPOTrainer:
    """A DPOTrainer over a `dpo_dataset`, which it takes as already tokenized; `config` goes to `DPOConfig`."""
    trl = _trl()
    ds = require("datasets", extra="trl")

    base: Any = trl.DPOTrainer  # a class known only at run time

    class PretokenizedDPOTrainer(base):
        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            """The dataset as it is (already `prompt_ids`, `chosen_ids`, `rejected_ids`: DPOTrainer has no option to
            skip its tokenization), less the pairs DPOTrainer's own filter would drop (`fitting_pairs`)."""
            if args.max_length is None or getattr(args, "truncation_mode", "keep_start") != "keep_start":
                return dataset
            if not isinstance(dataset, ds.Dataset):  # an IterableDataset: filtered as it streams, uncounted
                return dataset.filter(lambda pair: len(pair["prompt_ids"]) < args.max_length)
            prompts = dataset.with_format("arrow")["prompt_ids"]
            keep = np.asarray(fitting_pairs(prompts, args.max_length, f"the {dataset_name} dataset"))
            return dataset if keep.all() else dataset.select(np.flatnonzero(keep))

    args = trl.DPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size,
        max_steps=max_steps,
        learning_rate=learning_rate,
        max_length=max_length,
        bf16=bf16,
        report_to="none",
        **config,
    )
    return PretokenizedDPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
