"""Option values at and past their edges: refused up front with one line and a documented exit code, never a
traceback; files that cannot be written exit 6; recipes take what the flags take."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from dsprep.cli import main, parse_size
from dsprep.config import MAX_SEED, MAX_TOKENS
from dsprep.errors import RecipeError
from dsprep.pack import plan_packing
from dsprep.recipe.load import parse_recipe

CHAT = '{"messages": [{"role": "user", "content": "q%d"}, {"role": "assistant", "content": "a"}]}\n'
TOKENIZED = ["-t", "mistral:tekken", "--template", "chatml", "--no-cache"]
RANGE_TOKENS = f"is not in the range 1<=x<={MAX_TOKENS}."
RANGE_SEED = f"is not in the range 0<=x<={MAX_SEED}."


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    path = tmp_path / "toy.jsonl"
    path.write_text("".join(CHAT % i for i in range(3)))
    return path


def _convert(toy: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["convert", str(toy), "-o", str(toy.parent / "o"), "-q", *args])


def _last_line(result: Result) -> str:
    assert "Traceback" not in result.output and "internal error" not in result.output
    return result.stderr.rstrip("\n").splitlines()[-1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pack", "64", "--shuffle-seed", "-1"], f"Invalid value for '--shuffle-seed': -1 {RANGE_SEED}"),
        (["--pack", "64", "--shuffle-seed", str(1 << 64)], f"Invalid value for '--shuffle-seed': {1 << 64} {RANGE_SEED}"),
        (["--pack", "64", "--shard-size", "0"], "Invalid value for '--shard-size': '0' is under 1 byte; a size must be positive"),
        (["--pack", "99999999999999"], f"Invalid value for '--pack': 99999999999999 {RANGE_TOKENS}"),
        (["--pack", str(MAX_TOKENS + 1)], f"Invalid value for '--pack': {MAX_TOKENS + 1} {RANGE_TOKENS}"),
        (["--max-len", "99999999999999999999"], f"Invalid value for '--max-len': 99999999999999999999 {RANGE_TOKENS}"),
    ],
)  # fmt: skip
def test_out_of_range_numbers_are_usage_errors(toy: Path, args: list[str], message: str) -> None:
    result = _convert(toy, *TOKENIZED, *args)
    assert result.exit_code == 2
    assert _last_line(result) == f"Error: {message}"
    assert not (toy.parent / "o").exists()  # refused before the run: no rejects.jsonl left behind


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shard-size", "0"], "Invalid value for '--shard-size': '0' is under 1 byte; a size must be positive"),
        (["--shard-size", "0.5"], "Invalid value for '--shard-size': '0.5' is under 1 byte; a size must be positive"),
        (["--shard-size", "100iB"], "Invalid value for '--shard-size': '100iB' is not a size such as 256MB, 1GB or 100B"),
        (["--cache-max-size", "10xB"], "Invalid value for '--cache-max-size': '10xB' is not a size such as 256MB, 1GB or 100B"),
        (["--shard-size", "9" * 400], f"Invalid value for '--shard-size': '{'9' * 400}' is over the largest size, "
                                      f"{(1 << 63) - 1} bytes"),
        (["--shuffle-seed", "3"], "Invalid value for --shuffle-seed: shuffling packed rows needs --pack"),
        (["--max-len", "3"], "Invalid value for --max-len: a length limit needs --tokenizer"),
        (["--overflow", "truncate-right"], "Invalid value for --overflow: an overflow policy needs --tokenizer"),
    ],
)  # fmt: skip
def test_unpacked_option_errors_are_usage_errors(toy: Path, args: list[str], message: str) -> None:
    result = _convert(toy, *args)
    assert result.exit_code == 2
    assert _last_line(result) == f"Error: {message}"
    assert not (toy.parent / "o").exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("100B", 100), ("100b", 100), ("10 B", 10), ("4096", 4096), ("1k", 1 << 10), ("1ki", 1 << 10), ("1kb", 1 << 10),
     ("1KiB", 1 << 10), ("256MB", 256 << 20), ("1g", 1 << 30), ("1.5GiB", 3 << 29), ("2T", 2 << 40), (" 3 mb ", 3 << 20)],
)  # fmt: skip
def test_sizes_in_bytes_and_binary_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_a_size_in_bytes_converts(toy: Path) -> None:
    result = _convert(toy, "--shard-size", "100B", "--cache-max-size", "10B", "--cache-dir", str(toy.parent / "cache"))
    assert result.exit_code == 0, result.output
    assert json.loads((toy.parent / "o" / "manifest.json").read_text())["options"]["shard_bytes"] == 100


def test_the_largest_seed_shuffles() -> None:
    plan = plan_packing(np.array([3, 2, 2, 1, 4]), 4)
    assert sorted(plan.shuffled(MAX_SEED).order.tolist()) == list(range(5))


def test_packing_memory_follows_the_longest_example_not_the_row_length() -> None:
    lengths = np.random.default_rng(0).integers(1, 1000, 10_000)
    tracemalloc.start()
    try:
        plan = plan_packing(lengths, MAX_TOKENS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20  # a count per possible length would take 16 GiB
    assert plan.rows == 1 and plan.order.tolist() == np.argsort(-lengths, kind="stable").tolist()


def test_inspect_refuses_a_pack_past_int32(toy: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(toy), "-q", *TOKENIZED[:4], "--pack", str(MAX_TOKENS + 1)])
    assert result.exit_code == 2
    assert _last_line(result) == f"Error: Invalid value for '--pack': {MAX_TOKENS + 1} {RANGE_TOKENS}"


# --- files that cannot be written ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "target", "reason"),
    [("--json", "a_file/r.json", "Not a directory"), ("--json", "missing/r.json", "No such file or directory"),
     ("--html", "a_folder", "Is a directory")],
)  # fmt: skip
def test_inspect_reports_that_cannot_be_written_exit_6(toy: Path, option: str, target: str, reason: str) -> None:
    (toy.parent / "a_file").write_text("")
    (toy.parent / "a_folder").mkdir()
    path = toy.parent / target
    result = CliRunner().invoke(main, ["inspect", str(toy), "-q", option, str(path)])
    assert result.exit_code == 6
    assert result.stderr == f"error: cannot write {path}: {reason}\n"
    assert "Traceback" not in result.output


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_report_write_that_fails_midway_exits_6(toy: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(toy), "-q", "--json", "/dev/full"])
    assert result.exit_code == 6
    assert result.stderr == "error: cannot write /dev/full: No space left on device\n"


@pytest.mark.parametrize(
    ("target", "force", "reason"),
    [("missing/ri.yaml", False, "No such file or directory"), ("a_folder", True, "Is a directory"),
     ("a_folder", False, "Is a directory")],
)  # fmt: skip
def test_recipe_init_into_an_unwritable_path_exits_6(toy: Path, target: str, force: bool, reason: str) -> None:
    (toy.parent / "a_folder").mkdir()
    path = toy.parent / target
    result = CliRunner().invoke(main, ["recipe", "init", str(toy), "-o", str(path), *(["--force"] * force)])
    assert result.exit_code == 6
    assert result.stderr == f"error: cannot write {path}: {reason}\n"


# --- recipes ------------------------------------------------------------------------------------------------------


def _recipe(tmp_path: Path, body: str) -> Result:
    recipe = tmp_path / "prep.yaml"
    recipe.write_text(f"sources:\n  - path: toy.jsonl\ntokenizer: mistral:tekken\n{body}")
    return CliRunner().invoke(main, ["convert", "--recipe", str(recipe), "--out", str(tmp_path / "o"), "-q"])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("pack: 64\nshuffle_seed: -1\n", "5: shuffle_seed: Input should be greater than or equal to 0"),
        ("pack: 64\nshard_size: '0'\n", "5: shard_size: '0' is under 1 byte; a size must be positive"),
        ("shard_size: 0\n", "4: shard_size: '0' is under 1 byte; a size must be positive"),
        ("shard_size: 100iB\n", "4: shard_size: '100iB' is not a size such as 256MB, 1GB or 100B"),
        ("pack: 99999999999999\n", f"4: pack: Input should be less than or equal to {MAX_TOKENS}"),
        ("max_len: 99999999999999999999\n", f"4: max_len: Input should be less than or equal to {MAX_TOKENS}"),
        ("seed: -1\n", "4: seed: Input should be greater than or equal to 0"),
        ("eval: {fraction: 0.1, seed: -1}\n", "4: eval.seed: Input should be greater than or equal to 0"),
        ("max_rejected: 200%\n", "4: max_rejected: '200%' must lie between 0 and 1"),
        ("max_rejected: 2\n", "4: max_rejected: Input should be less than or equal to 1"),
    ],
)  # fmt: skip
def test_recipe_values_out_of_range_exit_10_naming_the_line(tmp_path: Path, body: str, message: str) -> None:
    result = _recipe(tmp_path, body)
    assert result.exit_code == 10
    assert result.stderr == f"error: {tmp_path / 'prep.yaml'}:{message}\n"
    assert not (tmp_path / "o").exists()


def test_recipe_command_line_values_are_usage_errors(tmp_path: Path) -> None:
    recipe = tmp_path / "prep.yaml"
    recipe.write_text("sources:\n  - path: toy.jsonl\ntokenizer: mistral:tekken\npack: 64\n")
    result = CliRunner().invoke(
        main, ["convert", "--recipe", str(recipe), "-o", str(tmp_path / "o"), "--shard-size", "0"]
    )
    assert result.exit_code == 2
    assert _last_line(result) == "Error: Invalid value for '--shard-size': '0' is under 1 byte; a size must be positive"


@pytest.mark.parametrize(
    ("body", "field", "value"),
    [("max_rejected: 1%\n", "max_rejected", 0.01), ("max_rejected: '0.5'\n", "max_rejected", 0.5),
     ("max_rejected: 1\n", "max_rejected", 1.0), ("shard_size: 100B\n", "shard_size", "100B"),
     ("shard_size: 4096\n", "shard_size", 4096), ("tokenizer: t\npack: 8\nshuffle_seed: 9223372036854775807\n", "shuffle_seed", MAX_SEED)],
)  # fmt: skip
def test_recipes_take_what_the_flags_take(body: str, field: str, value: object) -> None:
    recipe = parse_recipe(f"sources:\n  - path: a.json\n{body}", origin="p.yaml")
    assert getattr(recipe, field) == value


def test_a_source_name_error_states_the_rule() -> None:
    with pytest.raises(RecipeError) as err:
        parse_recipe("sources:\n  - path: a.json\n    name: _x\n", origin="p.yaml")
    assert str(err.value) == (
        "p.yaml:3: sources[0].name: expected a letter or digit, then letters, digits, '_', '-' or '.', got '_x'"
    )


def test_recipe_init_writes_names_the_recipe_accepts(toy: Path) -> None:
    inputs = [toy.parent / name for name in ("_x.jsonl", "é数据.jsonl", "数据.jsonl", "-.jsonl")]
    for path in inputs:
        path.write_text(toy.read_text())
    recipe = toy.parent / "q.yaml"
    result = CliRunner().invoke(main, ["recipe", "init", *map(str, inputs), "-o", str(recipe)])
    assert result.exit_code == 0, result.output
    parsed = parse_recipe(recipe.read_text(), origin=str(recipe))
    assert [s.name for s in parsed.sources] == ["x", "source", "source_", "source__"]
