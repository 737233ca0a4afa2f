"""Resume: a convert killed with SIGKILL mid-run reuses its completed pieces, and the rerun's output is
byte-identical to an uninterrupted run's."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import dsprep.pipeline
from dsprep.config import ConvertConfig
from dsprep.errors import OutputError
from dsprep.pipeline import convert
from dsprep.shards import STAGING, Staging
from paths import REPO

ROWS = 6000
OPTIONS = ["--format", "openai", "--tokenizer", "mistral:tekken", "--template", "chatml", "--pack", "1024",
           "--workers", "2", "--no-cache"]  # fmt: skip


def _corpus(path: Path) -> None:
    rng = random.Random(7)
    words = [f"{rng.getrandbits(24):x}" for _ in range(2000)]
    with open(path, "w") as fh:
        for i in range(ROWS):
            if i % 499 == 3:
                fh.write('{"messages": [not json\n')
                continue
            messages = []
            for _ in range(rng.randint(1, 3)):
                for role in ("user", "assistant"):
                    messages.append({"role": role, "content": " ".join(rng.choices(words, k=rng.randint(3, 120)))})
            fh.write(json.dumps({"messages": messages}) + "\n")


def _convert(src: Path, out: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "dsprep", "convert", str(src), "--out", str(out), *OPTIONS]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=True)


def _start_and_kill(src: Path, out: Path, *, pieces: int) -> int:
    """Start a convert, SIGKILL it once `pieces` pieces are complete; returns how many were."""
    cmd = [sys.executable, "-m", "dsprep", "convert", str(src), "--out", str(out), *OPTIONS]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = out / ".dsprep-staging" / "pieces"
    deadline = time.monotonic() + 300
    while len(list(folder.glob("*.json"))) < pieces and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.fail("the convert finished before it could be killed; make the input larger")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return len(list(folder.glob("*.json")))


def _stopping_after(store: Any, n: int, stop: BaseException) -> Any:
    """`store` (store_piece) that raises `stop` once `n` more pieces are stored."""
    stored = 0

    def store_or_stop(*args: Any, **kwargs: Any) -> Any:
        nonlocal stored
        if stored == n:
            raise stop
        stored += 1
        return store(*args, **kwargs)

    return store_or_stop


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_a_killed_convert_resumes_to_the_same_bytes(tmp_path: Path) -> None:
    src = tmp_path / "chats.jsonl"
    _corpus(src)
    killed = tmp_path / "killed"
    done = _start_and_kill(src, killed, pieces=3)
    assert done >= 3 and not (killed / "manifest.json").exists()

    rerun = _convert(src, killed)
    reused = [line for line in rerun.stderr.splitlines() if line.startswith("resumed: reused ")]
    assert reused, rerun.stderr
    n_reused, n_total = int(reused[0].split()[2]), int(reused[0].split()[4])
    assert done <= n_reused < n_total
    assert not (killed / ".dsprep-staging").exists()

    _convert(src, tmp_path / "whole")
    assert _files(killed) == _files(tmp_path / "whole")
    assert b"not json" in _files(killed)["rejects.jsonl"]


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_a_killed_worker_ends_the_run_in_one_line_and_the_rerun_resumes(tmp_path: Path) -> None:
    """An out-of-memory kill picks a worker as often as the convert: its completed pieces stay too."""
    src = tmp_path / "chats.jsonl"
    _corpus(src)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dsprep", "convert", str(src), "--out", str(out), *OPTIONS]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    folder = out / ".dsprep-staging" / "pieces"
    deadline = time.monotonic() + 300
    # the fork server's children, both started (the convert itself completes pieces until they are): a worker killed
    # while the other one is being started takes the fork server down with it, a case of its own
    workers: list[int] = []
    while (
        (len(list(folder.glob("*.json"))) < 2 or len(workers) < 2)
        and proc.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
        workers = [w for child in _children(proc.pid) for w in _children(child)]
    if proc.poll() is not None or len(workers) < 2:
        proc.kill()
        pytest.fail("the convert finished before a worker could be killed; make the input larger")
    os.kill(workers[0], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 12, stderr
    assert stderr.splitlines()[-1].startswith("error: a worker process died"), stderr
    assert "Traceback" not in stderr and list(folder.glob("*.json"))

    rerun = _convert(src, out)
    assert any(line.startswith("resumed: reused ") for line in rerun.stderr.splitlines()), rerun.stderr
    _convert(src, tmp_path / "whole")
    assert _files(out) == _files(tmp_path / "whole")


def test_a_rerun_with_other_options_starts_over(tmp_path: Path) -> None:
    src = tmp_path / "chats.jsonl"
    _corpus(src)
    out = tmp_path / "out"
    assert _start_and_kill(src, out, pieces=1) >= 1
    cmd = [sys.executable, "-m", "dsprep", "convert", str(src), "--out", str(out), *OPTIONS, "--shuffle-seed", "1"]
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=True)
    assert "resumed" not in rerun.stderr
    assert (out / "manifest.json").is_file()


def test_a_convert_stopped_while_publishing_resumes_without_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "chats.jsonl"
    _corpus(src)
    out = tmp_path / "out"
    config = ConvertConfig(inputs=(str(src),), out=out, format="openai", tokenizer="mistral:tekken",
                           template="chatml", pack=1024, workers=1)  # fmt: skip
    publish = Staging.publish

    def stopped(self: Staging, names: list[str]) -> None:  # Ctrl-C after two files were moved into place
        for name in names[:2]:
            os.replace(self.dir / name, self.out / name)
        raise KeyboardInterrupt

    monkeypatch.setattr(Staging, "publish", stopped)
    with pytest.raises(KeyboardInterrupt):
        convert(config)
    monkeypatch.setattr(Staging, "publish", publish)
    published = sorted(p.name for p in out.iterdir() if p.is_file())
    assert len(published) == 2 and "manifest.json" not in published

    notes: list[str] = []
    convert(config, on_note=notes.append)
    assert "replaced 2 files an interrupted run had published before it stopped" in notes
    assert any(n.startswith("resumed: reused ") for n in notes), notes
    _convert(src, tmp_path / "whole")
    assert _files(out) == _files(tmp_path / "whole")


def test_a_complete_output_still_needs_overwrite(tmp_path: Path) -> None:
    src = tmp_path / "chats.jsonl"
    src.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    out = tmp_path / "out"
    config = ConvertConfig(inputs=(str(src),), out=out, format="openai")
    convert(config)
    (out / STAGING).mkdir()  # even beside a stray staging folder: the manifest says the output is complete
    with pytest.raises(OutputError, match="not empty; pass --overwrite"):
        convert(config)


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
def test_a_resumed_run_that_is_stopped_again_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: type[BaseException]
) -> None:
    """A run resumed from an interrupted one keeps the key its pieces belong to, so a third run resumes from the
    pieces of both; SystemExit (how Ray's SIGTERM handler ends a run) keeps them as Ctrl-C does."""
    src = tmp_path / "chats.jsonl"
    _corpus(src)
    out = tmp_path / "out"
    config = ConvertConfig(inputs=(str(src),), out=out, format="openai", tokenizer="mistral:tekken",
                           template="chatml", pack=1024, workers=1)  # fmt: skip
    store = dsprep.pipeline.store_piece
    for _ in range(2):
        monkeypatch.setattr(dsprep.pipeline, "store_piece", _stopping_after(store, 3, stop()))
        with pytest.raises(stop):
            convert(config)
    monkeypatch.setattr(dsprep.pipeline, "store_piece", store)
    notes: list[str] = []
    convert(config, on_note=notes.append)
    reused = [n for n in notes if n.startswith("resumed: reused ")]
    assert reused and reused[0].split()[2] == "6", notes
    _convert(src, tmp_path / "whole")
    assert _files(out) == _files(tmp_path / "whole")
