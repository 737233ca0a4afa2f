"""Axolotl (0.19.0): turn dsprep shards into the parquet and YAML `axolotl train` reads.

    python -m dsprep.integrations.axolotl out/ --model MODEL_DIR --out run/axolotl.yaml
    axolotl train run/axolotl.yaml --launcher python

The shards are verified (`dsprep verify`) and their tokenizer fingerprint is checked against the model folder's
tokenizer first. Packed shards become a parquet of exactly ``input_ids``, ``labels``, ``position_ids`` (Axolotl
trains such rows as-is with ``skip_prepare_dataset: true`` and ``sample_packing: false``; a ``seq_lens`` column
would crash its collator and any ``attention_mask`` would let packed examples attend across each other). Under
flash attention transformers keeps them apart only in one-row batches, so such a config must keep
``micro_batch_size: 1`` (`check_packed_config`). Unpacked (tokenized) shards become ``input_ids``,
``attention_mask``, ``labels`` with each row's first label -100, which Axolotl detects as pre-tokenized and, with
``sample_packing: true``, packs itself. The YAML is the template
``train_entry/axolotl_sft.yaml`` with the dsprep-owned keys filled in and its comments kept.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dsprep.errors import ConfigError, DsprepError, InputError, VerifyError
from dsprep.integrations.common import local_tokenizer, prepared_shards, require

__all__ = [
    "SUPPORTED_AXOLOTL",
    "TEMPLATE",
    "AxolotlRun",
    "check_packed_config",
    "main",
    "prepare",
    "render_config",
    "write_dataset",
]

SUPPORTED_AXOLOTL = "0.19.0"  # the version the tests train with (CPU); its pins differ from TRL's and Unsloth's
EXTRA = "axolotl"
TEMPLATE = Path(__file__).resolve().parents[2] / "train_entry" / "axolotl_sft.yaml"
TOKENS = pa.list_(pa.int32())
PACKED_COLUMNS = ("input_ids", "labels", "position_ids")
UNPACKED_COLUMNS = ("input_ids", "attention_mask", "labels")
IGNORE_INDEX = -100  # the label that trains nothing
OWNED = ("datasets", "skip_prepare_dataset", "sample_packing")  # how Axolotl reads the parquet: never overridden

Mode = Literal["packed", "unpacked"]


@dataclass(frozen=True)
class AxolotlRun:
    """What `prepare` wrote: the YAML, the parquet it names, and how Axolotl will read it."""

    config: Path
    data: Path
    mode: Mode
    rows: int
    sequence_len: int
    sample_packing: bool

    @property
    def command(self) -> str:
        """The single-process command(s) that train: `axolotl preprocess` first when Axolotl packs the rows."""
        config = shlex.quote(str(self.config))
        train = f"axolotl train {config} --launcher python"
        return f"axolotl preprocess {config} && {train}" if self.sample_packing else train


def _batches(paths: Sequence[str], columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    for path in paths:
        yield from pq.ParquetFile(path).iter_batches(columns=list(columns))


def _unpacked_batch(batch: pa.RecordBatch, where: str) -> pa.RecordBatch:
    kinds = batch.column("kind")
    missing = pc.is_null(batch.column("input_ids"))
    if pc.any(missing).as_py():
        kind = kinds.filter(missing)[0].as_py()
        raise VerifyError(f"{where}: {kind!r} rows have no input_ids; Axolotl SFT needs conversation or text rows")
    ids = batch.column("input_ids")
    if not isinstance(ids, pa.ListArray):  # pragma: no cover - the schema fixes list<int32>
        raise VerifyError(f"{where}: input_ids is not a list column")
    offsets = pc.subtract(ids.offsets, ids.offsets[0])
    mask = pa.ListArray.from_arrays(offsets, pa.array(np.ones(len(ids.flatten()), np.int32)))
    return pa.record_batch([ids, mask, _first_label_ignored(batch.column("labels"))], names=list(UNPACKED_COLUMNS))


def _first_label_ignored(labels: pa.ListArray) -> pa.ListArray:
    """`labels` with each row's first label -100, as dsprep's packer sets it: when Axolotl's sample_packing
    concatenates rows, no example's last token then learns the next example's first token (text and
    `--train-on all` rows train their first label, a BOS). Without packing it changes nothing: position 0 is
    never a target."""
    offsets = labels.offsets.to_numpy().astype(np.int64)
    values = labels.flatten().to_numpy(zero_copy_only=False).astype(np.int32)  # a copy, safe to write
    starts = offsets[:-1][offsets[1:] > offsets[:-1]] - offsets[0]
    values[starts] = IGNORE_INDEX
    return pa.ListArray.from_arrays(pa.array(offsets - offsets[0], pa.int32()), pa.array(values, pa.int32()))


def write_dataset(shards: str | Path, model: str | Path, data: str | Path) -> tuple[Mode, int, int]:
    """Verify `shards` against `model`'s tokenizer and write Axolotl's parquet to `data`; (mode, rows, sequence_len).

    Raises `VerifyError` when the shards are damaged or were tokenized with another tokenizer.
    """
    manifest, paths = prepared_shards(shards, local_tokenizer(model, EXTRA))  # base_model: a local folder
    stage = manifest["stage"]
    columns: tuple[str, ...]
    if stage == "packed":
        mode: Mode = "packed"
        columns, names, sequence_len = PACKED_COLUMNS, PACKED_COLUMNS, int(manifest["packing"]["max_len"])
    elif stage == "tokenized":
        mode = "unpacked"
        columns, names = ("kind", "input_ids", "labels", "num_tokens"), UNPACKED_COLUMNS
        sequence_len = int(manifest.get("options", {}).get("max_len") or 0)
    else:
        raise VerifyError(f"{shards}: {stage} shards hold no tokens; run dsprep convert with --tokenizer (and --pack)")
    schema = pa.schema([pa.field(n, TOKENS) for n in names])
    data = Path(data)
    data.parent.mkdir(parents=True, exist_ok=True)
    rows, longest = 0, 0
    with _replaced_on_success(data) as part:
        with pq.ParquetWriter(part, schema) as writer:
            for batch in _batches(paths, columns):
                if mode == "unpacked":
                    longest = max(longest, pc.max(batch.column("num_tokens")).as_py() or 0)
                    batch = _unpacked_batch(batch, str(shards))
                writer.write_batch(pa.record_batch(list(batch.columns), schema=schema))
                rows += batch.num_rows
        if rows == 0:
            raise VerifyError(f"{shards}: the shards hold no rows to train on")
    return mode, rows, sequence_len or int(longest)


@contextlib.contextmanager
def _replaced_on_success(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` to write, moved onto `path` only when the block succeeds (else removed): a
    run that fails half-way leaves a previous `path` as it was, and no partial file."""
    part = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    try:
        yield part
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def _yaml_value(yaml: Any, key: str, value: Any) -> str:
    """`key: value` as YAML text: scalars and flow lists on the key's line, mappings and lists of mappings below."""
    if isinstance(value, Mapping) or (isinstance(value, list) and any(isinstance(v, Mapping) for v in value)):
        body = yaml.safe_dump(value, default_flow_style=False, sort_keys=False).rstrip("\n")
        return f"{key}:\n" + "\n".join(f"  {line}" for line in body.splitlines())
    text = yaml.safe_dump({key: value}, default_flow_style=True, width=10**9).strip()
    return text[1:-1] if text.startswith("{") else text  # `{key: value}` -> `key: value`


def _set_key(text: str, key: str, line: str) -> str:
    """Replace top-level `key` (its line and indented block) with `line`, keeping its trailing comment; else append."""
    lines = text.splitlines()
    head = re.compile(rf"{re.escape(key)}:(?:[^#]*?)(?P<comment>[ \t]+#.*)?")
    at = next((i for i, s in enumerate(lines) if head.fullmatch(s)), None)
    if at is None:
        return text.rstrip("\n") + f"\n{line}\n"
    end = at + 1
    while end < len(lines) and re.match(r"[ \t]+\S|-(?:\s|$)", lines[end]):
        end += 1
    new = line.splitlines()
    m = head.fullmatch(lines[at])
    if m and m.group("comment"):
        col = m.start("comment") + len(m.group("comment")) - len(m.group("comment").lstrip())
        new[0] = f"{new[0].ljust(col - 1)} {m.group('comment').strip()}"
    return "\n".join([*lines[:at], *new, *lines[end:]]) + "\n"


def render_config(template: str, values: Mapping[str, Any]) -> str:
    """The template text with each of `values` set (replaced in place, or appended), checked by re-parsing."""
    yaml = require("yaml", EXTRA)
    text = template
    for key, value in values.items():
        text = _set_key(text, key, _yaml_value(yaml, key, value))
    parsed = yaml.safe_load(text)
    wrong = [k for k, v in values.items() if parsed.get(k) != v]
    if wrong:  # pragma: no cover - a template layout _set_key does not handle
        raise ConfigError(f"could not set {', '.join(wrong)} in the Axolotl template; edit the template's layout")
    return text


def check_packed_config(cfg: Mapping[str, Any], packing_len: int) -> None:
    """Refuse an Axolotl config under which the examples inside packed rows (of length `packing_len`) would mix.

    Packed rows stay apart only through their restarting ``position_ids``. transformers reads those as example
    boundaries under sdpa/eager for any batch size, but under flash attention only for a one-row batch: with
    ``micro_batch_size`` > 1 it runs plain causal attention over whole rows. ``batch_flattening`` swaps in a
    collator that rebuilds ``position_ids`` per row, which erases the boundaries inside each row.
    """
    if int(cfg.get("sequence_len") or 0) < packing_len:
        raise ConfigError(f"sequence_len {cfg.get('sequence_len')} is below the shards' packing length {packing_len}")
    if cfg.get("batch_flattening"):
        raise ConfigError(
            "batch_flattening: must stay off for packed shards (its collator restarts position_ids only per row, "
            "so the examples packed in a row would attend to each other)"
        )
    attn = str(cfg.get("attn_implementation") or ("flash_attention_2" if cfg.get("flash_attention") else ""))
    batch = int(cfg.get("micro_batch_size") or 1)
    if "flash" in attn and batch > 1:
        raise ConfigError(
            f"micro_batch_size: {batch} with attn_implementation {attn}: packed shards need micro_batch_size: 1 "
            "under flash attention (with more rows per batch their examples attend to each other); "
            "raise gradient_accumulation_steps instead"
        )


def prepare(
    shards: str | Path,
    model: str | Path,
    out: str | Path,
    *,
    data: str | Path | None = None,
    output_dir: str | Path | None = None,
    template: str | Path | None = None,
    sample_packing: bool = True,
    overrides: Mapping[str, Any] | None = None,
) -> AxolotlRun:
    """Verify `shards`, write Axolotl's parquet (default: `out` with a .parquet suffix) and the YAML `out`.

    `sample_packing` applies to unpacked shards only (packed rows are never re-packed). `overrides` set other YAML
    keys (`max_steps`, `learning_rate`, ...); the keys that decide how Axolotl reads the rows (`OWNED`) are refused,
    and so is, for packed shards, a config `check_packed_config` refuses (nothing is left written then).
    """
    locked = sorted(set(overrides or {}) & set(OWNED))
    if locked:
        raise ConfigError(f"{', '.join(locked)}: set by dsprep from the shards (use --no-sample-packing for unpacked)")
    out = Path(out).absolute()
    model = Path(model).absolute()
    data_path = Path(data).absolute() if data is not None else out.with_suffix(".parquet")
    template_path = Path(template) if template is not None else TEMPLATE
    if not template_path.is_file():
        raise InputError(f"{template_path}: Axolotl template not found; pass --template train_entry/axolotl_sft.yaml")
    run_dir = Path(output_dir).absolute() if output_dir is not None else out.parent / f"{out.stem}-out"
    with _replaced_on_success(data_path) as data_part:  # in place only once the config is accepted and written
        mode, rows, sequence_len = write_dataset(shards, model, data_part)
        values: dict[str, Any] = {
            "base_model": str(model),
            "datasets": [{"path": str(data_path), "ds_type": "parquet"}],
            "skip_prepare_dataset": mode == "packed",
            "sample_packing": mode == "unpacked" and sample_packing,
            "sequence_len": sequence_len,
            "dataset_prepared_path": str(out.parent / f"{out.stem}-prepared"),
            "output_dir": str(run_dir),
        }
        values.update(overrides or {})
        text = render_config(template_path.read_text(encoding="utf-8"), values)
        if mode == "packed":
            check_packed_config(require("yaml", EXTRA).safe_load(text), sequence_len)
        out.parent.mkdir(parents=True, exist_ok=True)
        with _replaced_on_success(out) as out_part:
            out_part.write_text(text, encoding="utf-8")
    return AxolotlRun(out, data_path, mode, rows, int(values["sequence_len"]), bool(values["sample_packing"]))


def _override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a top-level Axolotl key")
    parsed = require("yaml", EXTRA).safe_load(value)
    if isinstance(parsed, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", parsed.strip()):
        parsed = float(parsed)  # YAML 1.1 reads 3e-4 (no dot) as a string
    return key.strip(), parsed


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m dsprep.integrations.axolotl SHARDS --model DIR --out FILE.yaml [...]`."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m dsprep.integrations.axolotl",
        description="Verify dsprep shards against a model's tokenizer and write Axolotl's parquet and YAML.",
    )
    parser.add_argument("shards", help="a dsprep output folder (tokenized or packed)")
    parser.add_argument("--model", required=True, help="local model folder (with its tokenizer): base_model")
    parser.add_argument("--out", required=True, help="the Axolotl YAML to write")
    parser.add_argument("--data", help="the parquet to write (default: --out with a .parquet suffix)")
    parser.add_argument("--output-dir", help="Axolotl's output_dir (default: next to --out)")
    parser.add_argument("--template", help=f"YAML template (default: {TEMPLATE})")
    parser.add_argument(
        "--no-sample-packing", action="store_true", help="unpacked shards: let Axolotl pad instead of pack"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="set a YAML key (repeatable)")
    args = parser.parse_args(argv)
    try:
        run = prepare(
            args.shards,
            args.model,
            args.out,
            data=args.data,
            output_dir=args.output_dir,
            template=args.template,
            sample_packing=not args.no_sample_packing,
            overrides=dict(_override(s) for s in args.set),
        )
    except DsprepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"wrote {run.data} ({run.rows} {run.mode} rows, sequence_len {run.sequence_len}) and {run.config}")
    print(f"next: {run.command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
