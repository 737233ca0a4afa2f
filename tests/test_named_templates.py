"""A tokenizer whose ``chat_template`` is the list of named templates ``tokenizer_config.json`` may hold: dsprep
renders with the one named ``default``, as `apply_chat_template` does, and says so when there is none."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dsprep.cli import main
from dsprep.templates import load_template
from dsprep.tokenizers import fingerprint, load_tokenizer

CHATML = load_template("chatml").text
CONVERSATION = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]


def _folder(tmp_path: Path, name: str, templates: list[dict[str, str]]) -> Path:
    """mistral:tekken saved as a local folder whose tokenizer_config.json lists `templates`."""
    folder = tmp_path / name
    load_tokenizer("mistral:tekken").tokenizer.save_pretrained(str(folder))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = templates
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    load_tokenizer.cache_clear()
    return folder


def test_the_default_of_several_named_templates_renders(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "named", [{"name": "default", "template": CHATML}, {"name": "rag", "template": "X"}])
    hf = load_tokenizer(str(folder)).tokenizer
    assert isinstance(hf.chat_template, dict)
    expected = hf.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
    (tmp_path / "chat.jsonl").write_text(json.dumps({"messages": CONVERSATION}) + "\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["convert", str(tmp_path / "chat.jsonl"), "-o", str(out), "-t", str(folder), "-q"]
    )
    assert result.exit_code == 0, result.output
    (row,) = pq.read_table(next(out.glob("part-*.parquet"))).to_pylist()
    assert row["input_ids"] == list(expected)
    other = _folder(tmp_path, "other", [{"name": "default", "template": CHATML}, {"name": "rag", "template": "Y"}])
    assert fingerprint(load_tokenizer(str(other)).tokenizer) != fingerprint(hf)  # every named template counts


def test_named_templates_without_a_default_are_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "nodefault", [{"name": "rag", "template": CHATML}])
    (tmp_path / "chat.jsonl").write_text(json.dumps({"messages": CONVERSATION}) + "\n")
    result = CliRunner().invoke(
        main, ["convert", str(tmp_path / "chat.jsonl"), "-o", str(tmp_path / "o"), "-t", str(folder), "-q"]
    )
    assert result.exit_code == 7
    assert "none named 'default'" in result.output


@pytest.fixture(autouse=True)
def _fresh_tokenizers() -> None:
    load_tokenizer.cache_clear()
