"""A local tokenizer folder that cannot be loaded gives one line naming the file at fault, and exit code 3."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from dsprep.cli import main
from dsprep.tokenizers import load_tokenizer

CHAT = '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tekken")
    load_tokenizer("mistral:tekken").tokenizer.save_pretrained(str(folder))
    load_tokenizer.cache_clear()
    return folder


def _truncate(name: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])

    return damage


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_text(text)


def _keep_only(*names: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        for p in folder.iterdir():
            if p.name not in names:
                p.unlink()

    return damage


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_truncate("tokenizer.json"), "{folder}/tokenizer.json: not valid JSON: "),
        (_write("tokenizer_config.json", "[]"), "{folder}/tokenizer_config.json: expected a JSON object, got list"),
        (_write("tokenizer_config.json", '{"a":'), "{folder}/tokenizer_config.json: not valid JSON: "),
        (_write("special_tokens_map.json", "\xff"), "{folder}/special_tokens_map.json: not valid JSON: "),
        (_keep_only("tokenizer_config.json"),
         "{folder}: not a tokenizer folder: no tokenizer.json, vocab.json, vocab.txt or *.model "
         "(it holds tokenizer_config.json)"),
    ],
)  # fmt: skip
def test_a_broken_tokenizer_folder_names_the_file(
    tokenizer_folder: Path, tmp_path: Path, damage: Callable[[Path], None], message: str
) -> None:
    folder = tmp_path / "tok"
    shutil.copytree(tokenizer_folder, folder)
    damage(folder)
    (tmp_path / "chat.jsonl").write_text(CHAT)
    load_tokenizer.cache_clear()
    result = CliRunner().invoke(
        main, ["convert", str(tmp_path / "chat.jsonl"), "-o", str(tmp_path / "o"), "-t", str(folder), "-q"]
    )
    assert result.exit_code == 3
    (line,) = result.output.splitlines()
    assert line.startswith("error: " + message.format(folder=folder)), line
    assert not (tmp_path / "o").exists()
