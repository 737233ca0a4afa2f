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

    manifest["shards"][0]["sha256"] = file_sha256(path)  # a consistent checksum, so the invariant check must catch it
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
