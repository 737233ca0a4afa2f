"""`dsprep inspect` refuses, as usage errors (exit 2), rules and options that would measure nothing: a --fail-on rule
whose metric the report cannot give, an empty rule list, a percentage on a row count, token options without
--tokenizer, and one path for both reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from dsprep.cli import main
from paths import FIXTURES

TOKENIZED = ["-t", "mistral:tekken", "--template", "chatml"]
CHATS = FIXTURES / "formats" / "openai.jsonl"


def inspect(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["inspect", *args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out") / "o"
    result = CliRunner().invoke(main, ["convert", str(CHATS), "--out", str(out), "-q", *TOKENIZED])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--fail-on", "over_max_len>0"], "over_max_len needs --tokenizer and --max-len or --pack"),
     ([*TOKENIZED, "--fail-on", "over_max_len>0"], "over_max_len needs --max-len or --pack"),
     ([*TOKENIZED, "--max-len", "64", "--fail-on", "packing_efficiency<0.5"], "packing_efficiency needs --pack"),
     (["--fail-on", ""], "holds no rule"), (["--fail-on", ",,"], "holds no rule"),
     (["--fail-on", "rejected_rows>50%"], "rejected_rows counts rows; a percentage applies to the shares rejected, "
                                          "duplicates, over_max_len, packing_efficiency"),
     (["--fail-on", "duplicate_rows>5%"], "duplicate_rows counts rows"),
     (["--max-len", "64"], "a length limit needs --tokenizer"),
     (["--overflow", "truncate-right"], "an overflow policy needs --tokenizer"),
     ([*TOKENIZED, "--overflow", "truncate-right"], "an overflow policy needs --max-len or --pack"),
     (["--show", "2"], "showing raw rows token by token needs --tokenizer")],
)  # fmt: skip
def test_rules_and_options_that_measure_nothing_are_usage_errors(args: list[str], message: str) -> None:
    code, output = inspect(str(CHATS), "-q", *args)
    assert code == 2, output
    assert message in " ".join(output.split())


def test_a_rule_over_a_measured_metric_still_reads_it(tmp_path: Path) -> None:
    """The same metrics are given once their options are: the gate reads them (here it passes)."""
    report_path = tmp_path / "r.json"
    code, output = inspect(str(CHATS), "-q", *TOKENIZED, "--pack", "128", "--json", str(report_path),
                           "--fail-on", "over_max_len>50%,packing_efficiency<0.01,duplicates>5%")  # fmt: skip
    assert code == 0, output
    report = json.loads(report_path.read_text())
    tokens = report["tokens"]
    values = {r["metric"]: r["value"] for r in report["gate"]["rules"]}
    assert values == {"over_max_len": tokens["overflow"]["share_over"],
                      "packing_efficiency": tokens["packing"]["efficiency"], "duplicates": 0.0}  # fmt: skip


def test_over_max_len_of_an_output_folder_says_what_it_lacks(output: Path) -> None:
    """An output folder is not measured against --max-len: the rule is refused for that, not for a tokenizer."""
    code, output_text = inspect(str(output), "-q", *TOKENIZED, "--max-len", "100", "--fail-on", "over_max_len>0")
    assert code == 2, output_text
    text = " ".join(output_text.split())
    assert "over_max_len needs raw inputs" in text and "--tokenizer" not in text.split("needs raw inputs")[1]


def test_show_without_a_tokenizer_renders_an_output_folders_rows(output: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "r.json"
    code, text = inspect(str(output), "-q", "--show", "2", "--json", str(report_path))
    assert code == 0, text
    assert len(json.loads(report_path.read_text())["examples"]) == 2


def test_one_path_for_both_reports_is_refused(tmp_path: Path) -> None:
    code, output = inspect(str(CHATS), "-q", "--json", str(tmp_path / "r"), "--html", str(tmp_path / "." / "r"))
    assert code == 2, output
    assert "is also the --json report" in output
    assert not (tmp_path / "r").exists()
