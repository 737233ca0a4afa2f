"""Crash safety: a killed convert never leaves an output that looks complete, and a rerun gives the same bytes.

Also: disk full, permission denied, an existing output folder and an input that disappears mid-run give one-line
errors with a documented exit code and no manifest; dsprep never modifies its inputs; names derived from input
data never escape the output folder.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from paths import REPO

KILL_FRACTIONS = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9]  # of the finished output's bytes written when the kill lands
ROWS_BYTES = 50 << 20


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dsprep(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("timeout", 600)  # a hung convert fails the test instead of hanging the suite
    return subprocess.run([sys.executable, "-m", "dsprep", *args], capture_output=True, text=True, cwd=REPO, **kwargs)


def _popen(*args: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "dsprep", *args]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _output_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def big_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~50 MB of OpenAI-format JSONL with a bad line now and then (so rejects.jsonl is not empty)."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    with open(path, "w") as f:
        n = 0
        while f.tell() < ROWS_BYTES:
            if n % 997 == 5:
                f.write('{"messages": [bad json\n')
            else:
                words = " ".join(f"{rng.getrandbits(40):x}" for _ in range(rng.randint(5, 60)))
                row = {
                    "messages": [{"role": "user", "content": f"q{n} {words}"}, {"role": "assistant", "content": words}]
                }
                f.write(json.dumps(row) + "\n")
            n += 1
    return path


@pytest.fixture(scope="module")
def reference(big_input: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, bytes], float]:
    """The uninterrupted run's output bytes and how long it took."""
    out = tmp_path_factory.mktemp("ref") / "out"
    start = time.monotonic()
    result = _dsprep(
        "convert", str(big_input), "--out", str(out), "--format", "openai", "--shard-size", "4MB", "--no-cache", "-q"
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    files = _output_bytes(out)
    assert sum(name.startswith("part-") for name in files) >= 2  # several shards, so kills can land between them
    return files, elapsed


def _written(out: Path) -> int:
    """Bytes under the output folder so far (staged and published), whatever its layout."""
    total = 0
    for p in out.rglob("*") if out.exists() else []:
        with contextlib.suppress(FileNotFoundError):  # moved or removed while we looked
            total += p.stat().st_size if p.is_file() else 0
    return total


def _kill_after(proc: subprocess.Popen[bytes], out: Path, threshold: int) -> None:
    """SIGKILL `proc` once `threshold` bytes are under `out` (at once for 0), unless it finishes first."""
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if _written(out) >= threshold:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=60)


def test_sigkill_at_any_point_never_leaves_a_complete_looking_output(
    big_input: Path, reference: tuple[dict[str, bytes], float], tmp_path: Path
) -> None:
    expected, _ = reference
    total = sum(len(b) for b in expected.values())
    before = _sha(big_input)
    out = tmp_path / "out"
    args = [
        "convert",
        str(big_input),
        "--out",
        str(out),
        "--format",
        "openai",
        "--shard-size",
        "4MB",
        "--no-cache",
        "-q",
    ]
    outcomes = []
    for fraction in KILL_FRACTIONS:
        proc = _popen(*args, "--overwrite")
        _kill_after(proc, out, int(total * fraction))
        finished = proc.returncode == 0
        outcomes.append((fraction, proc.returncode))
        if (out / "manifest.json").exists():
            # a manifest is only ever there for a complete output: the one run that beat the kill, or none
            assert _output_bytes(out) == expected, f"killed at {fraction:.0%}: a manifest next to partial output"
            assert _dsprep("verify", str(out)).returncode == 0
        else:
            assert not finished
            verify = _dsprep("verify", str(out))
            assert verify.returncode == 8  # killed before the folder was made, or before its manifest
            assert ("no manifest.json" if out.exists() else "no such folder") in verify.stderr
        rerun = _dsprep(*args, "--overwrite")
        assert rerun.returncode == 0, rerun.stderr
        assert _output_bytes(out) == expected, f"rerun after a kill at {fraction:.0%} differs"
        assert _sha(big_input) == before
    assert sum(code == -signal.SIGKILL for _, code in outcomes) >= 5, outcomes


def test_existing_output_folder_is_refused_and_left_alone(big_input: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-00000.parquet").write_bytes(b"earlier run")
    small = tmp_path / "small.jsonl"
    small.write_bytes(big_input.read_bytes()[:100_000].rsplit(b"\n", 1)[0] + b"\n")
    result = _dsprep("convert", str(small), "--out", str(out), "--format", "openai", "-q")
    assert result.returncode == 6
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "--overwrite" in result.stderr
    assert [p.name for p in out.iterdir()] == ["part-00000.parquet"]
    assert (out / "part-00000.parquet").read_bytes() == b"earlier run"


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))


def test_disk_full_is_an_output_error(big_input: Path, tmp_path: Path) -> None:
    small = tmp_path / "small.jsonl"
    small.write_bytes(big_input.read_bytes()[:3_000_000].rsplit(b"\n", 1)[0] + b"\n")
    before = _sha(small)
    out = tmp_path / "out"
    result = _dsprep("convert", str(small), "--out", str(out), "--format", "openai", "-q", preexec_fn=_limit_file_size)
    assert not (out / "manifest.json").exists()
    assert _sha(small) == before
    assert result.returncode == 6, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_input_disappearing_mid_run_is_an_input_error(
    big_input: Path, reference: tuple[dict[str, bytes], float], tmp_path: Path
) -> None:
    second = tmp_path / "second.jsonl"
    second.write_bytes(big_input.read_bytes()[:100_000].rsplit(b"\n", 1)[0] + b"\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dsprep", "convert", str(big_input), str(second), "--out", str(out)]
    proc = subprocess.Popen([*cmd, "--format", "openai", "-q"], cwd=REPO, stderr=subprocess.PIPE, text=True)
    time.sleep(min(1.5, reference[1] * 0.3))
    if proc.poll() is not None:
        pytest.skip("the convert finished before the second input could be removed")
    second.unlink()
    _, stderr = proc.communicate(timeout=600)
    assert not (out / "manifest.json").exists()
    assert proc.returncode == 3, stderr
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and "second.jsonl" in stderr


@pytest.fixture
def world_dir() -> Path:
    """A folder another user can use (permission tests run as `nobody` when the tests run as root)."""
    folder = Path(tempfile.mkdtemp(prefix="dsprep-perm-"))
    folder.chmod(0o777)
    yield folder
    for root, dirs, _ in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    subprocess.run(["rm", "-rf", str(folder)], check=False)


def _as_unprivileged() -> dict[str, int]:
    return {"user": 65534, "group": 65534} if os.geteuid() == 0 else {}


def _python_usable_by_nobody() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import dsprep"], capture_output=True, cwd=REPO, **_as_unprivileged())
    return probe.returncode == 0


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_permission_denied_output_and_input(world_dir: Path) -> None:
    if os.geteuid() == 0:
        try:
            usable = _python_usable_by_nobody()
        except PermissionError:
            usable = False
        if not usable:
            pytest.skip("running as root, and this Python cannot run as another user; permissions are not enforced")
    data = world_dir / "in.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    data.chmod(0o644)
    locked = world_dir / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    env = {**os.environ, "HOME": str(world_dir)}
    result = _dsprep("convert", str(data), "--out", str(locked / "out"), "-q", env=env, **_as_unprivileged())
    assert result.returncode == 6, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "permission denied" in result.stderr.lower()

    data.chmod(0o000)
    out = world_dir / "out2"
    result = _dsprep("convert", str(data), "--out", str(out), "--format", "openai", "-q", env=env, **_as_unprivileged())
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert not (out / "manifest.json").exists()


def test_names_from_input_data_stay_inside_the_output_folder(tmp_path: Path) -> None:
    """Row ids, file names and rejected raw text that look like paths never create anything outside --out."""
    inputs = tmp_path / "in"
    odd = inputs / "x..%2f..%2fescape" / "a..b"
    odd.mkdir(parents=True)
    rows = [
        {"messages": [{"role": "user", "content": "../../escape"}, {"role": "assistant", "content": "/etc/passwd"}],
         "id": "../../../pwned", "source_file": "../../pwned.parquet", "name": "../part-99999.parquet"},
        {"text": "../../x"},
    ]  # fmt: skip
    (odd / "x..data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{bad ../../json\n")
    out = tmp_path / "work" / "out"
    before = {p for p in tmp_path.rglob("*")}
    result = _dsprep("convert", str(inputs), "--out", str(out), "--format", "openai", "-q")
    assert result.returncode == 0, result.stderr
    created = {p for p in tmp_path.rglob("*")} - before
    assert all(p == out or out in p.parents or p == out.parent for p in created), sorted(map(str, created))
    assert {p.name for p in out.iterdir()} == {"manifest.json", "rejects.jsonl", "part-00000.parquet"}


def test_unwritable_output_folder_is_an_output_error(tmp_path: Path) -> None:
    """Permission denied on the output folder: one line, exit 6 (root ignores file modes, so it gets sysfs instead)."""
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    if os.geteuid() == 0:
        parent = Path("/sys/kernel")
        if not parent.is_dir():
            pytest.skip("no folder here that root cannot write")
    else:
        parent = tmp_path / "locked"
        parent.mkdir()
        parent.chmod(0o555)
    result = _dsprep("convert", str(data), "--out", str(parent / "dsprep-out"), "--format", "openai", "-q")
    assert result.returncode == 6, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "cannot write" in result.stderr
    assert not (parent / "dsprep-out").exists()


def test_a_run_failing_to_write_keeps_its_error_and_whole_reject_lines(tmp_path: Path) -> None:
    """When writing a shard fails on a full disk, closing the rejects file fails too: the shard's error is the one
    reported, and the rejects file kept to look at ends with a whole line."""
    from dsprep.errors import OutputError
    from dsprep.shards import RejectsWriter

    path = tmp_path / "rejects.jsonl"

    def fail_on_a_full_disk() -> None:
        with RejectsWriter(path) as rejects:
            rejects.write_line('{"row": 1}')
            rejects._fh.flush()
            rejects._fh.write(b'{"row": 2, "cut')
            rejects._fh.flush()  # the disk took part of a line
            close = rejects._fh.close

            def full_disk() -> None:
                close()
                raise OSError(errno.ENOSPC, "No space left on device")

            rejects._fh.close = full_disk  # type: ignore[method-assign]
            raise OutputError("out/part-00000.parquet: cannot write: No space left on device")

    with pytest.raises(OutputError, match=r"part-00000\.parquet"):
        fail_on_a_full_disk()
    assert path.read_bytes() == b'{"row": 1}\n'
