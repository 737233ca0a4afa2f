"""What every train entry point does first: verify the shards and check they were made with the model's tokenizer."""

from __future__ import annotations

import importlib
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson

from dsprep.errors import DsprepError, InputError, TokenizerError, VerifyError
from dsprep.shards import SPLIT_FOLDERS
from dsprep.tokenizers import fingerprint
from dsprep.verify import check_fingerprint, shard_paths, verify_output

__all__ = ["MODEL_WEIGHTS", "MissingExtraError", "local_model", "local_tokenizer", "prepared_shards", "require"]

# the weight files transformers' from_pretrained reads from a local folder (one file, or a sharded index)
MODEL_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class MissingExtraError(DsprepError):
    """An integration's trainer is not installed."""

    exit_code = 9


def require(module: str, extra: str) -> ModuleType:
    """Import an optional trainer module, or explain which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{module} is needed here ({exc}); install it with: pip install 'dsprep[{extra}]'"
        ) from None


def local_tokenizer(folder: str | Path, extra: str) -> Any:
    """The tokenizer of the local model folder `folder`, or a one-line error (never a hub download)."""
    if not Path(folder).is_dir():
        raise TokenizerError(f"{folder}: not a model folder (pass a local folder holding the model and its tokenizer)")
    transformers = require("transformers", extra)
    try:
        return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # a broken folder surfaces as one of many exception types
        raise TokenizerError(f"{folder}: cannot load its tokenizer ({type(exc).__name__}: {exc})") from None


def local_model(folder: str | Path, extra: str, **options: Any) -> Any:
    """The causal LM in the local model folder `folder` (`AutoModelForCausalLM`, `options` passed on), or a one-line
    error naming what the folder lacks (never a hub download)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder}: no config.json, so no model to load (pass the folder holding the model itself)")
    if not any((folder / name).is_file() for name in MODEL_WEIGHTS):
        raise InputError(f"{folder}: config.json but no model weights (expected one of {', '.join(MODEL_WEIGHTS)})")
    transformers = require("transformers", extra)
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, **options)
    except (OSError, ValueError) as exc:  # unreadable or inconsistent files (a shard named in the index is missing...)
        raise InputError(f"{folder}: cannot load its model ({type(exc).__name__}: {exc})") from None


def _rejected(folder: Path, manifest: dict[str, Any]) -> str:
    """` (N rejected as REASON, ...: see FOLDER/rejects.jsonl)` for an output that kept no row, or ''."""
    path = folder / manifest["rejects"]["file"]
    if not manifest["rejects"]["rows"] or not path.is_file():
        return ""
    with path.open("rb") as lines:  # read only on this path: a run that kept nothing
        reasons = Counter(orjson.loads(line).get("reason") for line in lines if line.strip())
    counts = ", ".join(f"{n} rejected as {reason}" for reason, n in reasons.most_common())
    return f" ({counts}: see {path})"


def prepared_shards(
    folder: str | Path, tokenizer: Any, *, needs: str | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Verify `folder` (`dsprep verify`) and its tokenizer fingerprint against `tokenizer`; manifest and shard paths
    (the files the verified manifest lists, each a plain name inside `folder`). Untokenized shards are refused, and
    so are shards that hold no row; `needs` says in that refusal what the trainer needs instead."""
    folder = Path(folder)
    manifest = verify_output(folder, tokens_required=needs is None)  # with `needs`, an empty output is refused below
    if manifest["stage"] == "recipe":
        splits = " or ".join(str(folder / name) for name in SPLIT_FOLDERS if name in manifest["splits"])
        raise VerifyError(f"{folder}: a recipe output, its shards are in its split folders; pass {splits}")
    if not manifest.get("tokenizer"):  # normalized-only shards record no tokenizer: there is nothing to compare
        raise VerifyError(
            f"{folder}: {manifest['stage']} shards hold no tokens; re-run dsprep convert with --tokenizer MODEL_DIR "
            "(and --pack L where the trainer needs packed rows)"
        )
    name = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
    check_fingerprint(manifest, fingerprint(tokenizer), str(name))
    if needs is not None and not sum(int(shard["rows"]) for shard in manifest["shards"]):
        raise VerifyError(f"{folder} holds no rows{_rejected(folder, manifest)}; {needs}")
    return manifest, [str(path) for path in shard_paths(folder, manifest)]
