"""`dsprep inspect` with a tokenizer counts rows as `dsprep convert` with the same options does: every row convert
rejects while encoding (no trained token, too long for --max-len/--pack, ...) is rejected in inspect too, per input
and in the totals, with convert's reason, and the gate's `rejected` metrics read those counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dsprep.cli import main

TOKENIZED = ("-t", "mistral:tekken", "--template", "chatml")


def chat(*turns: tuple[str, str]) -> dict[str, Any]:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


def write_inputs(folder: Path) -> list[Path]:
    """A chat file whose rows convert keeps or rejects for several reasons, and a plain-text file."""
    folder.mkdir()
    rows = [
        chat(("user", "q"), ("assistant", "a")),
        chat(("user", "q"), ("assistant", "a"), ("user", "again")),  # kept: trains the first answer
        chat(("system", "s"), ("user", "q")),  # nothing to train: no_trained_tokens
        chat(("user", "q"), ("assistant", "a " * 3000)),  # too long unless cut
        chat(("user", "long question " * 400), ("assistant", "short")),  # cut from the right: nothing trained
        chat(("user", "first " * 300), ("assistant", "one"), ("user", "q"), ("assistant", "two")),  # drop-turns keeps
        chat(("user", "q"), ("assistant", "")),  # rejected by the normalizer
    ]
    lines = [json.dumps(r) for r in rows] + ["{not json"]
    chats = folder / "chats.jsonl"
    chats.write_text("\n".join(lines) + "\n")
    texts = folder / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("short", "word " * 500, "", "more " * 90)))
    return [chats, texts]


def convert_counts(inputs: list[Path], out: Path, options: list[str]) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["convert", *map(str, inputs), "--out", str(out), "-q", *TOKENIZED, *options])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "inputs": [(Path(i["path"]).name, i["rows_read"], i["rows_kept"], i["rows_rejected"], i["rejected_by_reason"])
                   for i in manifest["inputs"]],
        "totals": {k: manifest["totals"][k] for k in ("rows_read", "rows_kept", "rows_rejected")},
    }  # fmt: skip


def inspect_counts(inputs: list[Path], report_path: Path, options: list[str]) -> tuple[dict[str, Any], Any]:
    args = ["inspect", *map(str, inputs), "-q", *TOKENIZED, *options, "--json", str(report_path),
            "--fail-on", "rejected_rows>0,rejected>0"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    report = json.loads(report_path.read_text())
    counts = {
        "inputs": [(Path(i["path"]).name, i["rows"]["read"], i["rows"]["kept"], i["rows"]["rejected"],
                    {k: v["count"] for k, v in i["rejected_by_reason"].items()}) for i in report["inputs"]],
        "totals": {k: report["totals"][k] for k in ("rows_read", "rows_kept", "rows_rejected")},
    }  # fmt: skip
    return counts, (result, report)


@pytest.mark.parametrize(
    "options",
    [["--max-len", "100"], ["--max-len", "100", "--overflow", "truncate-right"],
     ["--max-len", "200", "--overflow", "drop-turns"], ["--max-len", "100", "--overflow", "split"],
     ["--pack", "150"], []],
    ids=["drop", "truncate-right", "drop-turns", "split", "pack", "no-limit"],
)  # fmt: skip
def test_inspect_counts_rows_as_convert_does(tmp_path: Path, options: list[str]) -> None:
    inputs = write_inputs(tmp_path / "in")
    expected = convert_counts(inputs, tmp_path / "out", options)
    got, (result, report) = inspect_counts(inputs, tmp_path / "r.json", options)
    assert got == expected
    rejected = expected["totals"]["rows_rejected"]
    assert rejected >= 3  # the normalizer's two and at least one at encoding
    values = {r["metric"]: r["value"] for r in report["gate"]["rules"]}
    assert values == {"rejected_rows": rejected, "rejected": rejected / expected["totals"]["rows_read"]}
    assert result.exit_code == 11, result.output
    encoded = {k: v["count"] for k, v in report["tokens"]["encode_errors"].items()}
    by_reason: dict[str, int] = {}
    for *_, reasons in expected["inputs"]:
        for reason, n in reasons.items():
            by_reason[reason] = by_reason.get(reason, 0) + n
    assert encoded == {k: n for k, n in by_reason.items() if k not in ("empty_content", "invalid_json")}
