"""A built-in tokenizer taken from its stored facts encodes, renders and records exactly what the loaded one does.

Once ``mistral:tekken``'s fast encoder has been verified, its facts (fingerprint, special tokens, chat template,
added tokens) and each template's conformance results are kept beside its folder, and a process that only encodes
never imports transformers. These tests compare that path with the Hugging Face tokenizer it stands in for.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dsprep.conformance import check_conformance, conformance_for
from dsprep.encode import EncodeOptions, Encoder
from dsprep.templates import load_template
from dsprep.tokenizers import (
    FACTS,
    TokenizerFacts,
    _stored_facts,
    _versions,
    load_tokenizer,
    read_beside,
    tokenizer_folder,
    write_beside,
)
from paths import REPO

ROWS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <s> [INST] 🦩 é"},
     {"role": "assistant", "content": "Hello.\n\nBye."}, {"role": "user", "content": "Again?"},
     {"role": "assistant", "content": "Yes — again."}],
    [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}],
]  # fmt: skip
ENCODE = """
import json, sys
from dsprep.workers import EncodeSpec, encoder_for
from dsprep.pipeline import _encoder
from dsprep.config import ConvertConfig
config = ConvertConfig(inputs=("x",), out="y", tokenizer="mistral:tekken", template="chatml")
encoder, record = _encoder(config)
rows = [{"id": str(i), "kind": "conversation", "tools": None, "source_file": "t", "source_row": i,
         "messages": [dict(m, name=None, tool_calls=None, tool_call_id=None, reasoning=None, train=None, weight=None,
                           extra=None) for m in conv]} for i, conv in enumerate(json.loads(sys.argv[1]))]
out = [[r["input_ids"].tolist(), r["labels"].tolist()] for [r] in encoder.encode(rows)]
print(json.dumps({"rows": out, "record": record, "transformers": "transformers" in sys.modules}))
"""


@pytest.fixture(scope="module")
def verified() -> Path:
    """The built-in folder, with its facts stored (loading it once through the Hugging Face tokenizer if needed)."""
    folder = tokenizer_folder("mistral:tekken")
    if _stored_facts(folder) is None:
        load_tokenizer.cache_clear()
        assert load_tokenizer("mistral:tekken").fast is not None
    load_tokenizer.cache_clear()
    return folder


def test_stored_facts_are_the_tokenizers(verified: Path) -> None:
    loaded = load_tokenizer("mistral:tekken")
    assert loaded.stored is not None
    assert loaded.stored == TokenizerFacts.of(loaded.tokenizer)


def test_a_process_that_only_encodes_never_imports_transformers(verified: Path) -> None:
    run = subprocess.run([sys.executable, "-c", ENCODE, json.dumps(ROWS)], capture_output=True, text=True,
                         cwd=REPO, check=True)  # fmt: skip
    got = json.loads(run.stdout)
    assert got["transformers"] is False
    tok = load_tokenizer("mistral:tekken").tokenizer
    template = load_template("chatml").text
    for conv, (ids, labels) in zip(ROWS, got["rows"], strict=True):
        expected = tok.apply_chat_template(conv, chat_template=template, tokenize=True, return_dict=True)
        assert ids == expected["input_ids"]
        assert any(label != -100 for label in labels)
    record = got["record"]["tokenizer"]
    assert record["fingerprint"] == load_tokenizer("mistral:tekken").facts.fingerprint
    assert (record["class"], record["vocab_size"]) == (type(tok).__name__, len(tok))
    assert (record["bos_token"], record["eos_token"]) == (tok.bos_token, tok.eos_token)


def test_kept_conformance_is_the_checked_one(verified: Path) -> None:
    loaded = load_tokenizer("mistral:tekken")
    for name in ("chatml", "llama3"):
        encoder = Encoder(loaded, load_template(name, loaded.chat_template), EncodeOptions())
        first, kept = conformance_for(encoder), conformance_for(encoder)
        assert first == kept == check_conformance(encoder)


def test_facts_from_other_versions_are_not_used(tmp_path: Path, verified: Path) -> None:
    folder = tmp_path / "tok"
    facts = read_beside(verified, FACTS)
    write_beside(folder, FACTS, facts)
    assert _stored_facts(folder) is not None
    write_beside(folder, FACTS, {**facts, "versions": {**_versions(), "tiktoken": "0.0.0"}})
    assert _stored_facts(folder) is None
    write_beside(folder, FACTS, {**facts, "facts": {"fingerprint": "x"}})
    assert _stored_facts(folder) is None
    (folder.with_name("tok.dsprep") / FACTS).write_text("{not json")
    assert _stored_facts(folder) is None


def test_other_tokenizers_load_as_before() -> None:
    loaded = load_tokenizer("mistral:v3")
    assert loaded.stored is None and loaded.fast is None
    assert loaded.special_tokens["bos_token"] == "<s>"


def test_the_kept_tekken_vocabulary_is_mistral_commons() -> None:
    from dsprep.fast_bpe import RankedVocab
    from dsprep.tokenizers import TEKKEN_FILE, _mistral_data

    read = RankedVocab.read(_mistral_data() / TEKKEN_FILE)
    assert RankedVocab.load(read.dump()) == read
    assert len(read.tokens) == 130_072 and read.first_id == 1000
    with pytest.raises(ValueError, match="not a dumped vocabulary"):
        RankedVocab.load(read.dump()[:-1])
