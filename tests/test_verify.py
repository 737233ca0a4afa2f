"""`dsprep verify` passes a fresh output and names each planted corruption."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dsprep.cli import main
from dsprep.config import ConvertConfig
from dsprep.errors import VerifyError
from dsprep.pipeline import convert
from dsprep.verify import verify_output
from paths import FIXTURES


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "o"
    inputs = (
        str(FIXTURES / "formats" / "openai.jsonl"),
        str(FIXTURES / "formats" / "sharegpt.jsonl"),
        str(FIXTURES / "formats" / "alpaca.jsonl"),
    )
    convert(ConvertConfig(inputs=inputs, out=out, tokenizer="mistral:tekken", template="chatml", pack=512))
    return out


@pytest.fixture
def copy(packed: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(packed, tmp_path / "copy"))


def _rewrite(folder: Path, change, row_group_size: int | None = None) -> None:
    path = folder / "part-00000.parquet"
    rows = pq.read_table(path).to_pylist()
    change(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(path)), path, row_group_size=row_group_size)
    manifest = json.loads((folder / "manifest.json").read_text())
    from dsprep.shards import file_sha256

    # a consistent checksum and row count, so the invariant check must catch it
    manifest["shards"][0].update(sha256=file_sha256(path), rows=len(rows))
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_fresh_output_verifies(packed: Path) -> None:
    manifest = verify_output(packed, tokenizer="mistral:tekken")
    assert manifest["stage"] == "packed"
    result = CliRunner().invoke(main, ["verify", str(packed)])
    assert result.exit_code == 0
    assert result.output.startswith(f"{packed}: ok (packed, 1 shards,")


def test_flipped_byte(copy: Path) -> None:
    path = copy / "part-00000.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(VerifyError, match="checksum mismatch"):
        verify_output(copy)


def test_truncated_and_missing_shards(copy: Path) -> None:
    path = copy / "part-00000.parquet"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(VerifyError, match="checksum mismatch"):
        verify_output(copy)
    path.unlink()
    with pytest.raises(VerifyError, match="shard listed in the manifest is missing"):
        verify_output(copy)


def test_broken_position_ids(copy: Path) -> None:
    def shift(rows):
        rows[0]["position_ids"][rows[0]["seq_lens"][0]] = 7  # the second example no longer restarts at 0

    _rewrite(copy, shift)
    with pytest.raises(VerifyError, match="row 0: position_ids do not restart at the seq_lens boundaries"):
        verify_output(copy)


def test_a_broken_row_in_a_later_row_group_is_named_by_its_row_in_the_shard(copy: Path) -> None:
    """Shards are checked one row group at a time (bounded memory); a row is still named by its place in the shard."""
    table = pq.read_table(copy / "part-00000.parquet")
    last = table.num_rows - 1
    tokens = table.column("num_tokens")[last].as_py()
    assert last >= 1

    def shift(rows):
        rows[last]["position_ids"][-1] = 0

    _rewrite(copy, shift, row_group_size=1)
    assert pq.read_metadata(copy / "part-00000.parquet").num_row_groups == last + 1
    message = f"row {last}: position_ids do not restart at the seq_lens boundaries \\(token {tokens - 1} of the row\\)"
    with pytest.raises(VerifyError, match=message):
        verify_output(copy)


def test_boundary_label(copy: Path) -> None:
    def leak(rows):
        start = rows[0]["seq_lens"][0]
        rows[0]["labels"][start] = rows[0]["input_ids"][start]

    _rewrite(copy, leak)
    with pytest.raises(VerifyError, match="row 0: an example's first label is not -100"):
        verify_output(copy)


def _negative_seq_len(rows):  # the seq_lens still add up to the row's length
    rows[-1]["seq_lens"][-1] += 3
    rows[-1]["seq_lens"].append(-3)
    rows[-1]["example_ids"].append("x")


def _zero_at_the_end(rows):
    rows[-1]["seq_lens"].append(0)
    rows[-1]["example_ids"].append("x")


def _zero_in_the_middle(rows):
    rows[0]["seq_lens"].insert(1, 0)
    rows[0]["example_ids"].insert(1, "ghost")


def _empty_row(rows):
    rows.append({"input_ids": [], "labels": [], "position_ids": [], "seq_lens": [], "example_ids": [], "num_tokens": 0})


def _labels_shifted_left(rows):
    """The classic pre-shift bug: each label moved one token left within its example (the trainer shifts again)."""
    for row in rows:
        labels, start = row["labels"], 0
        for length in row["seq_lens"]:
            labels[start : start + length] = [*labels[start + 1 : start + length], -100]
            start += length


def _set(row: int, column: str, token: int, value: int):
    return lambda rows: rows[row][column].__setitem__(token, value)


def _untrained(row: int, first: int, last: int):
    """Tokens first..last of a row (an example, or the whole row) set to -100."""

    def change(rows):
        rows[row]["labels"][first : last + 1] = [-100] * (last + 1 - first)

    return change


def _id_and_label(row: int, token: int, value: int):
    def change(rows):
        rows[row]["input_ids"][token] = rows[row]["labels"][token] = value

    return change


# (change to the rows of the fixture's shard (2 packed rows: 505 tokens in 2 examples, 337 in 7), message after
# "<shard>: "); each a shard whose checksum and row count match the manifest
MALFORMED_ROWS = [
    (_negative_seq_len, "row 1: seq_lens holds -3; every example has at least 1 token"),
    (_zero_at_the_end, "row 1: seq_lens holds 0; every example has at least 1 token"),
    (_zero_in_the_middle, "row 0: seq_lens holds 0; every example has at least 1 token"),
    (_empty_row, "row 2: an empty packed row (seq_lens lists no example)"),
    (lambda rows: rows[0]["example_ids"].append("x"), "row 0: seq_lens has 2 entries, example_ids 3"),
    (lambda rows: rows[1]["labels"].__setitem__(3, None), "row 1: labels holds a null"),
    (lambda rows: rows[0]["labels"].pop(), "row 0: labels has 504 values, input_ids has 505"),
    (lambda rows: rows[1]["position_ids"].append(0), "row 1: position_ids has 338 values, input_ids has 337"),
    (lambda rows: rows[0].update(num_tokens=506), "row 0: num_tokens says 506, input_ids has 505"),
    # labels are -100 or the input id at their position (row 0 trains from token 142, row 1 from 48)
    (_labels_shifted_left, "row 0: labels[141] is 1060; expected -100 or input_ids[141] (1010)"),
    (_set(1, "labels", 48, 7), "row 1: labels[48] is 7; expected -100 or input_ids[48] (1067)"),
    (_set(1, "labels", 49, -1), "row 1: labels[49] is -1; expected -100 or input_ids[49] (2476)"),
    # each example trains a token after its first
    (
        _untrained(1, 0, 336),
        'row 1: the example at token 0 of the row ("cdec5603ca5dc6f1") has no label but -100 after its first token; '
        "expected one at least (it trains nothing)",
    ),
    (
        _untrained(1, 111, 163),
        'row 1: the example at token 111 of the row ("4b66d1e9de15f784") has no label but -100 after its first '
        "token; expected one at least (it trains nothing)",
    ),
    # token ids lie in 0..vocab_size-1 (mistral:tekken: 131072)
    (
        _set(0, "input_ids", 3, -5),
        "row 0: input_ids[3] is -5; expected a token id from 0 to 131071 (tokenizer.vocab_size is 131072)",
    ),
    (
        _id_and_label(1, 48, 131072),
        "row 1: input_ids[48] is 131072; expected a token id from 0 to 131071 (tokenizer.vocab_size is 131072)",
    ),
]


@pytest.mark.parametrize(("change", "message"), MALFORMED_ROWS, ids=[m for _, m in MALFORMED_ROWS])
def test_malformed_packed_rows_are_named_not_internal_errors(copy: Path, change, message: str) -> None:
    _rewrite(copy, change)
    result = CliRunner().invoke(main, ["verify", str(copy)])
    assert (result.exit_code, result.output) == (8, f"error: {copy / 'part-00000.parquet'}: {message}\n")


def test_token_ids_are_checked_without_a_recorded_vocab_size(copy: Path) -> None:
    """A manifest without `tokenizer.vocab_size`: a negative id is still no token id; a large one cannot be judged."""

    def corrupt(rows):
        rows[1]["input_ids"][48] = rows[1]["labels"][48] = 131072
        rows[0]["input_ids"][3] = -5

    _rewrite(copy, corrupt)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["tokenizer"]["vocab_size"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["verify", str(copy)])
    message = f"{copy / 'part-00000.parquet'}: row 0: input_ids[3] is -5; expected a token id of at least 0"
    assert (result.exit_code, result.output) == (8, f"error: {message}\n")
    _rewrite(copy, lambda rows: rows[0]["input_ids"].__setitem__(3, 18993))
    assert CliRunner().invoke(main, ["verify", str(copy)]).exit_code == 0


def test_a_shard_of_no_rows_is_checked_against_the_packing_counts(copy: Path) -> None:
    """A shard of one empty row group (no packed row): no internal error; the manifest's packed rows differ."""
    _rewrite(copy, lambda rows: rows.clear())
    result = CliRunner().invoke(main, ["verify", str(copy)])
    message = f"{copy / 'manifest.json'}: packing.rows: 2 in the manifest, the shards hold 0 rows"
    assert (result.exit_code, result.output) == (8, f"error: {message}\n")


def test_wrong_tokenizer(copy: Path) -> None:
    with pytest.raises(VerifyError, match="tokenizer mismatch: the shards were tokenized with 'mistral:tekken'"):
        verify_output(copy, tokenizer="mistral:v3")
    result = CliRunner().invoke(main, ["verify", str(copy), "-t", "mistral:v3"])
    assert result.exit_code == 8


def test_no_manifest(copy: Path) -> None:
    (copy / "manifest.json").unlink()
    with pytest.raises(VerifyError, match=r"no manifest\.json; not a complete dsprep output"):
        verify_output(copy)


def test_a_file_or_a_missing_folder_is_named_as_such(copy: Path) -> None:
    with pytest.raises(VerifyError, match=r"part-00000\.parquet: a file, not a dsprep output folder"):
        verify_output(copy / "part-00000.parquet")
    with pytest.raises(VerifyError, match=r"nothing: no such folder, not a dsprep output folder"):
        verify_output(copy / "nothing")
