"""Which paths `dsprep inspect` reads, and as what: dsprep output folders found below a given folder are inspected as
outputs (their shards are not raw data), and a file or folder named twice counts once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dsprep.cli import main
from paths import FIXTURES

CHATS = FIXTURES / "formats" / "openai.jsonl"
ALPACA = FIXTURES / "formats" / "alpaca.jsonl"


def inspect(tmp_path: Path, *paths: Path | str) -> dict[str, Any]:
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["inspect", *map(str, paths), "-q", "--json", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())  # type: ignore[no-any-return]


@pytest.fixture
def mixdir(tmp_path: Path) -> Path:
    """A folder holding a raw file and, one level down, a convert output of another file."""
    folder = tmp_path / "mixdir"
    folder.mkdir()
    shutil.copy(CHATS, folder / "chats.jsonl")
    result = CliRunner().invoke(main, ["convert", str(ALPACA), "--out", str(folder / "runs" / "pk"), "-q"])
    assert result.exit_code == 0, result.output
    return folder


def test_an_output_folder_inside_a_folder_is_inspected_as_an_output(mixdir: Path, tmp_path: Path) -> None:
    alone = inspect(tmp_path, mixdir / "runs" / "pk")
    raw = inspect(tmp_path, mixdir / "chats.jsonl")
    report = inspect(tmp_path, mixdir)
    assert [Path(i["path"]).name for i in report["inputs"]] == ["chats.jsonl"]
    assert [s["path"] for s in report["shards"]] == [str(mixdir / "runs" / "pk")]
    assert report["inputs"][0]["rows"] == raw["inputs"][0]["rows"]
    counts = ("inputs", "rows_read", "rows_kept", "rows_rejected")
    assert {k: report["totals"][k] for k in counts} == {k: alone["totals"][k] + raw["totals"][k] for k in counts}
    assert report["totals"]["rows_rejected"] == 0  # no shard or manifest read as a raw file


def test_a_path_named_twice_counts_once(mixdir: Path, tmp_path: Path) -> None:
    pk = mixdir / "runs" / "pk"
    once = inspect(tmp_path, pk, mixdir / "chats.jsonl")
    again = inspect(tmp_path, pk, pk, f"{mixdir}/runs/../runs/pk", mixdir / "chats.jsonl", mixdir / "chats.jsonl")
    assert again["totals"] == once["totals"] and len(again["shards"]) == 1 and len(again["inputs"]) == 1
    both = inspect(tmp_path, mixdir, pk, mixdir / "chats.jsonl", f"{mixdir}/*")
    assert both["totals"] == once["totals"]
