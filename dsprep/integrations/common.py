"""What every train entry point does first: verify the shards and check they were made with the model's tokenizer."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from dsprep.errors import DsprepError, TokenizerError, VerifyError
from dsprep.shards import SPLIT_FOLDERS
from dsprep.tokenizers import fingerprint
from dsprep.verify import check_fingerprint, shard_paths, verify_output

__all__ = ["MissingExtraError", "local_tokenizer", "prepared_shards", "require"]


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


def prepared_shards(folder: str | Path, tokenizer: Any) -> tuple[dict[str, Any], list[str]]:
    """Verify `folder` (`dsprep verify`) and its tokenizer fingerprint against `tokenizer`; manifest and shard paths
    (the files the verified manifest lists, each a plain name inside `folder`). Untokenized shards are refused."""
    folder = Path(folder)
    manifest = verify_output(folder)
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
    return manifest, [str(path) for path in shard_paths(folder, manifest)]
