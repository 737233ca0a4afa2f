"""The command line: help, formats, convert output, exit codes, and errors as one line without a traceback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from dsprep.cli import main, parse_size
from dsprep.specs import shipped_spec_names
from paths import FIXTURES


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


def test_help_lists_commands(cli: CliRunner) -> None:
    result = cli.invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "convert" in result.output and "formats" in result.output


@pytest.mark.parametrize("command", main.list_commands(click.Context(main)))
def test_every_command_has_help(cli: CliRunner, command: str) -> None:
    result = cli.invoke(main, [command, "--help"])
    assert result.exit_code == 0
    found = main.get_command(click.Context(main), command)
    assert found is not None and found.help
    assert "Usage: main " + command in result.output or f"Usage: dsprep {command}" in result.output


def test_convert_help_names_the_options(cli: CliRunner) -> None:
    result = cli.invoke(main, ["convert", "--help"])
    for option in ("--out", "--format", "--on-error", "--max-rejected", "--shard-size", "--overwrite", "--quiet"):
        assert option in result.output


def test_formats_lists_every_shipped_format(cli: CliRunner) -> None:
    result = cli.invoke(main, ["formats"])
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(shipped_spec_names())
    assert any(line.startswith("sharegpt ") and "conversation" in line for line in lines)


def test_convert_prints_format_and_accounting(cli: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli.invoke(main, ["convert", str(FIXTURES / "bad" / "invalid_rows.jsonl"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    src = FIXTURES / "bad" / "invalid_rows.jsonl"
    assert f"{src}: format openai (confidence 62%: 5/8 sampled rows match" in result.output
    assert f"{src}: read 11 = kept 2 + rejected 9 (empty_content 1, invalid_json 1," in result.output
    assert "total: read 11 = kept 2 + rejected 9" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "part-00000.parquet", "rejects.jsonl"]


def _many_inputs(folder: Path, n: int, bad: set[int], same: frozenset[int] = frozenset()) -> list[Path]:
    """`n` one-row chat files (0000.jsonl, ...), each with its own question, except those numbered in `same`, which
    repeat the first file's row; those numbered in `bad` hold an extra invalid line."""
    folder.mkdir()
    chat = '{{"messages": [{{"role": "user", "content": "q{}"}}, {{"role": "assistant", "content": "a"}}]}}\n'
    paths = [folder / f"{i:04d}.jsonl" for i in range(n)]
    for i, path in enumerate(paths):
        path.write_text(chat.format(0 if i in same else i) + ("{oops\n" if i in bad else ""))
    return paths


def test_convert_of_many_inputs_names_the_first_and_those_with_rejects(cli: CliRunner, tmp_path: Path) -> None:
    bad = {3, 25, 40} | set(range(50, 75))
    paths = _many_inputs(tmp_path / "in", 120, bad)
    result = cli.invoke(main, ["convert", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--format", "openai"])
    assert result.exit_code == 0, result.output
    named = [i for i, path in enumerate(paths) if f"{path}: read " in result.output]
    assert named == [*range(20), 25, 40, *range(50, 68)]  # the first 20, then 20 more with rejected rows
    assert "80 more inputs (7 with rejected rows): formats openai 80; read 87 = kept 80 + rejected 7; " \
           "manifest.json lists every input" in result.output  # fmt: skip
    assert "total: read 148 = kept 120 + rejected 28" in result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [r["rows_rejected"] for r in manifest["inputs"]] == [int(i in bad) for i in range(120)]


def test_inspect_of_many_inputs_shows_those_with_something_to_say(cli: CliRunner, tmp_path: Path) -> None:
    paths = _many_inputs(tmp_path / "in", 60, {7, 44}, same=frozenset(range(30, 55)))
    result = cli.invoke(main, ["inspect", str(tmp_path / "in"), "--workers", "1", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # the rich console wraps long lines
    sections = output.split("more inputs not shown")[0].replace(" ", "")
    shown = [i for i, path in enumerate(paths) if f"{path}" in sections]
    assert shown == [7, 44]
    assert "58 more inputs not shown, 0 of them with rejects, findings or duplicates: formats openai 58; rows: read " \
           "58 = kept 58 + rejected 0" in output  # fmt: skip
    report = json.loads((tmp_path / "r.json").read_text())
    # 0000 and 0030-0054 in pairs, and 0044 repeats 0007's invalid line
    assert len(report["inputs"]) == 60 and len(report["overlaps"]) == 26 * 25 // 2 + 1
    assert output.count("overlap: 1 rows of ") == 20
    assert "overlap: 306 more pairs of inputs share rows (306 rows); --json lists every pair" in output


def test_a_run_that_keeps_no_row_warns_and_names_the_rejects(cli: CliRunner, tmp_path: Path) -> None:
    """Every row over --pack: the run succeeds (exit 0, --max-rejected is the gate) but says nothing was kept and
    prints no packing line for zero rows."""
    out = tmp_path / "o"
    args = ["convert", str(FIXTURES / "formats" / "openai.jsonl"), "-o", str(out), "--tokenizer", "mistral:tekken",
            "--template", "chatml", "--pack", "4", "--no-cache"]  # fmt: skip
    result = cli.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stderr == f"warning: no row was kept; see {out / 'rejects.jsonl'} for each row's reason\n"
    assert "packed" not in result.stdout and "kept 0 +" in result.stdout
    kept = cli.invoke(main, [*args[:-3], "--pack", "4096", "--no-cache", "-o", str(tmp_path / "p")])
    assert kept.exit_code == 0 and kept.stderr == "" and "packed " in kept.stdout


@pytest.mark.parametrize("pack", [None, "512"])
def test_a_terminal_sees_reading_then_writing(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pack: str | None
) -> None:
    """On a terminal the progress display follows the bytes read, then the shards' chunks (or pieces) written, so the
    last phase of a large run is not a full bar that stands still."""
    import rich.console

    monkeypatch.setattr(rich.console.Console, "is_terminal", property(lambda _: True))
    args = ["convert", str(FIXTURES / "formats"), "-o", str(tmp_path / "o"), "--tokenizer", "mistral:tekken",
            "--template", "chatml", "--no-cache", *(["--pack", pack] if pack else [])]  # fmt: skip
    result = cli.invoke(main, args)
    assert result.exit_code == 0, result.output
    size = sum(f.stat().st_size for f in (FIXTURES / "formats").iterdir())
    assert "converting" in result.output and f"{size / 1000:.1f}/{size / 1000:.1f} kB" in result.output
    last = result.output.split("writing shards")[-1]
    done = re.search(r"(?<![\d.])(\d+)/(\d+)(?![\d.])", last)
    assert done is not None and done[1] == done[2], last  # every chunk (or piece) written


def test_quiet_prints_nothing(cli: CliRunner, tmp_path: Path) -> None:
    result = cli.invoke(main, ["convert", str(FIXTURES / "formats" / "text.jsonl"), "-o", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 0 and result.output == ""


def test_refuses_a_non_empty_output_folder_unless_overwrite(cli: CliRunner, tmp_path: Path) -> None:
    src = str(FIXTURES / "formats" / "text.jsonl")
    out = tmp_path / "out"
    assert cli.invoke(main, ["convert", src, "-o", str(out), "-q"]).exit_code == 0
    again = cli.invoke(main, ["convert", src, "-o", str(out), "-q"])
    assert again.exit_code == 6
    assert again.stderr == f"error: {out}: output folder is not empty; pass --overwrite to replace its contents\n"
    assert cli.invoke(main, ["convert", src, "-o", str(out), "-q", "--overwrite"]).exit_code == 0
    (out / "notes.txt").write_text("mine")
    foreign = cli.invoke(main, ["convert", src, "-o", str(out), "-q", "--overwrite"])
    assert foreign.exit_code == 6 and "dsprep did not write (notes.txt)" in foreign.stderr
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["missing.jsonl"], 3, "error: missing.jsonl: no such file or folder\n"),
        (["{bad}/invalid_rows.jsonl", "--on-error", "fail"], 4,
         "error: {bad}/invalid_rows.jsonl:2: invalid JSON: unexpected end of data: line 1 column 58 (char 57)\n"),
        (["{bad}/invalid_rows.jsonl", "--max-rejected", "1%"], 5, "error: 9 of 11 rows rejected (81.82%), over"),
        (["{bad}/invalid_rows.jsonl", "--format", "nope"], 3, "error: unknown format 'nope'"),
        (["{bad}/invalid_rows.jsonl", "--max-rejected", "2"], 2, "must lie between 0 and 1"),
        (["{bad}/invalid_rows.jsonl", "--shard-size", "big"], 2, "is not a size such as 256MB"),
    ],
)  # fmt: skip
def test_exit_codes(cli: CliRunner, tmp_path: Path, args: list[str], code: int, message: str) -> None:
    args = [a.replace("{bad}", str(FIXTURES / "bad")) for a in args]
    result = cli.invoke(main, ["convert", *args, "-o", str(tmp_path / "o"), "-q"])
    assert result.exit_code == code
    expected = message.replace("{bad}", str(FIXTURES / "bad"))
    assert result.stderr.startswith(expected) or expected in result.stderr
    assert "Traceback" not in result.output


def test_detection_failure_prints_a_spec_to_save(cli: CliRunner, tmp_path: Path) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"question": "q", "response_j": "good", "response_k": "bad"}) + "\n")
    result = cli.invoke(main, ["convert", str(data), "-o", str(tmp_path / "o")])
    assert result.exit_code == 3
    assert result.stderr.startswith(f"error: {data}: no known format matches")
    assert 'chosen = "response_j"' in result.stderr
    spec = tmp_path / "pairs.toml"
    snippet = result.stderr.split("--format:\n", 1)[1]
    spec.write_text("\n".join(line.strip() for line in snippet.splitlines()))
    saved = cli.invoke(main, ["convert", str(data), "-o", str(tmp_path / "o2"), "--format", str(spec)])
    assert saved.exit_code == 0, saved.output
    assert "read 1 = kept 1 + rejected 0" in saved.output


@pytest.mark.parametrize(
    ("text", "expected"), [("4096", 4096), ("256MB", 256 << 20), ("1g", 1 << 30), ("1.5KiB", 1536)]
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_templates_lists_the_shipped_templates(cli: CliRunner) -> None:
    from dsprep.templates import shipped_template_names

    result = cli.invoke(main, ["templates"])
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.output.strip().splitlines()] == list(shipped_template_names())


def test_tokenized_convert_reports_the_template_checks(cli: CliRunner, tmp_path: Path) -> None:
    args = [
        "convert",
        str(FIXTURES / "formats" / "openai.jsonl"),
        "-o",
        str(tmp_path / "o"),
        "-t",
        "mistral:tekken",
        "--template",
        "chatml",
    ]
    result = cli.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (
        "template chatml: end-of-turn '<|im_end|>\\n' trained, prefix-stable yes; masks: 1 by span, 2 by prefix renders"
        in result.output
    )


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (
            ["-t", "no/such/dir"],
            3,
            "error: no/such/dir: not a tokenizer folder; pass a local folder or one of mistral:tekken, mistral:v3",
        ),
        (
            ["-t", "mistral:v3", "--template", "nope"],
            7,
            "error: unknown template 'nope'; expected 'tokenizer', a .jinja file, or one of:",
        ),
    ],
)
def test_tokenizer_and_template_errors(
    cli: CliRunner, tmp_path: Path, extra: list[str], code: int, message: str
) -> None:
    result = cli.invoke(main, ["convert", str(FIXTURES / "formats" / "text.jsonl"), "-o", str(tmp_path / "o"), *extra])
    assert result.exit_code == code
    assert result.stderr.startswith(message)
