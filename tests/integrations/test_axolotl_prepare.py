"""Axolotl's preparation step (`python -m dsprep.integrations.axolotl`), which needs transformers and PyYAML but not
Axolotl itself, so it runs in the core environment: a failed run leaves the files it would write as they were, and
the command it prints runs as printed when paths hold spaces.

Shards come from `dsprep convert` on real sample files, for the tiny random Llama `conftest.py` builds locally.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from dsprep.config import ConvertConfig
from dsprep.errors import VerifyError
from dsprep.integrations import axolotl as dsprep_axolotl
from dsprep.pipeline import convert
from paths import SHARED_DATA

pytest.importorskip("transformers", reason="the preparation loads the model folder's tokenizer")
pytest.importorskip("yaml")

pytestmark = pytest.mark.shared_data
PREFERENCE = "preference/llamafactory__dpo_en_demo.json"


def test_a_failed_preparation_leaves_the_previous_files(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not (SHARED_DATA / "SOURCES.md").is_file():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    shards = tmp_path / "prefs"  # tokenized preference rows: refused inside the batch loop (they have no input_ids)
    inputs = (str(SHARED_DATA / PREFERENCE),)
    convert(ConvertConfig(inputs=inputs, out=shards, tokenizer=str(tiny_model_dir), template="chatml", max_len=192))
    run = tmp_path / "run"
    run.mkdir()
    (run / "axolotl.parquet").write_bytes(b"the previous run's parquet")
    (run / "axolotl.yaml").write_text("the previous run's config\n")
    code = dsprep_axolotl.main([str(shards), "--model", str(tiny_model_dir), "--out", str(run / "axolotl.yaml")])
    assert code == VerifyError.exit_code
    assert capsys.readouterr().err == (
        f"error: {shards}: 'preference' rows have no input_ids; Axolotl SFT needs conversation or text rows\n"
    )
    assert (run / "axolotl.parquet").read_bytes() == b"the previous run's parquet"
    assert (run / "axolotl.yaml").read_text() == "the previous run's config\n"
    assert sorted(p.name for p in run.iterdir()) == ["axolotl.parquet", "axolotl.yaml"]  # no partial file left


def test_the_next_command_quotes_paths_with_spaces(
    packed_shards: Path, unpacked_shards: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "my run" / "axolotl sft.yaml"
    assert dsprep_axolotl.main([str(packed_shards), "--model", str(tiny_model_dir), "--out", str(config)]) == 0
    (*_, next_line) = capsys.readouterr().out.splitlines()
    assert next_line.startswith("next: ")
    assert shlex.split(next_line.removeprefix("next: ")) == ["axolotl", "train", str(config), "--launcher", "python"]
    assert sorted(p.name for p in config.parent.iterdir()) == ["axolotl sft.parquet", "axolotl sft.yaml"]
    assert dsprep_axolotl.main([str(unpacked_shards), "--model", str(tiny_model_dir), "--out", str(config)]) == 0
    (*_, next_line) = capsys.readouterr().out.splitlines()
    preprocess, train = next_line.removeprefix("next: ").split(" && ")
    assert shlex.split(preprocess) == ["axolotl", "preprocess", str(config)]
    assert shlex.split(train) == ["axolotl", "train", str(config), "--launcher", "python"]
