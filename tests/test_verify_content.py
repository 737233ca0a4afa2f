"""`dsprep verify` checks what tokenized rows hold (token ids, labels, a trained token), and refuses an output that
holds no row a trainer can use — while `dsprep inspect` still reports on it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dsprep.cli import main
from dsprep.config import ConvertConfig
from dsprep.errors import VerifyError
from dsprep.integrations.common import prepared_shards
from dsprep.pipeline import convert
from dsprep.report.cli import inspect_command
from dsprep.shards import file_sha256
from dsprep.tokenizers import load_tokenizer
from paths import FIXTURES

Rows = list[dict[str, Any]]


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every format fixture, tokenized (20 rows: conversations, texts, prompt-completions, preference and KTO)."""
    out = tmp_path_factory.mktemp("tokenized") / "o"
    convert(ConvertConfig(inputs=(str(FIXTURES / "formats"),), out=out, tokenizer="mistral:tekken", template="chatml",
                          workers=1))  # fmt: skip
    return out


def _rewritten(tokenized: Path, tmp_path: Path, change: Callable[[Rows], object]) -> Path:
    """A copy of the output whose shard `change` edited, with a checksum and row count that match, so that only the
    rows' invariants can catch it."""
    folder = Path(shutil.copytree(tokenized, tmp_path / "copy"))
    path = folder / "part-00000.parquet"
    rows = pq.read_table(path).to_pylist()
    change(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(path)), path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"][0].update(sha256=file_sha256(path), rows=len(rows))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _set(row: int, column: str, token: int, value: int) -> Callable[[Rows], None]:
    return lambda rows: rows[row][column].__setitem__(token, value)


def _shifted_left(row: int) -> Callable[[Rows], None]:
    """The classic pre-shift bug: labels moved one token left (the trainer shifts them again)."""
    return lambda rows: rows[row].update(labels=[*rows[row]["labels"][1:], -100])


def _labels(row: int, labels: Callable[[list[int]], list[int] | None]) -> Callable[[Rows], None]:
    return lambda rows: rows[row].update(labels=labels(rows[row]["labels"]))


UNTRAINED = "no label but -100 after the first token; expected one at least (the row trains nothing)"
VOCAB = "expected a token id from 0 to 131071 (tokenizer.vocab_size is 131072)"

# (change to the rows, message after "<shard>: "): row 2 (alpaca) trains from token 48, row 7 (openai) from 142,
# row 13 (prompt-completion) from 5; the text row 18 trains every token, its first too; rows 3-5 and 9-12 are
# preference and KTO rows (no input_ids or labels)
CORRUPTED = [
    (_shifted_left(2), "row 2: labels[47] is 1067; expected -100 or input_ids[47] (1010)"),
    (_set(7, "labels", 142, 7), "row 7: labels[142] is 7; expected -100 or input_ids[142] (1060)"),
    (_set(13, "labels", 5, -1), "row 13: labels[5] is -1; expected -100 or input_ids[5] (15512)"),
    (_labels(6, lambda labels: [-100] * len(labels)), f"row 6: {UNTRAINED}"),
    (_labels(18, lambda labels: [labels[0]] + [-100] * (len(labels) - 1)), f"row 18: {UNTRAINED}"),
    (_set(0, "input_ids", 3, 131072), f"row 0: input_ids[3] is 131072; {VOCAB}"),
    (_set(4, "prompt_input_ids", 0, -3), f"row 4: prompt_input_ids[0] is -3; {VOCAB}"),
    (_set(10, "chosen_input_ids", 2, 131072), f"row 10: chosen_input_ids[2] is 131072; {VOCAB}"),
    (_labels(14, lambda labels: None), "row 14: labels is null, input_ids is not"),
    (_labels(14, lambda labels: labels[:-1]), "row 14: labels has 33 values, input_ids has 34"),
]


@pytest.mark.parametrize(("change", "message"), CORRUPTED, ids=[m for _, m in CORRUPTED])
def test_tokenized_rows_hold_token_ids_and_their_labels(
    tokenized: Path, tmp_path: Path, change: Callable[[Rows], object], message: str
) -> None:
    folder = _rewritten(tokenized, tmp_path, change)
    result = CliRunner().invoke(main, ["verify", str(folder)])
    assert (result.exit_code, result.output) == (8, f"error: {folder / 'part-00000.parquet'}: {message}\n")


def test_the_fresh_tokenized_output_verifies(tokenized: Path) -> None:
    result = CliRunner().invoke(main, ["verify", str(tokenized), "-t", "mistral:tekken"])
    assert (result.exit_code, result.output) == (0, f"{tokenized}: ok (tokenized, 1 shards, 20 rows)\n")


@pytest.mark.parametrize("pack", [None, 4])
def test_an_output_that_kept_no_row_is_refused_but_inspected(tmp_path: Path, pack: int | None) -> None:
    """Every row over --pack 4 (or an empty input): convert succeeds (--max-rejected is its gate), but there is
    nothing to train on. inspect reports the output as it is."""
    source = FIXTURES / "formats" / "openai.jsonl" if pack else FIXTURES / "bad" / "empty.jsonl"
    out = tmp_path / "o"
    convert(ConvertConfig(inputs=(str(source),), out=out, tokenizer="mistral:tekken", template="chatml", pack=pack,
                          workers=1))  # fmt: skip
    why = f"3 rejected: see {out / 'rejects.jsonl'} for each row's reason" if pack else "0 rejected"
    result = CliRunner().invoke(main, ["verify", str(out)])
    assert (result.exit_code, result.output) == (
        8,
        f"error: {out}: holds no rows a trainer can use (0 rows kept, {why})\n",
    )
    with pytest.raises(VerifyError, match="holds no rows a trainer can use"):
        prepared_shards(out, load_tokenizer("mistral:tekken").tokenizer)
    assert CliRunner().invoke(inspect_command, [str(out)]).exit_code == 0


def test_a_recipe_whose_train_split_kept_no_row_is_refused(tmp_path: Path) -> None:
    """Every row over max_len: the train split is empty (as is eval, which a recipe without eval leaves empty)."""
    recipe = tmp_path / "prep.yaml"
    recipe.write_text(f"sources:\n  - path: {FIXTURES / 'formats' / 'openai.jsonl'}\ntokenizer: mistral:tekken\n"
                      "template: chatml\nmax_len: 4\n")  # fmt: skip
    out = tmp_path / "o"
    assert CliRunner().invoke(main, ["convert", "--recipe", str(recipe), "--out", str(out), "-q"]).exit_code == 0
    result = CliRunner().invoke(main, ["verify", str(out)])
    message = f"{out}: holds no rows a trainer can use (its train split kept no row: see {out / 'rejects.jsonl'} for "
    assert (result.exit_code, result.output) == (8, f"error: {message}each row's reason)\n")
    assert CliRunner().invoke(inspect_command, [str(out)]).exit_code == 0
