"""`dsprep recipe init`: a commented starter recipe for some inputs, each with the format detected for it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import orjson

from dsprep.detect import detect_format
from dsprep.errors import InputError
from dsprep.pipeline import _sample  # the sample `--format auto` scores
from dsprep.recipe.model import Source, source_label, valid_name
from dsprep.sources import discover

__all__ = ["starter_recipe"]

SAMPLE_ROWS = 200
HEADER = """\
# yaml-language-server: $schema=recipe.schema.json
# A dsprep recipe: run it with `dsprep convert --recipe {name}`; options given on the command line win.
# Editors validate it against the JSON Schema written by `dsprep recipe schema > recipe.schema.json`.
# Paths are relative to this file.
"""
FOOTER = """\
tokenizer: {tokenizer}
template: {template}
# max_len: 4096                  # longer examples follow `overflow`: drop, truncate-right, drop-turns, ...
# pack: 4096                     # pack examples into rows of at most this many tokens
# shuffle_seed: 0                # shuffle the packed rows
seed: 0                          # sampling and eval splits without a seed of their own use this one
eval: {{fraction: 0.05}}           # hold out 5% of every train source (or per source: eval: {{rows: 100}})
dedup: {{by: conversation}}        # none | conversation | prompt; an eval row's twin is removed from train
out: prepared
"""


def _source_block(item: str, base: Path, taken: set[str]) -> str:
    detections = []
    for f in discover([item]):
        sample = _sample(f, SAMPLE_ROWS)
        if not sample:
            raise InputError(f"{f.display}: no readable row to detect a format from")
        detections.append((f.display, detect_format(sample, f.display)))
    if not detections:
        raise InputError(f"{item}: no input file found")
    names = sorted({d.spec.name for _, d in detections})
    if len(names) == 1:
        fmt, note = names[0], "detected: " + detections[0][1].describe().replace("\n", " ")
    else:
        fmt, note = "auto", "its files differ: " + ", ".join(f"{p} {d.spec.name}" for p, d in detections)
    path = os.path.relpath(os.path.abspath(item), base.absolute())
    name = valid_name(source_label(Source(path=path)))
    while name in taken:
        name += "_"
    taken.add(name)
    return (
        f"  - name: {name}\n"
        f"    path: {orjson.dumps(path).decode()}\n"
        f"    format: {fmt}    # {note}\n"
        f"    # weight: 1.0                # rows used = weight x rows available (2: each row twice); or rows: N\n"
        f"    # train_on: assistant        # assistant | all | last (default: the recipe's)\n"
        f"    # split: eval                # the whole source is eval data\n"
    )


def starter_recipe(
    inputs: Sequence[str],
    *,
    base: Path,
    name: str = "prep.yaml",
    tokenizer: str | None = None,
    template: str | None = None,
) -> str:
    """A commented recipe for `inputs` (paths written relative to `base`, the recipe's folder)."""
    taken: set[str] = set()
    blocks = [_source_block(item, base, taken) for item in inputs]
    tokenizer_local = tokenizer is not None and Path(tokenizer).exists()
    template = template or "tokenizer"
    template_local = Path(template).exists() or template.endswith((".jinja", ".j2"))
    return (
        HEADER.format(name=name)
        + "sources:\n"
        + "".join(blocks)
        + FOOTER.format(
            tokenizer=_value(tokenizer or "mistral:tekken", base, local=tokenizer_local),
            template=_value(template, base, local=template_local),
        )
    )


def _value(value: str, base: Path, *, local: bool) -> str:
    """A tokenizer or template value as a quoted YAML string: a local file or folder written relative to `base`."""
    if local:
        value = os.path.relpath(os.path.abspath(value), base.absolute())
        if not value.startswith("."):  # read back as a path, not a name: `load.resolve_paths` resolves ./ and ../
            value = f"./{value}"
    return orjson.dumps(value).decode()
