"""What inspect shows of the data: control characters escaped in the terminal and the HTML page, file names that are
not UTF-8 in the JSON report, characters split across tokens shown whole, and histogram bins over --max-len."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from dsprep.cli import main
from dsprep.report.stats import histogram, summary
from dsprep.report.terminal import _histogram
from dsprep.report.tokens import token_pieces
from dsprep.tokenizers import load_tokenizer

TOKENIZED = ["-t", "mistral:tekken", "--template", "chatml"]
SEQUENCE = "\x1b]0;pwned\x07\x1b[31m"  # an OSC title, a bell, a colour
HIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # control characters (tab, newline, CR allowed)


def chat(*turns: tuple[str, str], **extra: Any) -> dict[str, Any]:
    return {**extra, "messages": [{"role": role, "content": content} for role, content in turns]}


def hostile(folder: Path) -> Path:
    """A file whose name, roles, tool names and text hold control sequences."""
    tools = [{"type": "function", "function": {"name": "get" + SEQUENCE, "parameters": {}}}]
    call = {"id": "1", "type": "function", "function": {"name": "x" + SEQUENCE, "arguments": "{}"}}
    rows = [
        chat(("user", f"say {SEQUENCE}\x00\x01"), ("assistant", f"ok {SEQUENCE} done")),
        chat((SEQUENCE, "x"), ("assistant", "y")),
        {"tools": tools, "messages": [{"role": "user", "content": "q"},
                                      {"role": "assistant", "content": None, "tool_calls": [call]},
                                      {"role": "tool", "tool_call_id": "1", "content": "r"},
                                      {"role": "assistant", "content": "done"}]},
    ]  # fmt: skip
    folder.mkdir()
    path = folder / f"evil{SEQUENCE}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_terminal_report_escapes_control_characters_from_the_data(tmp_path: Path) -> None:
    path = hostile(tmp_path / "in")
    result = CliRunner().invoke(main, ["inspect", str(path), *TOKENIZED, "--show", "3"])
    assert result.exit_code == 0, result.output
    assert not HIDDEN.search(result.output)
    escaped = SEQUENCE.replace("\x1b", "\\x1b").replace("\x07", "\\x07")
    assert f"evil{escaped}.jsonl" in result.output  # the section rule and every location
    assert f"roles: {escaped}, assistant" in result.output  # no_user_turn's detail: the raw role
    assert f"say {escaped}\\x00\\x01" in result.output  # the example's tokens


def test_the_html_page_holds_no_control_characters(tmp_path: Path) -> None:
    path = hostile(tmp_path / "in")
    page = tmp_path / "r.html"
    result = CliRunner().invoke(main, ["inspect", str(path), *TOKENIZED, "--show", "3", "-q", "--html", str(page)])
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert not HIDDEN.search(text)
    escaped = SEQUENCE.replace("\x1b", "\\x1b").replace("\x07", "\\x07")
    assert f"evil{escaped}.jsonl</h2>" in text
    assert "\\x00" in text and "\\x01" in text


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse names that are not UTF-8")
def test_a_file_name_that_is_not_utf8_is_escaped_in_the_json_report(tmp_path: Path) -> None:
    name = os.fsdecode(b"bad\xff\xfename.jsonl")
    (tmp_path / name).write_text(json.dumps(chat(("user", "q"), ("assistant", "a"))) + "\n")
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / name), "-q", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["options"]["paths"] == [f"{tmp_path}/bad\\xff\\xfename.jsonl"]
    assert report["inputs"][0]["path"] == report["options"]["paths"][0]


def test_characters_split_across_tokens_are_shown_whole() -> None:
    tok = load_tokenizer("mistral:tekken").tokenizer
    text = "a😀b ünï 中文"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert sum(tok.decode([i]) == "\ufffd" for i in ids) >= 4  # the emoji's bytes are tokens of their own
    pieces = token_pieces(tok, ids, [-100, *ids[1:]])
    assert "".join(p for p, _ in pieces) == text
    assert not any("\ufffd" in p for p, _ in pieces)
    assert pieces[0] == ["a", False] and all(trained for _, trained in pieces[1:])


def test_examples_cut_at_400_tokens_say_so(tmp_path: Path) -> None:
    src = tmp_path / "long.jsonl"
    src.write_text(json.dumps(chat(("user", "q"), ("assistant", "word " * 600))) + "\n")
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["inspect", str(src), *TOKENIZED, "--show", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    [example] = json.loads(out.read_text())["examples"]
    assert example["shown_tokens"] == 400 < example["tokens"]
    assert f"… the first 400 of {example['tokens']} tokens shown" in result.output


@pytest.mark.parametrize(
    ("values", "p50", "p90", "p99"),
    [([10, 20, 30, 40, 50, 60], 30, 60, 60), ([1, 2, 3, 4], 2, 4, 4), ([7], 7, 7, 7),
     (list(range(1, 101)), 50, 90, 99), (list(range(1, 11)), 5, 9, 10), ([5, 1, 3], 3, 5, 5)],
)  # fmt: skip
def test_percentiles_are_nearest_rank(values: list[int], p50: int, p90: int, p99: int) -> None:
    """p is the smallest value with at least p% of the values at or below it."""
    got = summary(np.array(values))
    assert (got["p50"], got["p90"], got["p99"]) == (p50, p90, p99)
    ordered = sorted(values)
    for p, v in ((50, p50), (90, p90), (99, p99)):
        assert sum(x <= v for x in values) * 100 >= p * len(values)
        assert all(sum(x <= w for x in values) * 100 < p * len(values) for w in ordered if w < v)


@pytest.mark.parametrize("mark", [600, 512, 755, 756, 64])
def test_histogram_bins_over_max_len_hold_only_rows_over_it(mark: int) -> None:
    """Every bin is wholly at or under `mark` or wholly over it; those over are drawn red, in the terminal too."""
    values = np.array([10, 300, 512, 600, 601, 700, 755, 756, 900])
    hist = histogram(values, mark=mark)
    edges, counts = hist["edges"], hist["counts"]
    over = sum(n for lo, n in zip(edges, counts, strict=False) if lo > mark)
    assert over == int((values > mark).sum())
    printed: list[tuple[str, str | None]] = []

    class Recorder:
        def print(self, text: str, style: str | None = None) -> None:
            printed.append((text, style))

    _histogram(Recorder(), hist)  # type: ignore[arg-type]
    bins = [lo for lo, n in zip(edges, counts, strict=False) if n]
    assert [int(text.split("–")[0]) for text, _ in printed] == bins
    assert [int(text.split("–")[0]) for text, style in printed if style == "red"] == [lo for lo in bins if lo > mark]


def test_packing_nothing_has_no_efficiency(tmp_path: Path) -> None:
    """No row to pack (every row rejected): the packing line says so instead of a 100% efficiency."""
    src = tmp_path / "unanswered.jsonl"
    src.write_text(json.dumps(chat(("user", "a question nobody answers"))) + "\n")
    page = tmp_path / "r.html"
    result = CliRunner().invoke(main, ["inspect", str(src), *TOKENIZED, "--pack", "64", "--html", str(page)])
    assert result.exit_code == 0, result.output
    assert "packing at 64: 0 rows, efficiency n/a (no rows)" in result.output
    assert "efficiency n/a (no rows)" in page.read_text() and "100.00%" not in result.output
