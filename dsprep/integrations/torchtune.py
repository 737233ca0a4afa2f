"""TorchTune: dsprep packed shards as the packed samples torchtune 0.6.1's stock SFT recipes train on.

Name the builder in a recipe config (see ``train_entry/torchtune_sft.yaml``)::

    dataset:
      _component_: dsprep.integrations.torchtune.packed_shards
      source: path/to/shards          # a `dsprep convert --pack L` output folder
      tokenizer_dir: path/to/model    # the HF tokenizer folder the shards must have been made with
      packed: True                    # makes the recipe collate with padded_collate_packed

Each sample has the keys and layout of ``torchtune.datasets.PackedDataset``: ``tokens``, ``labels``, ``input_pos``
and ``seq_lens`` (all ``torch.long``), padded to ``max_seq_len`` the same way (tokens with the padding id, labels
with -100, ``input_pos`` counting on from the last position and clamped to ``max_seq_len - 1``, ``seq_lens`` with one
extra entry for the padding). A row of L = 16 holding examples of lengths 5, 4 and 6::

    tokens      a0 a1 a2 a3 a4 | b0 b1 b2 b3 | c0 c1 c2 c3 c4 c5 | pad
    labels      -- a1 a2 a3 a4 | -- b1 b2 b3 | -- c1 c2 c3 c4 c5 | --      (-- = -100)
    input_pos    0  1  2  3  4 |  0  1  2  3 |  0  1  2  3  4  5 |  6
    seq_lens    [5, 4, 6, 1]

Labels are stored unshifted, as torchtune 0.6.1's ``SFTTransform`` and ``PackedDataset`` store them: the recipes
shift them by one in ``_loss_step`` (``labels[..., 1:]`` plus a final ignore index). Because dsprep sets each
example's first label to -100, that shift gives exactly "next token within the example, last = ignore": the last
token of one example never learns the first token of the next. ``padded_collate_packed`` turns ``seq_lens`` into the
block-causal mask that keeps the examples apart.

Building the dataset runs `dsprep verify` on the shards and compares their tokenizer fingerprint with the tokenizer
in ``tokenizer_dir``; a mismatch is refused. Under ``tune run`` a refusal is one line ``error: ...`` and dsprep's
exit code (`packed_shards`); ``build_packed_shards`` raises the `DsprepError` instead, for use from Python.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dsprep.errors import ConfigError, DsprepError, VerifyError
from dsprep.integrations.common import prepared_shards, require

if TYPE_CHECKING:
    import torch

__all__ = ["IGNORE_INDEX", "PackedShards", "build_packed_shards", "packed_shards"]

IGNORE_INDEX = -100  # torchtune.data.CROSS_ENTROPY_IGNORE_IDX
_COLUMNS = ("input_ids", "labels", "position_ids", "seq_lens")


class PackedShards:
    """Packed rows as torchtune ``PackedDataset`` samples, padded on access; build it with `packed_shards`."""

    def __init__(self, table: pa.Table, *, max_seq_len: int, padding_idx: int) -> None:
        columns = {name: table.column(name).combine_chunks() for name in _COLUMNS}
        self.max_seq_len = max_seq_len
        self.padding_idx = padding_idx
        self._ids, self._labels, self._positions = (
            columns[name].flatten().to_numpy().astype(np.int64) for name in _COLUMNS[:3]
        )
        self._seq_lens = columns["seq_lens"].flatten().to_numpy().astype(np.int64)
        self._row_offsets = _offsets(columns["input_ids"])
        self._lens_offsets = _offsets(columns["seq_lens"])

    def __len__(self) -> int:
        return len(self._row_offsets) - 1

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        import torch

        idx = range(len(self))[idx]  # IndexError past the end, negative indices count from it
        a, z = int(self._row_offsets[idx]), int(self._row_offsets[idx + 1])
        n, size = z - a, self.max_seq_len
        pad = size - n
        tokens = torch.full((size,), self.padding_idx, dtype=torch.long)
        labels = torch.full((size,), IGNORE_INDEX, dtype=torch.long)
        input_pos = torch.empty(size, dtype=torch.long)
        tokens[:n] = torch.from_numpy(self._ids[a:z])
        labels[:n] = torch.from_numpy(self._labels[a:z])
        input_pos[:n] = torch.from_numpy(self._positions[a:z])
        last = int(self._positions[z - 1])
        input_pos[n:] = torch.arange(last + 1, last + 1 + pad).clamp(0, size - 1)
        seq_lens = torch.from_numpy(self._seq_lens[self._lens_offsets[idx] : self._lens_offsets[idx + 1]].copy())
        if pad > 0:
            seq_lens = torch.cat([seq_lens, torch.tensor([pad], dtype=torch.long)])
        return {"tokens": tokens, "labels": labels, "input_pos": input_pos, "seq_lens": seq_lens}


@functools.cache
def _torchtune_class() -> type[PackedShards]:
    """`PackedShards` registered as a torchtune ``PackedDataset``.

    torchtune's ``ConcatDataset`` (a list of datasets in the config) counts as packed, and so gets the block mask,
    only when every member is a ``PackedDataset``. This subclass takes all its behaviour from `PackedShards`
    (``PackedDataset.__init__``, which would pack again, never runs).
    """
    from torchtune.datasets import PackedDataset

    return type("PackedShardsDataset", (PackedShards, PackedDataset), {"__module__": __name__})


def _offsets(array: pa.ListArray) -> np.ndarray:
    offsets = array.offsets.to_numpy().astype(np.int64)
    return offsets - offsets[0]


def _check_model_tokenizer(model_tokenizer: Any, hf_tokenizer: Any, tokenizer_dir: str) -> None:
    """Refuse a recipe tokenizer whose special ids or vocabulary size differ from the fingerprinted one."""
    pairs = {
        "bos_id": getattr(hf_tokenizer, "bos_token_id", None),
        "eos_id": getattr(hf_tokenizer, "eos_token_id", None),
        "vocab_size": len(hf_tokenizer),
    }
    for attribute, expected in pairs.items():
        got = getattr(model_tokenizer, attribute, None)
        if got is not None and expected is not None and got != expected:
            raise ConfigError(
                f"the recipe's tokenizer ({type(model_tokenizer).__name__}) has {attribute}={got}, but the one in "
                f"{tokenizer_dir} has {expected}: point `tokenizer` and `dataset.tokenizer_dir` at the same tokenizer"
            )


def build_packed_shards(
    model_tokenizer: Any = None,
    /,
    *,
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    tokenizer_dir: str | os.PathLike[str],
    max_seq_len: int | None = None,
    padding_idx: int | None = None,
    packed: bool = True,
    model_max_seq_len: int | None = None,
) -> PackedShards:
    """Verified dsprep packed shards as a torchtune packed dataset; a refusal raises a `DsprepError`.

    Recipe configs name `packed_shards`, which ends the run with one line instead.

    model_tokenizer: the recipe's tokenizer (torchtune passes it positionally); its pad id is the default padding id,
        and its bos/eos ids and vocabulary size, where it has them, must match ``tokenizer_dir``'s.
    source: one `dsprep convert --pack L` output folder, or several (their rows are concatenated); several dataset
        entries in a config work too (the result is a ``PackedDataset`` to torchtune's ``ConcatDataset``).
    tokenizer_dir: the local Hugging Face tokenizer folder (usually the model folder) or dsprep built-in name the
        shards must have been tokenized with; a different fingerprint is refused.
    max_seq_len: the padded length of every sample; default the largest packing length L among the sources.
    padding_idx: the id padding tokens get (they carry no label and form their own mask block); default the recipe
        tokenizer's ``pad_id``, else the HF tokenizer's pad token, else 0.
    packed: must stay True: the recipe reads ``dataset.packed`` to collate with ``padded_collate_packed``.
    model_max_seq_len: the model's ``max_seq_len`` (the configs pass ``${oc.select:model.max_seq_len,null}``);
        samples longer than it are refused here rather than at the model's first forward.
    """
    require("torchtune", extra="torchtune")
    from dsprep.tokenizers import load_tokenizer

    if not packed:
        raise ConfigError(
            "dsprep packed shards need `dataset.packed: True`: otherwise the recipe collates them with "
            "padded_collate_sft, which builds no block mask, and packed examples attend to each other"
        )
    hf_tokenizer = load_tokenizer(str(tokenizer_dir)).tokenizer
    if model_tokenizer is not None:
        _check_model_tokenizer(model_tokenizer, hf_tokenizer, str(tokenizer_dir))
    folders = [source] if isinstance(source, str | os.PathLike) else list(source)
    if not folders:
        raise ConfigError("packed_shards: `source` names no shard folder")
    tables: list[pa.Table] = []
    pack_len = 0
    for folder in folders:
        manifest, paths = prepared_shards(Path(folder), hf_tokenizer)
        if manifest.get("stage") != "packed":
            raise VerifyError(
                f"{folder}: holds {manifest.get('stage')} shards, not packed ones; re-run dsprep convert with --pack L"
            )
        pack_len = max(pack_len, int(manifest["packing"]["max_len"]))
        tables.extend(pq.read_table(p, columns=list(_COLUMNS)) for p in paths)
    table = pa.concat_tables(tables) if tables else None
    if table is None or table.num_rows == 0:
        raise VerifyError(f"packed_shards: no rows in {', '.join(str(f) for f in folders)}")
    longest = int(pc.max(pc.list_value_length(table.column("input_ids"))).as_py())
    size = pack_len if max_seq_len is None else int(max_seq_len)
    if size < longest:
        raise ConfigError(
            f"max_seq_len={size} is shorter than the longest packed row ({longest} tokens); "
            f"leave it unset or at least {longest}, or re-run dsprep convert with --pack {size}"
        )
    if model_max_seq_len is not None and size > int(model_max_seq_len):
        raise ConfigError(
            f"the samples are {size} tokens long (the shards' packing length or dataset.max_seq_len) but the model's "
            f"max_seq_len is {model_max_seq_len}: re-run dsprep convert with --pack {model_max_seq_len} or lower"
        )
    if padding_idx is None:
        padding_idx = getattr(model_tokenizer, "pad_id", None)
    if padding_idx is None:
        padding_idx = getattr(hf_tokenizer, "pad_token_id", None)
    return _torchtune_class()(table, max_seq_len=size, padding_idx=int(padding_idx or 0))


def packed_shards(model_tokenizer: Any = None, /, **options: Any) -> PackedShards:
    """`build_packed_shards` as a recipe config's ``dataset._component_``: a refusal ends the run with one line.

    torchtune builds the dataset deep inside the recipe, where a `DsprepError` would reach the user as a traceback
    of about a hundred lines and exit code 1. Here it is one line ``error: ...`` on stderr and dsprep's exit code
    (8 for shards that are refused, 2 for settings that conflict with them), through a `SystemExit`, which passes
    through torchtune and `tune run`. `options` are `build_packed_shards`'s keyword arguments.
    """
    try:
        return build_packed_shards(model_tokenizer, **options)
    except DsprepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
