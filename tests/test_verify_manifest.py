"""A damaged or edited manifest is one line naming the field and exit code 8 for `dsprep verify`, `dsprep inspect`
and the trainer integrations, never a traceback; shards and split folders must lie inside the output, each listed
once; the rejects file and the schema version are checked too. A damaged resume marker is redone, not a crash."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dsprep.cli import main
from dsprep.config import ConvertConfig
from dsprep.errors import VerifyError
from dsprep.integrations.common import prepared_shards
from dsprep.pipeline import convert
from dsprep.report.cli import inspect_command
from dsprep.shards import Staging
from dsprep.tokenizers import load_tokenizer

Manifest = dict[str, Any]


def _chats(path: Path, rows: int) -> Path:
    with open(path, "w") as fh:
        for n in range(rows):
            messages = [{"role": "user", "content": f"q{n}"}, {"role": "assistant", "content": f"a{n}"}]
            fh.write(json.dumps({"messages": messages}) + "\n")
        fh.write("{not json\n")  # one rejected row, so the rejects file is not empty
    return path


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A normalized output, a tokenized one, a packed one and a recipe output (train and eval splits), each of a small
    chat file, and a tokenized output of 3 text rows that `overflow: split` cut into more rows."""
    root = tmp_path_factory.mktemp("outputs")
    src = _chats(root / "chats.jsonl", 40)
    convert(ConvertConfig(inputs=(str(src),), out=root / "normalized", workers=1))
    convert(ConvertConfig(inputs=(str(src),), out=root / "tokenized", tokenizer="mistral:tekken", template="chatml",
                          workers=1))  # fmt: skip
    convert(ConvertConfig(inputs=(str(src),), out=root / "packed", tokenizer="mistral:tekken", template="chatml",
                          pack=512, workers=1))  # fmt: skip
    text = root / "text.jsonl"
    text.write_text("".join(json.dumps({"text": f"row {n}: " + "word " * 12 * n}) + "\n" for n in range(1, 4)))
    convert(ConvertConfig(inputs=(str(text),), out=root / "split", tokenizer="mistral:tekken", template="chatml",
                          max_len=8, overflow="split", workers=1))  # fmt: skip
    recipe = root / "r.yaml"
    recipe.write_text("sources:\n  - name: chats\n    path: chats.jsonl\n    eval: {rows: 4}\n"
                      "tokenizer: mistral:tekken\ntemplate: chatml\n")  # fmt: skip
    result = CliRunner().invoke(main, ["convert", "--recipe", str(recipe), "--out", str(root / "recipe"), "-q"])
    assert result.exit_code == 0, result.output
    return {name: root / name for name in ("normalized", "tokenized", "packed", "split", "recipe")}


def _edited(outputs: dict[str, Path], kind: str, tmp_path: Path, change: Callable[[Manifest], object]) -> Path:
    """A copy of an output whose manifest `change` edited."""
    folder = Path(shutil.copytree(outputs[kind], tmp_path / kind))
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _fails(folder: Path, message: str) -> None:
    """`dsprep verify` and `dsprep inspect` both stop with exit code 8 and exactly this one line."""
    result = CliRunner().invoke(main, ["verify", str(folder)])
    assert (result.exit_code, result.output) == (8, f"error: {message}\n"), result.output
    result = CliRunner().invoke(inspect_command, [str(folder)])
    assert (result.exit_code, result.output) == (8, f"error: {message}\n"), result.output


def _first_shard(m: Manifest) -> Manifest:
    return dict(m["shards"][0])


def _added_shard(file: str) -> Callable[[Manifest], None]:
    """An edit appending a copy of the first shard's entry, naming `file`."""
    return lambda m: m["shards"].append({**_first_shard(m), "file": file})


# (output, edit, message after "<folder>/manifest.json: ")
MALFORMED = [
    ("normalized", lambda m: m.update(shards={"a": 1}), 'shards: expected a list, got {"a":1}'),
    ("normalized", lambda m: m.update(stage="packed"), "tokenizer: expected an object, got nothing"),
    (
        "normalized",
        lambda m: m["shards"][0].pop("sha256"),
        "shards[0].sha256: expected a sha256 (64 hex digits), got nothing",
    ),
    ("normalized", lambda m: m["shards"].__setitem__(0, None), "shards[0]: expected an object, got null"),
    ("normalized", lambda m: m["shards"][0].update(rows="7"), 'shards[0].rows: expected a whole number >= 0, got "7"'),
    ("normalized", lambda m: m.update(inputs=[5]), "inputs[0]: expected an object, got 5"),
    (
        "normalized",
        lambda m: m.update(stage="sharded"),
        'stage: expected one of normalized, tokenized, packed, recipe, got "sharded"',
    ),
    (
        "packed",
        lambda m: m["packing"].update(max_len="abc"),
        'packing.max_len: expected a whole number >= 1, got "abc"',
    ),
    ("packed", lambda m: m["packing"].update(max_len=None), "packing.max_len: expected a whole number >= 1, got null"),
    ("packed", lambda m: m["packing"].update(efficiency="x"), 'packing.efficiency: expected a number, got "x"'),
    ("packed", lambda m: m.pop("packing"), "packing: expected an object, got nothing"),
    ("packed", lambda m: m.update(tokenizer="x"), 'tokenizer: expected an object, got "x"'),
    (
        "packed",
        lambda m: m["tokenizer"].pop("fingerprint"),
        "tokenizer.fingerprint: expected a tokenizer fingerprint (a non-empty string), got nothing",
    ),
    ("packed", lambda m: m.update(template="chatml"), 'template: expected an object, got "chatml"'),
    ("packed", lambda m: m["options"].update(max_len="x"), 'options.max_len: expected a whole number >= 1, got "x"'),
    ("packed", lambda m: m.update(options=None), "options: expected an object, got null"),
    (
        "recipe",
        lambda m: m["splits"]["train"].update(path=5),
        'splits.train.path: expected "train" (the split\'s folder in this output), got 5',
    ),
    (
        "recipe",
        lambda m: m["rejects"].update(file="nothere.jsonl"),
        'rejects.file: expected "rejects.jsonl", got "nothere.jsonl"',
    ),
    (
        "recipe",
        lambda m: m["sources"][0]["train"].update(tokens="x"),
        'sources[0].train.tokens: expected a whole number >= 0, got "x"',
    ),
    ("recipe", lambda m: m.update(splits=[]), "splits: expected an object, got []"),
    (
        "recipe",
        lambda m: m["splits"]["eval"].pop("examples"),
        "splits.eval.examples: expected a whole number >= 0, got nothing",
    ),
    ("packed", lambda m: m["packing"].update(tokens=-1), "packing.tokens: expected a whole number >= 0, got -1"),
    ("packed", lambda m: m["packing"].update(slots="x"), 'packing.slots: expected a whole number >= 0, got "x"'),
    (
        "packed",
        lambda m: m["packing"].pop("examples_per_row_mean"),
        "packing.examples_per_row_mean: expected a number, got nothing",
    ),
    (
        "packed",
        lambda m: m["tokenizer"].update(vocab_size=0),
        "tokenizer.vocab_size: expected a whole number >= 1, got 0",
    ),
    ("normalized", lambda m: m.pop("totals"), "totals: expected an object, got nothing"),
    (
        "tokenized",
        lambda m: m["totals"].update(rows_kept="9"),
        'totals.rows_kept: expected a whole number >= 0, got "9"',
    ),
    (
        "normalized",
        lambda m: m["inputs"][0].pop("rows_kept"),
        "inputs[0].rows_kept: expected a whole number >= 0, got nothing",
    ),
]


@pytest.mark.parametrize(("kind", "edit", "message"), MALFORMED, ids=[m for _, _, m in MALFORMED])
def test_a_malformed_manifest_names_the_field(
    outputs: dict[str, Path], tmp_path: Path, kind: str, edit: Callable[[Manifest], object], message: str
) -> None:
    folder = _edited(outputs, kind, tmp_path, edit)
    _fails(folder, f"{folder / 'manifest.json'}: {message}")


def _set(*keys: str | int) -> Callable[[Manifest], None]:
    """An edit setting the manifest value at `keys` to 999."""

    def edit(m: Manifest) -> None:
        for key in keys[:-1]:
            m = m[key]
        m[keys[-1]] = 999

    return edit


# (output, edit, message after "<folder>/manifest.json: ", formatted with the unedited manifest): a count that the
# shards determine, edited
MISCOUNTED = [
    ("packed", _set("packing", "rows"), "packing.rows: 999 in the manifest, the shards hold {packing[rows]} rows"),
    (
        "packed",
        _set("packing", "tokens"),
        "packing.tokens: 999 in the manifest, the shards hold {packing[tokens]} tokens",
    ),
    ("packed", _set("totals", "rows_kept"), "totals.rows_kept: 999 in the manifest, the shards hold 40 examples"),
    ("packed", _set("inputs", 0, "rows_kept"), "inputs[].rows_kept: add up to 999, totals.rows_kept is 40"),
    ("tokenized", _set("totals", "rows_kept"), "totals.rows_kept: 999 in the manifest, the shards hold 40 examples"),
    ("tokenized", _set("inputs", 0, "rows_kept"), "inputs[].rows_kept: add up to 999, totals.rows_kept is 40"),
    ("normalized", _set("totals", "rows_kept"), "totals.rows_kept: 999 in the manifest, the shards hold 40 examples"),
    ("normalized", _set("inputs", 0, "rows_kept"), "inputs[].rows_kept: add up to 999, totals.rows_kept is 40"),
    (
        "split",
        _set("totals", "rows_kept"),
        "totals.rows_kept: 999 in the manifest, the shards hold {shards[0][rows]} examples",
    ),
    (
        "recipe",
        _set("splits", "train", "rows"),
        "splits.train.rows: 999 in the manifest, the split holds {splits[train][rows]} rows",
    ),
    (
        "recipe",
        _set("splits", "train", "examples"),
        "splits.train.examples: 999 in the manifest, the split holds 36 examples kept",
    ),
    ("recipe", _set("splits", "eval", "rows"), "splits.eval.rows: 999 in the manifest, the split holds 4 rows"),
    (
        "recipe",
        _set("splits", "eval", "examples"),
        "splits.eval.examples: 999 in the manifest, the split holds 4 examples kept",
    ),
]


@pytest.mark.parametrize(("kind", "edit", "message"), MISCOUNTED, ids=[f"{k}-{m[:24]}" for k, _, m in MISCOUNTED])
def test_a_count_the_shards_contradict_names_the_field(
    outputs: dict[str, Path], tmp_path: Path, kind: str, edit: Callable[[Manifest], object], message: str
) -> None:
    recorded = json.loads((outputs[kind] / "manifest.json").read_text())
    folder = _edited(outputs, kind, tmp_path, edit)
    _fails(folder, f"{folder / 'manifest.json'}: {message.format(**recorded)}")


# (edit of the packed output's manifest, message after "<folder>/manifest.json: ", formatted with the unedited
# manifest): the packing report is what `PackReport` makes of the shards' rows, tokens and examples at `max_len`,
# which is the run's `--pack`
PACKING_REPORT = [
    (
        _set("packing", "slots"),
        "packing.slots: 999 in the manifest, expected {packing[slots]} ({packing[rows]} rows of 512)",
    ),
    (
        lambda m: m["packing"].update(efficiency=0.5),
        "packing.efficiency: 0.5 in the manifest, expected {packing[efficiency]} ({packing[tokens]} tokens in "
        "{packing[slots]} slots)",
    ),
    (
        _set("packing", "lower_bound"),
        "packing.lower_bound: 999 in the manifest, expected {packing[lower_bound]} "
        "({packing[tokens]} tokens in rows of 512)",
    ),
    (
        _set("packing", "rows_above_bound"),
        "packing.rows_above_bound: 999 in the manifest, expected "
        "{packing[rows_above_bound]} ({packing[rows]} rows, at least {packing[lower_bound]})",
    ),
    (
        _set("packing", "examples_per_row_min"),
        "packing.examples_per_row_min: 999 in the manifest, expected "
        "{packing[examples_per_row_min]} (the fewest examples in a row)",
    ),
    (
        _set("packing", "examples_per_row_mean"),
        "packing.examples_per_row_mean: 999 in the manifest, expected "
        "{packing[examples_per_row_mean]} (40 examples in {packing[rows]} rows)",
    ),
    (
        _set("packing", "examples_per_row_max"),
        "packing.examples_per_row_max: 999 in the manifest, expected "
        "{packing[examples_per_row_max]} (the most examples in a row)",
    ),
    (lambda m: m["packing"].update(max_len=1024), "packing.max_len: 1024 in the manifest, options.pack is 512"),
    (
        lambda m: m["packing"].update(shuffle_seed=7),
        "packing.shuffle_seed: 7 in the manifest, options.shuffle_seed is null",
    ),
    (
        lambda m: (m["packing"].update(max_len=1024), m["options"].update(pack=1024)),
        "packing.slots: {packing[slots]} in the manifest, expected {slots_at_1024} ({packing[rows]} rows of 1024)",
    ),
]


@pytest.mark.parametrize(("edit", "message"), PACKING_REPORT, ids=[m[:40] for _, m in PACKING_REPORT])
def test_a_packing_report_the_shards_contradict_names_the_field(
    outputs: dict[str, Path], tmp_path: Path, edit: Callable[[Manifest], object], message: str
) -> None:
    recorded = json.loads((outputs["packed"] / "manifest.json").read_text())
    folder = _edited(outputs, "packed", tmp_path, edit)
    expected = message.format(**recorded, slots_at_1024=recorded["packing"]["rows"] * 1024)
    _fails(folder, f"{folder / 'manifest.json'}: {expected}")


def test_the_recorded_vocab_size_bounds_the_token_ids_and_is_the_tokenizers(
    outputs: dict[str, Path], tmp_path: Path
) -> None:
    """`tokenizer.vocab_size` bounds the shards' token ids without `--tokenizer`, and must be the given one's."""
    larger = _edited(outputs, "packed", tmp_path / "larger", lambda m: m["tokenizer"].update(vocab_size=131073))
    assert CliRunner().invoke(main, ["verify", str(larger)]).exit_code == 0
    result = CliRunner().invoke(main, ["verify", str(larger), "-t", "mistral:tekken"])
    message = (
        f"{larger / 'manifest.json'}: tokenizer.vocab_size: 131073 in the manifest, mistral:tekken has 131072 tokens"
    )
    assert (result.exit_code, result.output) == (8, f"error: {message}\n")
    smaller = _edited(outputs, "packed", tmp_path / "smaller", lambda m: m["tokenizer"].update(vocab_size=1000))
    ids = pq.read_table(smaller / "part-00000.parquet", columns=["input_ids"]).column("input_ids")[0].as_py()
    token = next(i for i, t in enumerate(ids) if t >= 1000)
    expected = f"input_ids[{token}] is {ids[token]}; expected a token id from 0 to 999 (tokenizer.vocab_size is 1000)"
    _fails(smaller, f"{smaller / 'part-00000.parquet'}: row 0: {expected}")


def test_overflow_split_keeps_fewer_rows_than_it_writes(outputs: dict[str, Path], tmp_path: Path) -> None:
    """`overflow: split` cuts a kept text row into several: `totals.rows_kept` may be below the rows, never above."""
    manifest = json.loads((outputs["split"] / "manifest.json").read_text())
    rows = manifest["shards"][0]["rows"]
    assert manifest["totals"]["rows_kept"] == 3 < rows
    result = CliRunner().invoke(main, ["verify", str(outputs["split"])])
    assert result.exit_code == 0 and result.output.startswith(f"{outputs['split']}: ok (tokenized, 1 shards, {rows}")

    def above(m: Manifest) -> None:
        m["totals"]["rows_kept"] = m["inputs"][0]["rows_kept"] = rows + 1

    folder = _edited(outputs, "split", tmp_path, above)
    message = f"totals.rows_kept: {rows + 1} in the manifest, the shards hold {rows} examples"
    _fails(folder, f"{folder / 'manifest.json'}: {message}")


def test_a_manifest_that_is_no_object_is_named(outputs: dict[str, Path], tmp_path: Path) -> None:
    folder = _edited(outputs, "normalized", tmp_path, lambda m: None)
    (folder / "manifest.json").write_text("[1, 2]")
    _fails(folder, f"{folder / 'manifest.json'}: not a dsprep manifest (expected an object with a stage, got [1,2])")


def test_a_shard_outside_the_folder_is_refused(outputs: dict[str, Path], tmp_path: Path) -> None:
    outside = str(outputs["normalized"] / "part-00000.parquet")
    for n, file in enumerate(["../normalized/part-00000.parquet", outside, "part-00000.parquet/../part-00000.parquet"]):
        folder = _edited(outputs, "normalized", tmp_path / str(n), _added_shard(file))
        expected = "a shard file name in the output folder (part-NNNNN.parquet)"
        _fails(folder, f"{folder / 'manifest.json'}: shards[1].file: expected {expected}, got {json.dumps(file)}")


def test_a_shard_listed_twice_is_refused(outputs: dict[str, Path], tmp_path: Path) -> None:
    folder = _edited(outputs, "normalized", tmp_path, lambda m: m["shards"].append(_first_shard(m)))
    _fails(
        folder, f"{folder / 'manifest.json'}: shards[1].file: part-00000.parquet is listed twice (also as shards[0])"
    )


@pytest.mark.parametrize("where", ["absolute", "../recipe/train", "eval"])
def test_a_split_path_must_be_its_own_folder(outputs: dict[str, Path], tmp_path: Path, where: str) -> None:
    path = str(outputs["recipe"] / "train") if where == "absolute" else where
    folder = _edited(outputs, "recipe", tmp_path, lambda m: m["splits"]["train"].update(path=path))
    message = f'splits.train.path: expected "train" (the split\'s folder in this output), got {json.dumps(path)}'
    _fails(folder, f"{folder / 'manifest.json'}: {message}")


def test_a_recipe_without_splits_or_with_a_split_left_out(outputs: dict[str, Path], tmp_path: Path) -> None:
    folder = _edited(outputs, "recipe", tmp_path / "none", lambda m: m.update(splits={}))
    _fails(folder, f"{folder / 'manifest.json'}: splits: expected at least one split (train, eval), got {{}}")
    folder = _edited(outputs, "recipe", tmp_path / "unknown", lambda m: m["splits"].update(test=m["splits"]["eval"]))
    _fails(folder, f'{folder / "manifest.json"}: splits: expected only the splits train, eval, got "test"')
    folder = _edited(outputs, "recipe", tmp_path / "no-eval", lambda m: m["splits"].pop("eval"))
    _fails(folder, f"{folder / 'eval'}: split folder not listed in the manifest")


def test_a_split_holding_a_recipe_manifest_is_refused(outputs: dict[str, Path], tmp_path: Path) -> None:
    nested = tmp_path / "recipe" / "train" / "manifest.json"

    def nest(m: Manifest) -> None:  # train/ holds the recipe manifest itself, with its checksum recorded
        nested.write_text(json.dumps(m))
        m["splits"]["train"]["manifest_sha256"] = hashlib.sha256(nested.read_bytes()).hexdigest()

    folder = _edited(outputs, "recipe", tmp_path, nest)
    _fails(folder, f"{nested}: a recipe manifest, not the manifest of a split's shards")


@pytest.mark.parametrize("kind", ["normalized", "recipe"])
def test_a_deleted_or_edited_rejects_file(outputs: dict[str, Path], tmp_path: Path, kind: str) -> None:
    folder = _edited(outputs, kind, tmp_path / "edited", lambda m: None)
    rejects = folder / "rejects.jsonl"
    rejects.write_bytes(rejects.read_bytes() + b'{"reason": "added"}\n')
    _fails(folder, f"{rejects}: checksum mismatch (sha256 differs from the manifest): the file was changed")
    rejects.unlink()
    _fails(folder, f"{rejects}: missing; the manifest records 1 rejected rows there")
    folder = _edited(outputs, kind, tmp_path / "rows", lambda m: m["rejects"].update(rows=3))
    _fails(folder, f"{folder / 'rejects.jsonl'}: 1 rejected rows, the manifest says 3")


@pytest.mark.parametrize("version", [99, 0, "1", True, None])
def test_an_unknown_schema_version(outputs: dict[str, Path], tmp_path: Path, version: object) -> None:
    folder = _edited(outputs, "normalized", tmp_path, lambda m: m.update(schema_version=version))
    expected = "1 (the schema version this dsprep reads)"
    _fails(folder, f"{folder / 'manifest.json'}: schema_version: expected {expected}, got {json.dumps(version)}")


def test_fresh_outputs_still_verify(outputs: dict[str, Path]) -> None:
    for kind, start in [("normalized", "ok (normalized, 1 shards, 40 rows)"), ("packed", "ok (packed, 1 shards, ")]:
        result = CliRunner().invoke(main, ["verify", str(outputs[kind])])
        assert result.exit_code == 0 and result.output.startswith(f"{outputs[kind]}: {start}"), result.output
    result = CliRunner().invoke(main, ["verify", str(outputs["recipe"])])
    assert result.exit_code == 0 and result.output.startswith(f"{outputs['recipe']}: ok (recipe: eval "), result.output


def test_the_integrations_read_the_checked_manifest(outputs: dict[str, Path], tmp_path: Path) -> None:
    tokenizer = load_tokenizer("mistral:tekken").tokenizer
    manifest, paths = prepared_shards(outputs["packed"], tokenizer)
    assert manifest["stage"] == "packed" and paths == [str(outputs["packed"] / "part-00000.parquet")]
    folder = _edited(outputs, "packed", tmp_path, _added_shard("/etc/passwd"))
    with pytest.raises(VerifyError, match=r"shards\[1\]\.file: expected a shard file name in the output folder"):
        prepared_shards(folder, tokenizer)
    recipe = outputs["recipe"]
    with pytest.raises(
        VerifyError, match=f"a recipe output, its shards are in its split folders; pass {recipe / 'train'} or"
    ):
        prepared_shards(recipe, tokenizer)


def test_a_damaged_resume_marker_is_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A piece's marker that is not its result's JSON marks no complete piece: the rerun does that task again."""
    src = _chats(tmp_path / "chats.jsonl", 1000)  # 4 tasks of 256 rows
    out = tmp_path / "out"
    config = ConvertConfig(inputs=(str(src),), out=out, format="openai", workers=1)
    publish = Staging.publish

    def stopped(self: Staging, names: list[str]) -> None:  # Ctrl-C once every piece is complete
        raise KeyboardInterrupt

    monkeypatch.setattr(Staging, "publish", stopped)
    with pytest.raises(KeyboardInterrupt):
        convert(config)
    monkeypatch.setattr(Staging, "publish", publish)
    pieces = out / ".dsprep-staging" / "pieces"
    assert len(list(pieces.glob("*.json"))) == 4
    (pieces / "000000001.json").write_text("{")
    (pieces / "000000002.json").write_text("[1]")
    (pieces / "000000003.json").write_text('{"seq": 0, "input_index": 0}')  # another piece's result

    notes: list[str] = []
    convert(config, on_note=notes.append)
    assert "resumed: reused 1 of 4 completed pieces of an interrupted run" in notes
    whole = tmp_path / "whole"
    convert(ConvertConfig(inputs=(str(src),), out=whole, format="openai", workers=1))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {p.name: p.read_bytes() for p in whole.iterdir()}
    assert not os.path.exists(out / ".dsprep-staging")
