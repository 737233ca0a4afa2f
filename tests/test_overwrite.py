"""`--overwrite` replaces only what dsprep wrote: anything else in the output folder, or in a recipe output's split
folders, makes it refuse (exit 6) and stays untouched."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from dsprep.cli import main
from paths import FIXTURES

TEXT = FIXTURES / "formats" / "text.jsonl"
MIX = FIXTURES / "recipes" / "formats_mix.yaml"


def _convert(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["convert", *args, "-q"])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def recipe_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("recipe") / "out"
    assert _convert("--recipe", str(MIX), "--out", str(out))[0] == 0
    return out


@pytest.mark.parametrize(
    ("planted", "named"),
    [
        ("train/my_notes.txt", "train"),
        ("eval/mydir/keep.txt", "eval"),
        ("train/part-00000-3f2a.snappy.parquet", "train"),
    ],
)
def test_overwrite_keeps_foreign_files_in_split_folders(
    recipe_output: Path, tmp_path: Path, planted: str, named: str
) -> None:
    out = tmp_path / "out"
    shutil.copytree(recipe_output, out)
    (out / planted).parent.mkdir(parents=True, exist_ok=True)
    (out / planted).write_text("precious")
    for args in ([str(TEXT)], ["--recipe", str(MIX)]):
        code, output = _convert(*args, "--out", str(out), "--overwrite")
        assert code == 6 and f"holds files dsprep did not write ({named})" in output
        assert (out / planted).read_text() == "precious"
    top = out / Path(planted).parts[0] / Path(planted).parts[1]  # what was planted in the split folder
    shutil.rmtree(top) if top.is_dir() else top.unlink()
    assert _convert(str(TEXT), "--out", str(out), "--overwrite")[0] == 0  # only dsprep's files: replaced
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "part-00000.parquet", "rejects.jsonl"]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("part-00000-c000.snappy.parquet", b"PAR1"),  # Spark's naming, not dsprep's
        ("manifest.json", b'{"files": ["a"]}'),  # another tool's manifest
        ("manifest.json", b"not json"),
    ],
)
def test_overwrite_refuses_files_that_only_look_like_dsprep_output(tmp_path: Path, name: str, content: bytes) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(content)
    code, output = _convert(str(TEXT), "--out", str(out), "--overwrite")
    assert code == 6 and f"holds files dsprep did not write ({name})" in output
    assert (out / name).read_bytes() == content


def test_an_output_inside_its_input_folder_is_not_read_back(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(TEXT, data / "text.jsonl")
    out = data / "out"
    assert _convert(str(data), "--out", str(out), "--no-cache")[0] == 0
    first = (out / "part-00000.parquet").read_bytes()
    code, output = _convert(str(data), "--out", str(out), "--no-cache", "--overwrite")
    assert code == 0, output
    assert (out / "part-00000.parquet").read_bytes() == first


def test_a_failed_runs_rejects_do_not_block_the_rerun(tmp_path: Path) -> None:
    """A run stopped by --max-rejected leaves its rejects.jsonl to look at; the rerun replaces it without --overwrite
    (anything more in the folder still needs it)."""
    bad = str(FIXTURES / "bad" / "invalid_rows.jsonl")
    out = tmp_path / "out"
    code, _ = _convert(bad, "--out", str(out), "--max-rejected", "1%", "--no-cache")
    assert code == 5 and sorted(p.name for p in out.iterdir()) == ["rejects.jsonl"]
    result = CliRunner().invoke(main, ["convert", bad, "--out", str(out), "--no-cache"])
    assert result.exit_code == 0, result.output
    assert f"replaced the rejects.jsonl a failed run had left in {out}" in result.output
    assert (out / "manifest.json").is_file()
    (out / "manifest.json").unlink()
    (out / "part-00000.parquet").unlink()
    (out / "notes.txt").write_text("mine")
    code, output = _convert(bad, "--out", str(out), "--no-cache")
    assert code == 6 and "output folder is not empty" in output
    assert (out / "notes.txt").read_text() == "mine"
