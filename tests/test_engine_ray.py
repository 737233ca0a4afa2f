"""`dsprep convert --engine ray` on a local Ray gives the same bytes as the local engine; without Ray it says so."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
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


def test_a_dsprep_error_on_a_ray_worker_ends_the_run_as_itself(local_ray: None, tmp_path: Path) -> None:
    """A tokenizer missing on a node fails the task there: the run ends with that error, not Ray's wrapper."""
    from dsprep.errors import TokenizerError
    from dsprep.sources import Record
    from dsprep.specs import load_spec
    from dsprep.workers import EncodeSpec, SourceInput, Stage, Task

    line = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}'
    stage = Stage(
        (SourceInput("a.jsonl", "a.jsonl", True, load_spec("openai")),),
        EncodeSpec(str(tmp_path / "no-such-tokenizer"), "chatml", "assistant", None, "drop"),
        False,
    )
    tasks = iter([Task(0, 0, [Record(0, None, line, pending=True)])])
    with pytest.raises(TokenizerError, match="no-such-tokenizer"):
        list(ray_engine.ray_results(stage, tasks, 2))


def _cli(tmp_path: Path, *options: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "dsprep", "convert", str(FIXTURES / "formats" / "openai.jsonl"), "--out",
           str(tmp_path / "out"), "--tokenizer", "mistral:v3", "--template", "chatml", "--no-cache", "--quiet",
           "--engine", "ray", *options]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("address", ["127.0.0.1:1", "nosuchhost.invalid:6379"])
def test_a_ray_address_with_no_cluster_is_one_line_and_exit_9_at_once(tmp_path: Path, address: str) -> None:
    pytest.importorskip("ray")
    started = time.monotonic()
    result = _cli(tmp_path, "--ray-address", address, env={"RAY_ADDRESS": ""})
    assert time.monotonic() - started < 60  # Ray alone retries an unreachable address for minutes
    assert result.returncode == 9, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: --ray-address {address}: ")


def test_without_ray_address_a_local_ray_starts_whatever_ray_address_says(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    result = _cli(tmp_path, env={"RAY_ADDRESS": "127.0.0.1:1"})  # as set for `ray job submit` entry points
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "manifest.json").is_file()
