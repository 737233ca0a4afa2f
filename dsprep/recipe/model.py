"""The recipe file's shape: pydantic models that reject unknown keys and wrong types, and its JSON Schema.

A recipe is one YAML file describing a whole preparation: its sources (each a file, folder or glob with a format,
optional spec overrides, a loss policy, a sampling weight or row count and a split), the eval split, dedup, and the
tokenize/pack options `dsprep convert` takes as flags.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dsprep.config import MAX_SEED, MAX_TOKENS, parse_fraction, parse_size

__all__ = ["MAX_ROWS", "Dedup", "EvalSplit", "Recipe", "Source", "recipe_json_schema", "source_label", "valid_name"]

TrainOn = Literal["assistant", "all", "last"]
Overflow = Literal["drop", "truncate-right", "truncate-left", "drop-turns", "split"]
KeysOrKey = str | list[str]
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_ROWS = 100_000_000  # rows one source may give a split (each selected row is held in memory until tokenized)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class EvalSplit(_Strict):
    """Rows held out for evaluation: a `fraction` of the source's rows or a fixed number of `rows`, chosen by `seed`."""

    fraction: float | None = Field(None, gt=0, lt=1, description="Share of the source's rows held out (0..1).")
    rows: int | None = Field(None, ge=0, description="Number of the source's rows held out.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Seed of the choice (default: the recipe's seed).")

    @model_validator(mode="after")
    def _one_size(self) -> EvalSplit:
        if (self.fraction is None) == (self.rows is None):
            raise ValueError("give exactly one of 'fraction' and 'rows'")
        return self


class RoleOverride(_Strict):
    """An input role read as a canonical role (and its content as text or as a tool call)."""

    role: Literal["system", "user", "assistant", "tool"]
    content: Literal["text", "tool_call"] = "text"


class Source(_Strict):
    """One input of the mix: its files, how they are read, how its loss is masked, how much of it is used."""

    path: KeysOrKey = Field(description="A file, folder or glob (or a list of them), relative to the recipe file.")
    name: str | None = Field(None, description="A short unique name (default: the first path's file stem).")
    format: str = Field("auto", description="'auto', a shipped format name or a .toml spec path.")
    fields: dict[str, KeysOrKey] | None = Field(None, description="Overrides of the format's [fields] mapping.")
    message: dict[str, KeysOrKey] | None = Field(None, description="Overrides of the format's [message] mapping.")
    roles: dict[str, str | RoleOverride] | None = Field(None, description="Overrides of the format's [roles] mapping.")
    train_on: TrainOn | None = Field(None, description="Trained tokens for this source (default: the recipe's).")
    weight: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="Rows used = weight x rows available (2 repeats each twice)."
    )
    rows: int | None = Field(None, ge=0, le=MAX_ROWS, description="Use exactly this many rows (down- or up-sampled).")
    split: Literal["train", "eval"] = Field("train", description="'eval' puts the whole source in the eval split.")
    eval: EvalSplit | None = Field(None, description="Hold out part of this source for eval (default: the recipe's).")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not NAME.match(value):
            raise ValueError(f"expected a letter or digit, then letters, digits, '_', '-' or '.', got {value!r}")
        return value

    @model_validator(mode="after")
    def _check(self) -> Source:
        if self.weight is not None and self.rows is not None:
            raise ValueError("give 'weight' or 'rows', not both")
        if self.split == "eval" and self.eval is not None:
            raise ValueError("a source with split 'eval' is all eval; drop its 'eval' block")
        if isinstance(self.path, list) and not self.path:
            raise ValueError("'path' needs at least one file, folder or glob")
        return self

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.path,) if isinstance(self.path, str) else tuple(self.path)


def source_label(source: Source) -> str:
    """The source's name, or its first path's last plain part (a glob's folder) without its suffixes."""
    if source.name:
        return source.name
    parts = [p for p in source.paths[0].replace("\\", "/").split("/") if p and p not in (".", "..")]
    plain = [p for p in parts if not any(c in p for c in "*?[")]
    stem = plain[-1] if plain else "source"
    for _ in range(2):
        stem = stem.rsplit(".", 1)[0] if "." in stem.lstrip(".") else stem
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "source"


def valid_name(label: str) -> str:
    """`label` as a name a source may be given (`NAME`): without what comes before its first letter or digit."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", label)
    start = re.search(r"[A-Za-z0-9]", name)
    return name[start.start() :] if start else "source"


class Dedup(_Strict):
    """Exact dedup on normalized content, within and across sources; the first occurrence in recipe order is kept."""

    by: Literal["none", "conversation", "prompt"] = Field(
        "none", description="'conversation': the whole normalized row; 'prompt': everything before the answer."
    )


class Recipe(_Strict):
    """A whole preparation. Global options mean what the `dsprep convert` flags of the same name mean."""

    sources: list[Source] = Field(min_length=1, description="The inputs, in mix order (dedup keeps the first).")
    out: str | None = Field(None, description="Output folder (relative to the recipe file); --out overrides it.")
    tokenizer: str | None = Field(None, description="A local tokenizer folder or a built-in (mistral:tekken, ...).")
    template: str = Field("tokenizer", description="'tokenizer', a shipped template name or a .jinja path.")
    train_on: TrainOn = "assistant"
    max_len: int | None = Field(None, ge=1, le=MAX_TOKENS, description="Longest example in tokens (default: pack).")
    overflow: Overflow = "drop"
    pack: int | None = Field(
        None, ge=1, le=MAX_TOKENS, description="Pack examples into rows of at most this many tokens."
    )
    shuffle_seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Shuffle the packed rows with this seed.")
    allow_template_warnings: bool = False
    on_error: Literal["quarantine", "fail"] = "quarantine"
    max_rejected: Annotated[float, Field(ge=0, le=1)] | str | None = Field(
        None, description="Fail past this share of rejected rows: 0..1 or a percentage such as '1%'."
    )
    shard_size: str | int = Field("64MB", description="Start a new shard past this size, e.g. 256MB (or bytes).")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of sampling and eval splits that set none of their own.")
    eval: EvalSplit | None = Field(None, description="Hold out part of every train source without its own 'eval'.")
    dedup: Dedup = Dedup()

    @field_validator("max_rejected")
    @classmethod
    def _fraction(cls, value: float | str | None) -> float | None:
        return None if value is None else parse_fraction(str(value))

    @field_validator("shard_size")
    @classmethod
    def _size(cls, value: str | int) -> str | int:
        parse_size(str(value), positive=True)
        return value

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        names = [source_label(s) for s in self.sources]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"source names must be unique; give 'name' to the sources called {', '.join(twice)}")
        if self.tokenizer is None:  # what would do nothing without tokens, as `dsprep convert` refuses it
            for key, given in (("pack", self.pack is not None), ("max_len", self.max_len is not None),
                               ("overflow", self.overflow != "drop")):  # fmt: skip
                if given:
                    raise ValueError(f"'{key}' needs a 'tokenizer'")
        if self.pack is not None and self.max_len is not None and self.max_len > self.pack:
            raise ValueError(f"'max_len' {self.max_len} exceeds 'pack' {self.pack}")
        if self.shuffle_seed is not None and self.pack is None:
            raise ValueError("'shuffle_seed' shuffles packed rows: it needs 'pack'")
        if all(s.split == "eval" for s in self.sources):
            raise ValueError("every source has split 'eval'; at least one must feed the train split")
        return self

    def labels(self) -> list[str]:
        """Each source's name, in recipe order."""
        return [source_label(s) for s in self.sources]


def recipe_json_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of a recipe file, for editors and CI."""
    schema = Recipe.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "dsprep recipe",
        **schema,
    }
