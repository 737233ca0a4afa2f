"""Run a recipe: normalize each source, select (dedup, eval split, sampling), then tokenize and pack each split.

1. Each source is normalized by `dsprep.pipeline.convert` (no tokenizer) into the staging folder, with its spec
   overrides applied to the format it names or that is detected.
2. `dsprep.recipe.select` decides each row's fate from content keys and seeds.
3. The train and eval rows go through `dsprep.pipeline.convert_rows` into ``train/`` and ``eval/``, two ordinary
   dsprep output folders (``dsprep verify`` and the train entry points read them).

The output folder's ``manifest.json`` (written last) records the effective recipe — enough to run it again and get
byte-identical shards — per-source statistics, dedup and leakage counts. ``rejects.jsonl`` holds every row that
is not in a split, per source: unreadable or invalid rows, ``duplicate`` (with the kept twin), ``not_sampled``, and
rows the tokenizer stage rejected.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import ValidationError

from dsprep.config import ConvertConfig, parse_size, percent
from dsprep.errors import RecipeError, RejectedRowsError, RowFailure
from dsprep.pipeline import ConvertResult, InputReport, convert, convert_rows
from dsprep.progress import StartPhase
from dsprep.recipe.model import Recipe, Source
from dsprep.recipe.select import Selection, SourcePlan, content_key, leakage, select
from dsprep.schema import SCHEMA_VERSION
from dsprep.shards import MANIFEST, REJECTS, SPLIT_FOLDERS, RejectsWriter, Staging, file_sha256, write_json
from dsprep.sources import discover
from dsprep.specs import FormatSpec
from dsprep.version import __version__
from dsprep.workers import BatchResult

__all__ = ["run_recipe"]

Row = dict[str, Any]
NOT_ERRORS = ("duplicate", "not_sampled")  # left out by choice: not counted against max_rejected
CHUNK_ROWS = 4096  # rows turned into Python objects at a time; a source otherwise stays an Arrow table


def _deriver(source: Source, label: str, origin: str | None) -> Callable[[FormatSpec], FormatSpec] | None:
    """A function applying the source's field/message/role overrides to a spec, or None without overrides (`origin`:
    the recipe file, named in its errors)."""
    if not (source.fields or source.message or source.roles):
        return None
    overrides: dict[str, dict[str, Any]] = {
        "fields": source.fields or {},
        "message": source.message or {},
        "roles": {k: v if isinstance(v, str) else v.model_dump() for k, v in (source.roles or {}).items()},
    }
    tag = orjson.dumps(overrides, option=orjson.OPT_SORT_KEYS)

    def derive(spec: FormatSpec) -> FormatSpec:
        data = spec.model_dump()
        for key, values in overrides.items():
            data[key] = {**data[key], **values}
        data["origin"] = f"{spec.origin} with the overrides of source {label}"
        data["sha256"] = hashlib.sha256(spec.sha256.encode() + tag).hexdigest()
        try:
            return FormatSpec.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"] if "[" not in str(p))
            at = [origin] if origin else []
            at += [f"source {label}", f"its overrides make an invalid {spec.name} spec"] + ([where] if where else [])
            raise RecipeError(": ".join([*at, err["msg"].removeprefix("Value error, ")])) from None

    return derive


def _location(file: str, row: int, line_oriented: dict[str, bool]) -> str:
    """Where a row of `file` is: ``file:line`` for line-oriented files, else ``file[row]``."""
    return f"{file}:{row + 1}" if line_oriented.get(file, True) else f"{file}[{row}]"


@dataclass
class _Source:
    """One source during a run: its normalized shards (read in batches, never all at once) and its counts."""

    label: str
    source: Source
    result: ConvertResult
    parts: list[Path]
    line_oriented: dict[str, bool]
    rejected: Counter[str] = field(default_factory=Counter)
    duplicates_across: int = 0
    duplicates_of_eval: int = 0
    split: dict[str, dict[str, int]] = field(default_factory=dict)
    id_suffix: str = ""  # where an earlier source reads the same files, its rows' ids would repeat theirs

    @property
    def formats(self) -> str:
        return ", ".join(sorted({r.format for r in self.result.inputs}))

    def __post_init__(self) -> None:
        where = pa.concat_tables([pq.read_table(p, columns=["source_file", "source_row"]) for p in self.parts])
        self.files: list[str] = where.column("source_file").to_pylist()
        self.positions: list[int] = where.column("source_row").to_pylist()

    def _batches(self) -> Iterator[pa.RecordBatch]:
        for part in self.parts:
            yield from pq.ParquetFile(part).iter_batches(batch_size=CHUNK_ROWS)

    def batches(self) -> Iterator[list[Row]]:
        for batch in self._batches():
            yield batch.to_pylist()

    def take(self, picks: list[tuple[int, int]]) -> Iterator[Row]:
        """The picked rows in order, repeated copies (and rows an earlier source reads too) with their own ids.

        Picks come in ascending runs (one per pass over the source); each run is one streaming read of the shards.
        """
        start = 0
        for end in range(1, len(picks) + 1):
            if end == len(picks) or picks[end][0] <= picks[end - 1][0]:
                yield from self._take_run(picks[start:end])
                start = end

    def _take_run(self, run: list[tuple[int, int]]) -> Iterator[Row]:
        i, offset = 0, 0
        for batch in self._batches():
            j = i
            while j < len(run) and run[j][0] < offset + batch.num_rows:
                j += 1
            if j > i:
                rows = batch.take([r - offset for r, _ in run[i:j]]).to_pylist()
                for (_, copy), row in zip(run[i:j], rows, strict=True):
                    row["id"] += self.id_suffix
                    if copy:
                        row["id"] = f"{row['id']}-r{copy}"
                    yield row
                i = j
            offset += batch.num_rows
            if i == len(run):
                return

    def location(self, row: int) -> str:
        return _location(self.files[row], self.positions[row], self.line_oriented)


class _RecipeRun:
    """Drives one recipe run inside a staging folder (`workers`: processes per stage, None: every usable core;
    `progress`: where each stage's progress goes, if anywhere; `origin`: the recipe file)."""

    def __init__(
        self, recipe: Recipe, staging: Staging, say: Callable[[str], None], workers: int | None,
        progress: StartPhase | None = None, origin: str | None = None,
    ) -> None:  # fmt: skip
        self.recipe = recipe
        self.origin = origin
        self.staging = staging
        self.say = say
        self.workers = workers
        self.progress = progress
        self.sources: list[_Source] = []
        self.rejects = RejectsWriter(staging.dir / REJECTS)
        self.encode_rejected: set[tuple[int, str, int]] = set()  # (source, file, row) the tokenizer stage rejected

    def _write(self, entry: dict[str, Any]) -> None:
        self.rejects.write_line(orjson.dumps(entry).decode())

    def _phase(self, description: str, total: int, *, counted: bool = False) -> Callable[[int], None] | None:
        return None if self.progress is None else self.progress(description, total, counted=counted)

    def _writing(self, what: str) -> Callable[[int], Callable[[int], None]] | None:
        progress = self.progress
        return None if progress is None else lambda steps: progress(f"writing {what}", steps, counted=True)

    # --- stage 1 ------------------------------------------------------------------------------------------------
    def normalize(self) -> None:
        for i, (source, label) in enumerate(zip(self.recipe.sources, self.recipe.labels(), strict=True)):
            config = ConvertConfig(inputs=source.paths, out=self.staging.dir / "sources" / f"{i:03d}",
                                   format=source.format, on_error=self.recipe.on_error,
                                   workers=self.workers)  # fmt: skip
            found = discover(source.paths)
            try:
                result = convert(config, derive_spec=_deriver(source, label, self.origin),
                                 on_bytes=self._phase(f"reading {label}", sum(f.size for f in found)),
                                 on_writing=self._writing(f"{label}'s normalized rows"),
                                 on_note=self.say)  # fmt: skip
            except RowFailure:  # on_error: fail — the failing row (in the source's rejects) is the one to show
                self._carry_rejects(config.out, label)
                raise
            parts = sorted(config.out.glob("part-*.parquet"))
            files = {f.display: f.line_oriented for f in found}
            src = _Source(label, source, result, parts, files)
            if any(not files.keys().isdisjoint(earlier.line_oriented) for earlier in self.sources):
                src.id_suffix = f"-s{i}"
            for reason in self._carry_rejects(config.out, label):
                src.rejected[reason] += 1
            self.sources.append(src)
            self.say(f"{label}: {src.formats}, read {result.rows_read} = normalized {result.rows_kept} + rejected "
                     f"{result.rows_rejected}")  # fmt: skip

    def _carry_rejects(self, folder: Path, label: str) -> list[str]:
        """Copy a source's reject lines from its own output folder into the recipe's; returns their reasons."""
        path = folder / REJECTS
        lines = path.read_bytes().splitlines() if path.is_file() else []
        reasons = []
        for line in lines:
            entry = orjson.loads(line)
            reasons.append(entry["reason"])
            self._write({"source": label, **entry})
        return reasons

    # --- stage 2 ------------------------------------------------------------------------------------------------
    def plans(self) -> list[SourcePlan]:
        by = self.recipe.dedup.by
        mode: Literal["conversation", "prompt"] = "prompt" if by == "prompt" else "conversation"
        advance = self._phase("selecting", sum(len(src.files) for src in self.sources), counted=True)
        out = []
        for src in self.sources:
            s = src.source
            keys: list[bytes] = []
            for batch in src.batches():
                keys.extend(content_key(r, mode) for r in batch)
                if advance is not None:
                    advance(len(batch))
            split = s.eval or (self.recipe.eval if s.split == "train" else None)
            out.append(SourcePlan(
                label=src.label, keys=keys, split=s.split,
                eval_fraction=split.fraction if split else None, eval_rows=split.rows if split else None,
                eval_seed=split.seed if split and split.seed is not None else self.recipe.seed,
                weight=s.weight, rows=s.rows, seed=self.recipe.seed,
            ))  # fmt: skip
        return out

    def record_left_out(self, selections: list[Selection]) -> None:
        by = self.recipe.dedup.by
        for src, sel in zip(self.sources, selections, strict=True):
            for r, (j, twin_row) in sorted(sel.duplicates.items()):
                twin = self.sources[j]
                src.duplicates_across += twin is not src
                src.duplicates_of_eval += src.source.split == "train" and twin.source.split == "eval"
                kept = {"source": twin.label, "source_file": twin.files[twin_row],
                        "source_row": twin.positions[twin_row], "location": twin.location(twin_row)}  # fmt: skip
                self._reject(src, r, "duplicate", f"same {by} as {kept['location']} (source {twin.label})",
                             duplicate_of=kept)  # fmt: skip
            target = src.source.rows if src.source.rows is not None else f"weight {src.source.weight}"
            for r in sel.not_sampled:
                self._reject(src, r, "not_sampled", f"left out by sampling ({target}, seed {self.recipe.seed})")

    def _reject(self, src: _Source, r: int, reason: str, message: str, **extra: Any) -> None:
        self._reject_at(src, src.files[r], src.positions[r], reason, message, **extra)

    def _reject_at(self, src: _Source, file: str, row: int, reason: str, message: str, **extra: Any) -> None:
        src.rejected[reason] += 1
        where = _location(file, row, src.line_oriented)
        self._write({"source": src.label, "source_file": file, "source_row": row, "location": where, "field": "",
                     "reason": reason, "message": message, "raw": "", **extra})  # fmt: skip

    # --- stage 3 ------------------------------------------------------------------------------------------------
    def encode(self, selections: list[Selection]) -> dict[str, dict[str, Any]]:
        policies = [s.train_on or self.recipe.train_on for s in self.recipe.sources]
        splits: dict[str, dict[str, Any]] = {}
        for split in SPLIT_FOLDERS:
            feeds = []
            for src, sel in zip(self.sources, selections, strict=True):
                picks = sel.train if split == "train" else [(r, 0) for r in sel.eval]
                src.split[split] = {"examples": 0, "rejected": 0, "tokens": 0, "trained_tokens": 0}
                report = InputReport(path=src.label, container="recipe", compression=None, bytes=0, sha256="",
                                     format=src.formats, format_origin="recipe", format_sha256="")  # fmt: skip
                feeds.append((report, src.take(picks)))
            config = self._split_config(split)
            total = sum(len(sel.train if split == "train" else sel.eval) for sel in selections)
            count = functools.partial(self._count, split, self._phase(f"tokenizing {split}", total, counted=True))
            try:
                result = convert_rows(config, feeds, location=self._locate(), on_result=count,
                                      on_writing=self._writing(f"{split} shards"), train_on=policies)  # fmt: skip
            except RowFailure as exc:  # on_error: fail — its row goes to the recipe's rejects like every other
                if exc.input_index is not None and exc.reject is not None:
                    entry = orjson.loads(exc.reject)
                    self._reject_at(self.sources[exc.input_index], entry["source_file"], entry["source_row"],
                                    entry["reason"], entry["message"])  # fmt: skip
                raise
            splits[split] = {"path": split, "stage": result.manifest["stage"],
                             "rows": sum(s["rows"] for s in result.manifest["shards"]),
                             "examples": sum(r.rows_kept for r in result.inputs),
                             "manifest_sha256": file_sha256(config.out / MANIFEST)}  # fmt: skip
            if "packing" in result.manifest:
                splits[split]["packing_efficiency"] = result.manifest["packing"]["efficiency"]
        return splits

    def _locate(self) -> Callable[[Row], str]:
        line_oriented = {f: lo for src in self.sources for f, lo in src.line_oriented.items()}
        return lambda row: _location(row["source_file"], row["source_row"], line_oriented)

    def _count(self, split: str, advance: Callable[[int], None] | None, result: BatchResult, rows: pa.Table) -> None:
        """Add one task's outcome to its source's counts (and its rows to `advance`); each rejected row goes to the
        rejects once, not per copy."""
        if advance is not None:
            advance(result.rows_read)
        i = result.input_index
        src = self.sources[i]
        stats = src.split[split]
        stats["examples"] += result.rows_kept
        stats["rejected"] += len(result.rejects)
        for column, key in (("num_tokens", "tokens"), ("num_trained", "trained_tokens")):
            if column in rows.column_names:
                stats[key] += int(pc.sum(rows[column]).as_py() or 0)
        for line in result.rejects:
            entry = orjson.loads(line)
            where = (i, entry["source_file"], entry["source_row"])
            if where not in self.encode_rejected:  # a repeated copy shares its original's fate
                self.encode_rejected.add(where)
                self._reject_at(src, where[1], where[2], entry["reason"], entry["message"])

    def _split_config(self, split: str) -> ConvertConfig:
        r = self.recipe
        return ConvertConfig(
            inputs=(), out=self.staging.dir / split, on_error=r.on_error, shard_bytes=parse_size(str(r.shard_size)),
            tokenizer=r.tokenizer, template=r.template, train_on=r.train_on,
            max_len=r.max_len, overflow=r.overflow, allow_template_warnings=r.allow_template_warnings,
            pack=r.pack, shuffle_seed=r.shuffle_seed, workers=self.workers,
        )  # fmt: skip

    # --- manifest -----------------------------------------------------------------------------------------------
    def source_stats(self, selections: list[Selection]) -> list[dict[str, Any]]:
        train_examples = sum(s.split["train"]["examples"] for s in self.sources)
        train_tokens = sum(s.split["train"]["tokens"] for s in self.sources)
        out = []
        for src, sel in zip(self.sources, selections, strict=True):
            read = src.result.rows_read
            rejected = sum(src.rejected.values())
            train = src.split["train"]
            out.append({
                "name": src.label, "split": src.source.split, "paths": list(src.source.paths),
                "inputs": [asdict(r) for r in src.result.inputs],
                "rows_read": read, "rows_kept": read - rejected, "rows_rejected": rejected,
                "rejected_by_reason": dict(sorted(src.rejected.items())),
                "duplicates": len(sel.duplicates), "duplicates_across_sources": src.duplicates_across,
                "duplicates_of_eval": src.duplicates_of_eval,
                "held_out_for_eval": sel.held_out, "repeated": sum(1 for _, c in sel.train if c > 0),
                "not_sampled": len(sel.not_sampled), "train": train, "eval": src.split["eval"],
                "share_of_train_examples": train["examples"] / train_examples if train_examples else 0.0,
                "share_of_train_tokens": train["tokens"] / train_tokens if train_tokens else 0.0,
            })  # fmt: skip
        return out


def _check_rejected(sources: list[dict[str, Any]], limit: float | None, out: Path) -> None:
    read = sum(s["rows_read"] for s in sources)
    bad = sum(n for s in sources for reason, n in s["rejected_by_reason"].items() if reason not in NOT_ERRORS)
    if limit is not None and read and bad / read > limit:
        raise RejectedRowsError(f"{bad} of {read} rows rejected ({percent(bad / read)}), over max_rejected "
                                f"{percent(limit)}; see {out / REJECTS}")  # fmt: skip


def run_recipe(
    recipe: Recipe,
    *,
    out: Path,
    overwrite: bool = False,
    origin: str | None = None,
    say: Callable[[str], None] = lambda _msg: None,
    workers: int | None = None,
    progress: StartPhase | None = None,
) -> dict[str, Any]:
    """Run `recipe` into `out` (``train/``, ``eval/``, ``rejects.jsonl``, ``manifest.json``); returns the manifest.

    `recipe` must hold absolute paths (see `dsprep.recipe.load.load_recipe`); `origin` names its file. `workers`
    (None: every usable core) changes nothing in the output. `progress` is told of each stage as it starts (each
    source's bytes read and normalized rows written, the rows selected from, each split's rows tokenized and shards
    written). The output cache is not used.
    """
    effective = recipe.model_copy(update={"out": os.path.abspath(out)})
    staging = Staging(out, overwrite=overwrite)
    try:
        run = _RecipeRun(effective, staging, say, workers, progress, origin)
        with run.rejects:
            run.normalize()
            plans = run.plans()
            as_read = leakage(plans)
            try:
                selections = select(plans, dedup=effective.dedup.by != "none")
            except RecipeError as exc:  # a value the rows read make impossible: name the recipe file
                raise RecipeError(f"{origin}: {exc}" if origin else str(exc)) from None
            run.record_left_out(selections)
            splits = run.encode(selections)
        selected = leakage(plans, selections)
        sources = run.source_stats(selections)
        limit = effective.max_rejected  # a float: the model turns '1%' into 0.01
        _check_rejected(sources, None if limit is None else float(limit), out)
        manifest = {
            "dsprep_version": __version__,
            "schema_version": SCHEMA_VERSION,
            "stage": "recipe",
            "recipe": effective.model_dump(mode="json"),
            "recipe_file": origin,
            "splits": splits,
            "sources": sources,
            "dedup": {"by": effective.dedup.by, "removed": sum(s["duplicates"] for s in sources),
                      "across_sources": sum(s["duplicates_across_sources"] for s in sources),
                      "train_rows_equal_to_eval": sum(s["duplicates_of_eval"] for s in sources)},
            "leakage": {"as_read": as_read, "selected": selected},
            "totals": {k: sum(s[k] for s in sources) for k in ("rows_read", "rows_kept", "rows_rejected")},
            "rejects": {"file": REJECTS, "rows": run.rejects.rows, "sha256": file_sha256(staging.dir / REJECTS)},
        }  # fmt: skip
        write_json(staging.dir / MANIFEST, manifest)
        staging.publish([*SPLIT_FOLDERS, REJECTS, MANIFEST])
    except BaseException:
        staging.discard(keep=(REJECTS,))
        raise
    return manifest
