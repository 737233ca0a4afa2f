"""TRL: dsprep shards as the already-processed datasets SFTTrainer and DPOTrainer take, and the trainers built on them.

Supported TRL: ``>=1.9,!=1.15.*`` (1.9.0, 1.14.2 and 1.16.0 train on CPU in the tests). TRL 1.15 computes the loss
only through a Triton kernel (``trl/kernels/chunked_logprob.py``), so it cannot train without a GPU; 1.16 runs the
same chunked loss in torch off CUDA/XPU, and 1.14 and older compute the loss from the model's logits.

SFT reads packed shards (or tokenized, unpacked ones) as ``input_ids``, ``labels`` and ``seq_lengths``: the shard's
``seq_lens`` under the one name TRL's collator reads. With ``padding_free=True`` the collator concatenates a batch
into one row, rebuilds ``position_ids`` restarting at every example and sends no ``attention_mask``, which is what
transformers needs to keep packed examples apart. DPO reads tokenized preference shards as ``prompt_ids``,
``chosen_ids`` and ``rejected_ids``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dsprep.errors import VerifyError
from dsprep.integrations.common import MissingExtraError, require

if TYPE_CHECKING:
    import datasets
    import trl

__all__ = ["DPO_COLUMNS", "SFT_COLUMNS", "SUPPORTED_TRL", "dpo_dataset", "dpo_trainer", "sft_dataset", "sft_trainer"]

SUPPORTED_TRL = ">=1.9,!=1.15.*"
SFT_COLUMNS = ("input_ids", "labels", "seq_lengths")
DPO_COLUMNS = {"prompt_input_ids": "prompt_ids", "chosen_input_ids": "chosen_ids", "rejected_input_ids": "rejected_ids"}


def _trl() -> Any:
    trl = require("trl", extra="trl")
    if trl.__version__.startswith("1.15.") and not require("torch", extra="trl").cuda.is_available():
        raise MissingExtraError(
            f"trl {trl.__version__} computes the loss with a Triton kernel that needs a GPU; "
            f"install a supported version for CPU: pip install 'trl{SUPPORTED_TRL}'"
        )
    return trl


def _read(shards: Sequence[str | Path], column: str, what: str) -> pa.Table:
    table = pa.concat_tables([pq.read_table(str(s)) for s in shards])
    if column not in table.column_names or not pc.count(table[column]).as_py():
        raise VerifyError(f"no {what} in the shards: convert with --tokenizer (and --pack for SFT)")
    return table


def sft_dataset(shards: Sequence[str | Path]) -> datasets.Dataset:
    """Packed or tokenized shards as a Dataset of `SFT_COLUMNS`; an unpacked row is one example (`[num_tokens]`)."""
    ds = require("datasets", extra="trl")
    table = _read(shards, "input_ids", "tokenized SFT rows")
    if "seq_lens" in table.column_names:
        table = table.rename_columns({"seq_lens": "seq_lengths"})
    else:
        table = table.filter(pc.is_valid(table["input_ids"]))  # preference and KTO rows have no input_ids
        offsets = pa.array(range(table.num_rows + 1), pa.int32())
        lengths = pa.ListArray.from_arrays(offsets, table["num_tokens"].combine_chunks())
        table = table.append_column("seq_lengths", lengths)
    return ds.Dataset(table.select(list(SFT_COLUMNS)))


def dpo_dataset(shards: Sequence[str | Path]) -> datasets.Dataset:
    """Tokenized preference shards as a Dataset of `prompt_ids`, `chosen_ids` and `rejected_ids`."""
    ds = require("datasets", extra="trl")
    table = _read(shards, "prompt_input_ids", "tokenized preference rows")
    pairs = table.filter(pc.equal(table["kind"], "preference")).select(list(DPO_COLUMNS))
    if pairs.num_rows == 0:  # KTO rows have prompt_input_ids too, but no chosen/rejected pair
        kinds = ", ".join(sorted(k for k in pc.unique(table["kind"]).to_pylist() if k))
        raise VerifyError(f"no tokenized preference rows in the shards (only {kinds} rows): DPO needs chosen/rejected")
    return ds.Dataset(pairs.rename_columns(DPO_COLUMNS))


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

    base: Any = trl.DPOTrainer  # a class known only at run time

    class PretokenizedDPOTrainer(base):
        def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
            return dataset  # already `prompt_ids`, `chosen_ids`, `rejected_ids`; DPOTrainer has no option to skip this

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
