"""What convert refuses or keeps safe: inputs inside the output folder, files it did not write, a previous output
under --overwrite, options that would do nothing; and what it reports: each input's accounting when a run stops,
exit codes of every refusal."""

from __future__ import annotations

import ast
import io
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

import dsprep.progress
from dsprep.cli import main
from dsprep.errors import DsprepError, TokenizerError
from dsprep.integrations.axolotl import check_packed_config
from dsprep.integrations.common import local_tokenizer
from dsprep.shards import Staging
from paths import FIXTURES, REPO

CHAT = '{"messages": [{"role": "user", "content": "q%d"}, {"role": "assistant", "content": "a"}]}\n'
TOKENIZED = ["-t", "mistral:tekken", "--template", "chatml"]
DSPREP = Path(sys.executable).with_name("dsprep")


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, ["convert", *args, "--no-cache"])


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def previous(tmp_path: Path) -> Path:
    """A complete dsprep output of the shipped format fixtures."""
    out = tmp_path / "prep"
    assert _run(str(FIXTURES / "formats"), "-o", str(out), "-q").exit_code == 0
    return out


@pytest.mark.parametrize("given", ["{out}", "{out}/part-00000.parquet", "{out}/*.parquet"])
def test_an_input_inside_the_output_folder_is_refused_and_nothing_is_touched(previous: Path, given: str) -> None:
    before = _files(previous)
    result = _run(given.format(out=previous), "-o", str(previous), "--overwrite")
    assert result.exit_code == 6, result.output
    assert "lies in the output folder" in result.output and "write the output to another folder" in result.output
    assert _files(previous) == before


def test_an_output_kept_inside_its_input_folder_is_still_not_read_back(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "chat.jsonl").write_text("".join(CHAT % i for i in range(3)))
    for _ in range(2):
        result = _run(str(inputs), "-o", str(inputs / "out"), "--overwrite")
        assert result.exit_code == 0, result.output
        assert "total: read 3 = kept 3 + rejected 0" in result.output


def test_shards_without_a_dsprep_manifest_are_not_replaced(tmp_path: Path) -> None:
    out = tmp_path / "theirs"
    out.mkdir()
    pq.write_table(pa.table({"instruction": ["a"], "output": ["b"]}), out / "part-00000.parquet")
    before = _files(out)
    result = _run(str(FIXTURES / "formats" / "openai.jsonl"), "-o", str(out), "--overwrite")
    assert result.exit_code == 6
    assert "holds files dsprep did not write (part-00000.parquet)" in result.output
    assert _files(out) == before


def test_an_interrupted_overwrite_leaves_the_previous_output_as_it_was(previous: Path) -> None:
    before = _files(previous)
    staging = Staging(previous, overwrite=True, key="k")
    (staging.pieces / "piece").write_text("work in progress")
    assert _files(previous) == before  # nothing replaced while the run works
    staging.keep_pieces()  # what an interrupted run does
    assert _files(previous) == before
    resumed = Staging(previous, overwrite=True, key="k")
    assert resumed.resumed
    (resumed.dir / "part-00000.parquet").write_bytes(b"new")
    resumed.publish(["part-00000.parquet"])
    assert _files(previous) == {"part-00000.parquet": b"new"}


def test_a_failed_overwrite_leaves_its_rejects_in_place_of_the_previous_output(previous: Path) -> None:
    result = _run(
        str(FIXTURES / "bad" / "invalid_rows.jsonl"), "-o", str(previous), "--overwrite", "--max-rejected", "0"
    )
    assert result.exit_code == 5
    assert sorted(_files(previous)) == ["rejects.jsonl"]


def test_on_error_fail_reports_the_inputs_read_before_the_bad_row(tmp_path: Path) -> None:
    result = _run(
        str(FIXTURES / "formats" / "alpaca.jsonl"), str(FIXTURES / "bad" / "invalid_rows.jsonl"),
        "-o", str(tmp_path / "o"), "--on-error", "fail",
    )  # fmt: skip
    assert result.exit_code == 4
    assert "alpaca.jsonl: read 3 = kept 3 + rejected 0" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--template", "chatml"], "Invalid value for --template: a chat template needs --tokenizer"),
        (["--train-on", "last"], "Invalid value for --train-on: a loss policy needs --tokenizer"),
        (["--allow-template-warnings"], "Invalid value for --allow-template-warnings: a template check to allow needs "
                                        "--tokenizer"),
        ([*TOKENIZED, "--overflow", "truncate-left"], "Invalid value for --overflow: an overflow policy needs "
                                                      "--max-len or --pack"),
        (["--cache-dir", "/nonexistent/cache"], "Invalid value for --cache-dir: the cache is off (--no-cache)"),
        (["--cache-max-size", "1GB"], "Invalid value for --cache-max-size: the cache is off (--no-cache)"),
        (["--on-error", "fail", "--max-rejected", "1%"], "Invalid value for --max-rejected: --on-error fail stops at "
                                                         "the first bad row"),
    ],
)  # fmt: skip
def test_options_that_would_do_nothing_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = _run(str(FIXTURES / "formats" / "openai.jsonl"), "-o", str(tmp_path / "o"), *args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == f"Error: {message}"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("cache_dir", ["o", "o/cache"])
def test_a_cache_folder_in_the_output_folder_is_refused(tmp_path: Path, cache_dir: str) -> None:
    result = CliRunner().invoke(main, [
        "convert", str(FIXTURES / "formats" / "openai.jsonl"), "-o", str(tmp_path / "o"),
        "--cache-dir", str(tmp_path / cache_dir),
    ])  # fmt: skip
    assert result.exit_code == 2
    assert "the cache folder and the output folder cannot lie in one another" in result.output


def test_quiet_prints_no_warning(tmp_path: Path) -> None:
    result = _run(str(FIXTURES / "bad" / "invalid_rows.jsonl"), "-o", str(tmp_path / "o"), "--format", "alpaca", "-q")
    assert result.exit_code == 0
    assert result.output == ""


def test_an_unreadable_input_is_exit_3_with_the_progress_display_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "chat.jsonl").write_text(CHAT % 0)
    (folder / "broken.jsonl").symlink_to(tmp_path / "nowhere")
    screen = io.StringIO()
    monkeypatch.setattr(
        dsprep.progress, "display", lambda quiet: dsprep.progress.Display(Console(file=screen, force_terminal=True))
    )
    result = _run(str(folder), "-o", str(tmp_path / "o"))
    assert result.exit_code == 3, result.output
    assert "broken.jsonl: cannot read: No such file or directory" in result.output


def test_report_lines_go_above_the_live_progress_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    screen = io.StringIO()
    shown = dsprep.progress.Display(Console(file=screen, force_terminal=True, width=80))
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    shown.phase("converting", 10)
    shown.say("chat.jsonl: read 3 = kept 3 + rejected 0")
    shown.stop()
    assert "\x1b[2Kchat.jsonl: read 3 = kept 3 + rejected 0" in screen.getvalue()


def test_verify_with_a_tokenizer_refuses_an_output_made_without_one(previous: Path) -> None:
    result = CliRunner().invoke(main, ["verify", str(previous), "-t", "mistral:tekken"])
    assert result.exit_code == 8
    assert "normalized output, made without a tokenizer: it holds no tokens to match mistral:tekken" in result.output


def test_integration_refusals_carry_documented_exit_codes(tmp_path: Path) -> None:
    with pytest.raises(DsprepError, match="below the shards' packing length") as refused:
        check_packed_config({"sequence_len": 100}, 200)
    assert refused.value.exit_code == 2
    with pytest.raises(DsprepError, match="not a model folder") as missing:
        local_tokenizer(tmp_path / "nothing", "trl")
    assert missing.value.exit_code == TokenizerError.exit_code


def test_no_error_is_raised_without_its_own_exit_code() -> None:
    """Every error dsprep raises is a subclass naming its documented exit code: a bare DsprepError exits 1, the code
    of internal errors."""
    bare = []
    for path in sorted((REPO / "dsprep").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                if isinstance(func, ast.Name) and func.id == DsprepError.__name__:
                    bare.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert bare == []


def test_an_output_folder_name_that_is_not_utf8_is_exit_6(tmp_path: Path) -> None:
    out = tmp_path / os.fsdecode(b"out\xe9")
    result = _run(str(FIXTURES / "formats" / "alpaca.jsonl"), "-o", str(out))
    assert result.exit_code == 6
    assert "out\\xe9: the output folder's name is not UTF-8, which Arrow cannot write to" in result.output
    assert not out.exists()


def test_a_closed_pipe_stops_the_report_not_the_run(tmp_path: Path) -> None:
    out = tmp_path / "o"
    command = f"{DSPREP} convert {FIXTURES / 'formats'} -o {out} --no-cache | head -1"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and done.stderr == ""
    assert (out / "manifest.json").is_file()


def test_shares_keep_their_digits_and_a_doubled_percent_sign_is_refused(tmp_path: Path) -> None:
    bad = str(FIXTURES / "bad" / "invalid_rows.jsonl")
    result = _run(bad, "-o", str(tmp_path / "o"), "--max-rejected", "0.00001")
    assert result.exit_code == 5
    assert "rows rejected (81.82%), over --max-rejected 0.001%;" in result.output
    refused = _run(bad, "-o", str(tmp_path / "p"), "--max-rejected", "5%%")
    assert refused.exit_code == 2 and "'5%%' is not a fraction such as 0.01 or 1%" in refused.output


def test_files_an_input_folder_holds_besides_data_are_told(tmp_path: Path) -> None:
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "chat.jsonl").write_text(CHAT % 0)
    (folder / "notes.md").write_text("notes")
    result = _run(str(folder), "-o", str(tmp_path / "o"))
    assert result.exit_code == 0
    assert f"{folder}: skipped 1 file of unknown type (notes.md)" in result.stderr
    assert _run(str(folder), "-o", str(tmp_path / "q"), "-q").output == ""


def test_characters_the_output_encoding_lacks_print_as_escapes(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONIOENCODING": "latin-1"}
    args = [str(DSPREP), "convert", str(FIXTURES / "formats" / "openai.jsonl"), "-o", str(tmp_path / "o"), "--no-cache"]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "mapping messages\\u2192messages" in done.stdout


@pytest.fixture
def latin1_locale(tmp_path: Path) -> dict[str, str]:
    """The environment of a process in an ISO-8859-1 locale, compiled here (few machines install one)."""
    where = tmp_path / "locales"
    where.mkdir()
    made = subprocess.run(["localedef", "-i", "en_US", "-f", "ISO-8859-1", str(where / "en_US.ISO-8859-1")],
                          capture_output=True)  # fmt: skip
    if made.returncode != 0:
        pytest.skip("localedef cannot compile an ISO-8859-1 locale here")
    return {**os.environ, "LOCPATH": str(where), "LC_ALL": "en_US.ISO-8859-1", "PYTHONIOENCODING": ""}


def test_file_names_are_read_as_utf8_whatever_the_locale(tmp_path: Path, latin1_locale: dict[str, str]) -> None:
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "café.jsonl").write_text(CHAT % 0)
    for name, env in (("latin1", latin1_locale), ("utf8", {**os.environ, "LC_ALL": "C.UTF-8"})):
        args = [str(DSPREP), "convert", "inputs", "-o", name, "--no-cache", "-q"]
        done = subprocess.run(args, capture_output=True, env=env, cwd=tmp_path, timeout=120)
        assert done.returncode == 0, done.stderr
    assert _files(tmp_path / "latin1") == _files(tmp_path / "utf8")
    assert "inputs/café.jsonl" in (tmp_path / "utf8" / "manifest.json").read_text(encoding="utf-8")


def test_a_pipe_given_as_input_is_named_as_such(tmp_path: Path) -> None:
    fifo = tmp_path / "rows.jsonl"
    os.mkfifo(fifo)
    result = _run(str(fifo), "-o", str(tmp_path / "o"))
    assert result.exit_code == 3
    assert result.output == f"error: {fifo}: not a file or folder (a pipe or a device); dsprep reads files\n"


def test_an_input_that_grows_while_it_is_read_fails_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dsprep.pipeline

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(CHAT % i for i in range(3)))
    real = dsprep.pipeline.read_records

    def appending(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        for n, batch in enumerate(real(*args, **kwargs)):  # type: ignore[arg-type]
            yield batch
            if n == 0:
                with data.open("a") as f:
                    f.write(CHAT % 99)

    monkeypatch.setattr(dsprep.pipeline, "read_records", appending)
    cache = tmp_path / "cache"
    result = CliRunner().invoke(main, ["convert", str(data), "-o", str(tmp_path / "o"), "--cache-dir", str(cache)])
    assert result.exit_code == 3
    assert (
        "rows.jsonl: changed while it was read (" in result.output and "run again once it is complete" in result.output
    )
    assert not (tmp_path / "o" / "manifest.json").exists()
    assert not cache.exists() or not any(cache.rglob("manifest.json"))
