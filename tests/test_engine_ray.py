"""`dsprep convert --engine ray` on a local Ray gives the same bytes as the local engine; without Ray it says so."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dsprep import ray_engine
from dsprep.cli import main
from paths import FIXTURES

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


def _inputs(shared_data: Path, tmp_path: Path) -> list[str]:
    """Real chat files, the bad-rows fixture, and one conversation too long for the packed length."""
    long_row = tmp_path / "long.jsonl"
    long_row.write_text(
        '{"messages": [{"role": "user", "content": "Say it all."}, '
        f'{{"role": "assistant", "content": "{"word " * 5000}"}}]}}\n'
    )
    openai = sorted(str(p) for p in (shared_data / "openai").glob("*.jsonl"))
    return [*openai, str(FIXTURES / "formats" / "sharegpt.jsonl"), str(FIXTURES / "bad" / "invalid_rows.jsonl"),
            str(long_row)]  # fmt: skip


def _convert(inputs: list[str], out: Path, *options: str) -> dict[str, bytes]:
    args = ["convert", *inputs, "--out", str(out), "--tokenizer", "mistral:v3", "--template", "chatml", "--pack",
            "4096", "--no-cache", "--quiet", *options]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.mark.shared_data
def test_ray_engine_is_byte_identical_to_local(
    local_ray: None, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dsprep.pipeline.TASK_ROWS", 16)  # several tasks per input ...
    monkeypatch.setattr("dsprep.ray_engine.WINDOW_TASKS", 3)  # ... and several windows sent to Ray
    sent: list[int] = []
    run_dataset = ray_engine._run_window

    def counting(dataset_rows: list[dict[str, Any]], stage: Any) -> dict[int, Any]:
        sent.append(len(dataset_rows))
        return run_dataset(dataset_rows, stage)

    monkeypatch.setattr("dsprep.ray_engine._run_window", counting)
    inputs = _inputs(shared_data, tmp_path)
    local = _convert(inputs, tmp_path / "local", "--engine", "local", "--workers", "1")
    on_ray = _convert(inputs, tmp_path / "ray", "--engine", "ray")
    assert len(sent) > 2 and max(sent) == 3  # every task went through Ray Data, three at a time
    assert on_ray == local
    manifest = json.loads(local["manifest.json"])
    assert manifest["packing"]["rows"] > 1
    assert all(report["rows_kept"] > 0 for report in manifest["inputs"][:-2])  # the real files and sharegpt pack
    reasons = {json.loads(line)["reason"] for line in local["rejects.jsonl"].splitlines()}
    assert "too_long" in reasons and "invalid_json" in reasons


def test_ray_engine_without_ray_is_a_missing_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    args = ["convert", str(FIXTURES / "formats" / "openai.jsonl"), "--out", str(tmp_path / "out"), "--tokenizer",
            "mistral:v3", "--engine", "ray"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 9
    assert "pip install 'dsprep[ray]'" in result.output
    assert len(result.output.strip().splitlines()) == 1
