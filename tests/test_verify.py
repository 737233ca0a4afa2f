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
]


@pytest.mark.parametrize(("change", "message"), MALFORMED_ROWS, ids=[m for _, m in MALFORMED_ROWS])
def test_malformed_packed_rows_are_named_not_internal_errors(copy: Path, change, message: str) -> None:
    _rewrite(copy, change)
    result = CliRunner().invoke(main, ["verify", str(copy)])
    assert (result.exit_code, result.output) == (8, f"error: {copy / 'part-00000.parquet'}: {message}\n")


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
