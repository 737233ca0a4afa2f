"""dsprep: turn the files people fine-tune LLMs on into verified, normalized, sharded data.

The public API is small: `convert` with a `ConvertConfig`, `load_spec` for format specs, and the canonical schema.
Heavy modules load on first use, so `import dsprep` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dsprep.version import __version__

if TYPE_CHECKING:
    from dsprep.config import ConvertConfig
    from dsprep.pipeline import ConvertResult, convert
    from dsprep.schema import NORMALIZED
    from dsprep.specs import FormatSpec, load_spec

__all__ = ["NORMALIZED", "ConvertConfig", "ConvertResult", "FormatSpec", "__version__", "convert", "load_spec"]

_LAZY = {
    "ConvertConfig": "dsprep.config",
    "ConvertResult": "dsprep.pipeline",
    "convert": "dsprep.pipeline",
    "NORMALIZED": "dsprep.schema",
    "FormatSpec": "dsprep.specs",
    "load_spec": "dsprep.specs",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dsprep' has no attribute {name!r}")
