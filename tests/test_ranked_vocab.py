"""Tokenizer folders whose ``tokenizer.json`` is a tiktoken rank table encode through the fast encoder, exactly.

`RankedVocab.from_tokenizer_json` accepts a byte-level BPE only where tiktoken's merge order provably matches the
Hugging Face tokenizer's, and refuses every file that differs in one of the properties that argument needs. Two
folders are checked end to end against their Hugging Face tokenizer: a copy of the built Tekken folder (a
``Split`` regex, then bytes), and a small tokenizer made here from the first 4,000 Tekken ranks with GPT-2's
``ByteLevel`` regex and a post-processor that adds a BOS token.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from test_fast_bpe import PIECES, _assert_same

from dsprep.encode import EncodeOptions, Encoder
from dsprep.fast_bpe import RankedVocab
from dsprep.templates import load_template
from dsprep.tokenizers import TEKKEN_FILE, _mistral_data, load_tokenizer, tokenizer_folder

SMALL_RANKS = 4000


@pytest.fixture(scope="module")
def tekken_json() -> dict[str, Any]:
    return orjson.loads((tokenizer_folder("mistral:tekken") / "tokenizer.json").read_bytes())


def _generated(seed: int, n: int = 800) -> list[str]:
    rng = random.Random(seed)
    texts = [c * k for c in "=-_ a\n" for k in range(1, 40)]
    texts += ["".join(rng.choice(PIECES) for _ in range(rng.randint(1, 40))) for _ in range(n)]
    return texts


def test_tekken_tokenizer_json_is_mistral_commons_rank_table(tekken_json: dict[str, Any]) -> None:
    vocab = RankedVocab.from_tokenizer_json(tekken_json)
    assert vocab == RankedVocab.read(_mistral_data() / TEKKEN_FILE)


@pytest.mark.parametrize(
    "what",
    ["unchanged", "no_ignore_merges", "normalizer", "metaspace", "trimmed_offsets", "gap_in_ids", "dropout"],
)
def test_files_tiktoken_would_encode_differently_are_refused(tekken_json: dict[str, Any], what: str) -> None:
    data = {**tekken_json, "model": dict(tekken_json["model"])}
    model = data["model"]
    if what == "no_ignore_merges":
        model["ignore_merges"] = False
    elif what == "normalizer":
        data["normalizer"] = {"type": "NFC"}
    elif what == "metaspace":
        data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": False}
    elif what == "trimmed_offsets":
        data["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}
    elif what == "gap_in_ids":
        vocab = dict(model["vocab"])
        token = next(t for t, i in vocab.items() if i == 5000)
        vocab[token] = 500_000
        model["vocab"] = vocab
    elif what == "dropout":
        model["dropout"] = 0.1
    assert (RankedVocab.from_tokenizer_json(data) is None) is (what != "unchanged")


def test_merges_must_be_every_split_in_rank_order(tekken_json: dict[str, Any]) -> None:
    merges = tekken_json["model"]["merges"]
    dropped = {**tekken_json, "model": {**tekken_json["model"], "merges": merges[:1000] + merges[1001:]}}
    assert RankedVocab.from_tokenizer_json(dropped) is None  # tiktoken would merge a pair the tokenizer never does
    i = next(k for k in range(1000, len(merges)) if "".join(merges[k]) != "".join(merges[k + 1]))
    swapped = [*merges[:i], merges[i + 1], merges[i], *merges[i + 2 :]]
    out_of_order = {**tekken_json, "model": {**tekken_json["model"], "merges": swapped}}
    assert RankedVocab.from_tokenizer_json(out_of_order) is None  # the tokenizer would merge in another order


@pytest.fixture(scope="module")
def tekken_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tok") / "tekken-copy"
    shutil.copytree(tokenizer_folder("mistral:tekken"), folder)
    return folder


def test_a_tekken_folder_encodes_fast_and_exactly(tekken_folder: Path) -> None:
    loaded = load_tokenizer(str(tekken_folder))
    assert loaded.fast is not None and loaded.fast.with_specials
    _assert_same(loaded, _generated(3))


def _small_folder(folder: Path) -> Path:
    """A GPT-2-style tokenizer (ByteLevel regex, BOS added by a TemplateProcessing) over the first Tekken ranks."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from dsprep.fast_bpe import _byte_decoder

    tekken = RankedVocab.read(_mistral_data() / TEKKEN_FILE)
    tokens = tekken.tokens[:SMALL_RANKS]
    encode = {b: c for c, b in _byte_decoder().items()}
    text = {t: "".join(encode[b] for b in t) for t in tokens}
    rank = {t: 3 + r for r, t in enumerate(tokens)}
    merges = sorted(
        ((t[:k], t[k:]) for t in tokens for k in range(1, len(t)) if t[:k] in rank and t[k:] in rank),
        key=lambda p: (rank[p[0] + p[1]], rank[p[0]], rank[p[1]]),
    )
    specials = ["<unk>", "<s>", "</s>"]
    data = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": s,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i, s in enumerate(specials)
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": {**{s: i for i, s in enumerate(specials)}, **{text[t]: rank[t] for t in tokens}},
            "merges": [[text[a], text[b]] for a, b in merges],
        },
    }
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)), bos_token="<s>",
                                  eos_token="</s>", unk_token="<unk>")  # fmt: skip
    tok.chat_template = load_template("chatml").text
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _small_folder(tmp_path_factory.mktemp("tok") / "small")


def test_a_gpt2_style_folder_encodes_fast_and_exactly(small_folder: Path) -> None:
    loaded = load_tokenizer(str(small_folder))
    assert loaded.fast is not None
    assert not loaded.fast.with_specials  # its tokenizer adds a BOS: texts that take it stay with the tokenizer
    _assert_same(loaded, _generated(4))


def test_rows_encode_the_same_with_and_without_the_fast_encoder(small_folder: Path) -> None:
    """Chat rows (no specials: fast) and text rows (the tokenizer's BOS: the tokenizer) both as the tokenizer alone."""
    loaded = load_tokenizer(str(small_folder))
    template = load_template("chatml")
    rng = random.Random(9)
    rows: list[dict[str, Any]] = []
    for i in range(60):
        words = lambda: "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 20)))  # noqa: E731
        base = {"id": str(i), "source_file": "x", "source_row": i, "tools": None, "completion_messages": None}
        if i % 2:
            rows.append({**base, "kind": "text", "text": words(), "messages": None})
        else:
            messages = [{"role": "user", "content": words()}, {"role": "assistant", "content": words() + "x"}]
            rows.append({**base, "kind": "conversation", "messages": messages})
    fast = Encoder(loaded, template, EncodeOptions()).encode(rows)
    slow = _encode_without_fast(loaded, template, rows)
    assert len(fast) == len(slow) == len(rows)
    for a, b in zip(fast, slow, strict=True):
        assert not isinstance(a, Exception) and not isinstance(b, Exception), (a, b)
        assert np.array_equal(a[0]["input_ids"], b[0]["input_ids"])
        assert np.array_equal(a[0]["labels"], b[0]["labels"])
    assert any(r["input_ids"][0] == 1 for result in fast for r in result)  # text rows start with the BOS


def _encode_without_fast(loaded: Any, template: Any, rows: list[dict[str, Any]]) -> list[Any]:
    """Every text through the Hugging Face tokenizer."""

    class HuggingFaceOnly(Encoder):
        @property
        def fast(self) -> None:
            return None

    return HuggingFaceOnly(loaded, template, EncodeOptions()).encode(rows)


def test_a_convert_through_the_folder_writes_the_builtins_shards(tekken_folder: Path, tmp_path: Path) -> None:
    from dsprep.config import ConvertConfig
    from dsprep.pipeline import convert
    from paths import FIXTURES

    shards = {}
    for name, tokenizer in (("builtin", "mistral:tekken"), ("folder", str(tekken_folder))):
        out = tmp_path / name
        convert(ConvertConfig(inputs=(str(FIXTURES / "formats" / "openai.jsonl"),), out=out, format="openai",
                              tokenizer=tokenizer, template="chatml", pack=512))  # fmt: skip
        shards[name] = {p.name: p.read_bytes() for p in sorted(out.glob("*.parquet"))}
    assert shards["folder"] and shards["folder"] == shards["builtin"]


def test_a_split_regex_tiktoken_cannot_run_leaves_the_tokenizer(
    small_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dsprep.tokenizers as tokenizers

    vocab = tokenizers._ranked_vocab(small_folder)
    assert vocab is not None
    monkeypatch.setattr(
        tokenizers, "_ranked_vocab", lambda folder, stem=None: RankedVocab("(?<![a-z)", vocab.first_id, vocab.tokens)
    )
    loaded = tokenizers.load_tokenizer.__wrapped__(str(small_folder))
    assert loaded.fast is None
