"""Recipes on the real sample files: a five-format mix with eval splits, and the wwdc25 train/valid leakage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from dsprep.cli import main
from dsprep.verify import verify_output
from paths import FIXTURES

pytestmark = pytest.mark.shared_data

WWDC = "prompt_completion/mlx-examples__wwdc25_{}.jsonl"
TOKEN_COLUMNS = ("input_ids", "prompt_input_ids", "completion_input_ids", "chosen_input_ids", "rejected_input_ids")


def run(recipe: Path, out: Path, *extra: str) -> Any:
    result = CliRunner().invoke(main, ["convert", "--recipe", str(recipe), "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return result


def rows(out: Path, split: str) -> list[dict[str, Any]]:
    return [r for p in sorted((out / split).glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]


def tokens(row: dict[str, Any]) -> tuple[tuple[int, ...] | None, ...]:
    return tuple(tuple(row[c]) if row[c] is not None else None for c in TOKEN_COLUMNS)


@pytest.fixture(scope="module")
def mix(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from paths import SHARED_DATA

    if not (SHARED_DATA / "SOURCES.md").is_file():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (set DSPREP_SHARED_DATA to its folder)")
    folder = tmp_path_factory.mktemp("shared_mix")
    text = (FIXTURES / "recipes" / "shared_data_mix.yaml").read_text()
    recipe = folder / "prep.yaml"
    recipe.write_text(text.replace("../../../shared/data", str(SHARED_DATA)))
    run(recipe, folder / "out", "-q")
    return folder / "out", orjson.loads((folder / "out" / "manifest.json").read_bytes())


def test_the_mix_reads_five_formats_into_verified_train_and_eval_sets(mix: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = mix
    formats = {i["format"] for s in manifest["sources"] for i in s["inputs"]}
    assert formats == {"sharegpt", "alpaca", "openai", "kto", "prompt_completion"}
    assert verify_output(out, tokenizer="mistral:tekken")["stage"] == "recipe"
    for s in manifest["sources"]:
        assert s["rows_read"] == s["rows_kept"] + s["rows_rejected"]


def test_the_mix_has_the_requested_proportions(mix: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = mix
    recipe = {s["name"]: s for s in manifest["recipe"]["sources"]}
    written: dict[tuple[str, str], int] = {}
    for split in ("train", "eval"):
        for r in rows(out, split):
            name = next(s["name"] for s in manifest["sources"] if r["source_file"] in s["paths"])
            written[name, split] = written.get((name, split), 0) + 1
    for s in manifest["sources"]:
        name, asked = s["name"], recipe[s["name"]]
        available = s["rows_read"] - s["duplicates"] - s["held_out_for_eval"]
        if asked["split"] == "eval":
            assert abs(written.get((name, "eval"), 0) - min(asked["rows"], available)) <= 1
            continue
        want = asked["rows"] if asked["rows"] is not None else round((asked["weight"] or 1) * available)
        assert abs(written.get((name, "train"), 0) - want) <= 1, name
        eval_block = asked["eval"] or manifest["recipe"]["eval"]
        unique = s["rows_read"] - s["duplicates"]
        held = eval_block["rows"] if eval_block["rows"] is not None else round(eval_block["fraction"] * unique)
        assert abs(written.get((name, "eval"), 0) - held) <= 1, name
    drone = next(s for s in manifest["sources"] if s["name"] == "drone")
    assert drone["repeated"] == 120 - (103 - drone["held_out_for_eval"])  # up-sampled past the file's rows


def test_no_eval_example_duplicates_a_train_example(mix: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = mix
    train = {tokens(r) for r in rows(out, "train")}
    evals = [tokens(r) for r in rows(out, "eval")]
    assert evals and not [t for t in evals if t in train]
    assert manifest["leakage"]["selected"] == {"eval_rows_in_train": 0, "train_rows_in_eval": 0}


def test_the_recorded_recipe_reproduces_byte_identical_shards(mix: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, manifest = mix
    recorded = tmp_path / "recorded.yaml"
    recorded.write_text(yaml.safe_dump(manifest["recipe"]))
    run(recorded, tmp_path / "again", "-q")
    first = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.parquet"))}
    again = {
        str(p.relative_to(tmp_path / "again")): p.read_bytes() for p in sorted((tmp_path / "again").rglob("*.parquet"))
    }
    assert sorted(first) == ["eval/part-00000.parquet", "train/part-00000.parquet"]
    assert first == again


@pytest.mark.parametrize("by", ["none", "conversation"])
def test_wwdc25_valid_overlaps_train_16_times_and_dedup_removes_them_from_train(
    shared_data: Path, tmp_path: Path, by: str
) -> None:
    train_file, valid_file = (shared_data / WWDC.format(s) for s in ("train", "valid"))
    train_lines = set(train_file.read_bytes().splitlines())
    overlapping = [line for line in valid_file.read_bytes().splitlines() if line in train_lines]
    assert len(overlapping) == 16  # as SOURCES.md says
    recipe = tmp_path / "prep.yaml"
    recipe.write_text(
        f"sources:\n  - path: {train_file}\n  - path: {valid_file}\n    split: eval\ndedup: {{by: {by}}}\n"
    )
    result = run(recipe, tmp_path / "out")
    manifest = orjson.loads((tmp_path / "out" / "manifest.json").read_bytes())
    assert manifest["leakage"]["as_read"]["eval_rows_in_train"] == 16
    assert "eval rows equal to a train row: 16 as read" in result.output
    pairs = {(r["prompt"], r["completion"]) for r in rows(tmp_path / "out", "train")}
    leaked = [o for o in map(orjson.loads, overlapping) if (o["prompt"], o["completion"]) in pairs]
    if by == "none":
        assert len(leaked) == 16 and manifest["leakage"]["selected"]["eval_rows_in_train"] == 16
        assert "warning: eval rows duplicate train rows" in result.output
        assert len(rows(tmp_path / "out", "eval")) == 144
        return
    assert leaked == [] and manifest["leakage"]["selected"]["eval_rows_in_train"] == 0
    rejects = [orjson.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_bytes().splitlines()]
    removed = [r for r in rejects if r["reason"] == "duplicate" and r["source_file"] == str(train_file)
               and r["duplicate_of"]["source_file"] == str(valid_file)]  # fmt: skip
    removed_lines = {r["source_row"] for r in removed}
    lines = train_file.read_bytes().splitlines()
    assert {lines[i] for i in removed_lines} == set(overlapping)  # every copy in train of the 16, and nothing else
    assert manifest["dedup"]["train_rows_equal_to_eval"] == len(removed)
