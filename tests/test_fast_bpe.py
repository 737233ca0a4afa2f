"""The fast Tekken encoder gives the Hugging Face tokenizer's ids, character offsets and token lookups, exactly.

`dsprep.fast_bpe` replaces the Hugging Face tokenizer's encoding for ``mistral:tekken`` wherever dsprep tokenizes,
so it is checked against that tokenizer on every string of the real sample files, on rendered conversations, and on
generated text made of the cases byte-level BPE gets wrong most easily: characters of 2 to 4 bytes split across
tokens, combining marks, every kind of whitespace and line break, digits, and added-token literals (whole, nested,
cut short, back to back).
"""

from __future__ import annotations

import copy
import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dsprep.encode import _token_range
from dsprep.fast_bpe import FEW_CANDIDATES, FastEncoder, FastEncoding
from dsprep.server import ENGINE_ENV
from dsprep.tokenizers import load_tokenizer
from paths import SHARED_DATA

PIECES = [
    "a", "Z", "hello", " world", "  ", "\t", "\n", "\r\n", "\n\n\n", "\u00a0", "\u3000", "\u2028", "7", "2024",
    "é", "ß", "ﬁ", "e\u0301", "\u0915\u094d\u0937", "日本語", "한국어", "Ελληνικά", "עברית", "مرحبا", "🦩", "👩‍👩‍👧",
    "🇫🇷", "𝔘𝔫𝔦", "\U0010fffd", "<s>", "</s>", "[INST]", "[/INST]", "<SPECIAL_12>", "<SPECIAL_999>", "<SPECIAL_",
    "[INST", "<<s>>", "[[INST]]", "<unk>", "```python\n", "{\"k\": [1, 2]}", "<|im_start|>", "...", "—", "'s", "\x00",
]  # fmt: skip
CONVERSATIONS = [
    "sharegpt/llamafactory__glaive_toolcall_en_demo.json",
    "openai/openai-cookbook__drone_training.jsonl",
    "openai/llamafactory__reason_tool_use_demo_50.jsonl",
    "multilingual/llamafactory__glaive_toolcall_zh_demo.json",
    "multilingual/llamafactory__alpaca_zh_demo.json",
]


@pytest.fixture(scope="module", params=["fastokens", "tiktoken"])
def tekken(request: pytest.FixtureRequest) -> Any:
    """mistral:tekken, its fast encoder running on each engine (`dsprep.ordinary`): both must give these ids."""
    loaded = load_tokenizer("mistral:tekken")
    assert loaded.fast is not None, "mistral:tekken must encode with its fast encoder"
    assert loaded.fast.ordinary.wait() == "fastokens", "fastokens is a dependency: it must be the engine"
    if request.param == "fastokens":
        return loaded
    return _on_tiktoken(loaded)


def _on_tiktoken(loaded: Any) -> Any:
    """A copy of `loaded` whose fast encoder runs on tiktoken."""
    ordinary = copy.copy(loaded.fast.ordinary)
    ordinary.fast = None
    forced = copy.copy(loaded)
    fast = loaded.fast
    forced.__dict__["fast"] = FastEncoder(ordinary, fast.added, fast.byte_lengths, with_specials=fast.with_specials)
    assert forced.fast.ordinary.engine == "tiktoken"
    return forced


def _assert_same(loaded: Any, texts: list[str], positions: int | None = None) -> None:
    """ids, offsets and char_to_token (at every position, or at `positions` random ones) agree for every text."""
    rng = random.Random(7)
    references = loaded.tokenizer(texts, add_special_tokens=False, return_attention_mask=False).encodings
    for text, ref in zip(texts, references, strict=True):
        fast = loaded.fast.encode(text)
        assert fast.ids.tolist() == ref.ids, text[:200]
        assert list(zip(fast.starts.tolist(), fast.ends.tolist(), strict=True)) == [tuple(o) for o in ref.offsets]
        where = range(len(text)) if positions is None else [rng.randrange(len(text)) for _ in range(positions)]
        for pos in where if text else ():
            assert fast.char_to_token(pos) == ref.char_to_token(pos), (text[:200], pos)


def test_sentencepiece_has_no_fast_encoder() -> None:
    assert load_tokenizer("mistral:v3").fast is None


def test_generated_text(tekken: Any) -> None:
    rng = random.Random(2026)
    texts = ["", " ", "<s>", "[INST]</s>", *PIECES]
    for _ in range(1500):
        texts.append("".join(rng.choice(PIECES) for _ in range(rng.randint(1, 40))))
    _assert_same(tekken, texts)


def test_texts_with_many_places_an_added_token_could_start(tekken: Any) -> None:
    """Added tokens are found by trying each `<`/`[` in a text, or by the added-token pattern where a text has many
    of them; both ways cut the text where the Hugging Face tokenizer does."""
    rng = random.Random(31)
    texts = ["".join(rng.choice(PIECES) for _ in range(rng.randint(40, 200))) for _ in range(150)]
    first = tekken.fast._first_chars
    counts = [sum(t.count(c) for c in first) for t in texts]
    assert min(counts) <= FEW_CANDIDATES < max(counts), "the texts must take both ways"
    _assert_same(tekken, texts, positions=3)


def test_words_the_merges_must_build(tekken: Any) -> None:
    """Words outside the vocabulary, where the merge order decides the tokens: runs of one character (where a
    leftmost-first and a rank-first merge order could part), and concatenations of 2 to 5 vocabulary tokens."""
    rng = random.Random(5)
    texts = [c * n for c in "=-_*#~.aZ7 \té中😀" for n in range(1, 70)]
    tokens = [
        tekken.fast.ordinary.tiktoken.decode_single_token_bytes(i).decode("utf-8", "replace")
        for i in range(1000, 131072)
    ]
    words = [t for t in tokens if t.isalpha()]
    marks = [t for t in tokens if t and not any(c.isalnum() or c.isspace() or c == "\ufffd" for c in t)]
    for _ in range(4000):
        pool = words if rng.random() < 0.6 else marks
        texts.append("".join(rng.choice(pool) for _ in range(rng.randint(2, 5))))
    _assert_same(tekken, texts, positions=3)


def test_token_ranges_match(tekken: Any) -> None:
    """Label spans map to the same tokens, including spans that start or end inside a split character."""
    rng = random.Random(11)
    for _ in range(300):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 30)))
        ref = tekken.tokenizer([text], add_special_tokens=False).encodings[0]
        fast = tekken.fast.encode(text)
        assert isinstance(fast, FastEncoding)
        for _ in range(20):
            start = rng.randrange(len(text) + 1)
            end = rng.randrange(start, len(text) + 2)
            assert _token_range(fast, start, end, len(text)) == _token_range(ref, start, end, len(text))


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _shared_strings() -> list[str]:
    if not (SHARED_DATA / "SOURCES.md").is_file():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    seen: dict[str, None] = {}
    for path in sorted(SHARED_DATA.rglob("*")):
        if path.suffix == ".json":
            seen.update(dict.fromkeys(_strings(json.loads(path.read_text(encoding="utf-8")))))
        elif path.suffix == ".jsonl":
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    seen.update(dict.fromkeys(_strings(json.loads(line))))
        elif path.suffix in (".md", ".txt", ".csv"):
            seen[path.read_text(encoding="utf-8", errors="replace")] = None
    return [s for s in seen if s]


@pytest.mark.shared_data
def test_every_string_of_the_shared_data(tekken: Any) -> None:
    strings = _shared_strings()
    assert len(strings) > 10_000
    assert any(not s.isascii() for s in strings)
    _assert_same(tekken, strings, positions=8)


@pytest.mark.shared_data
def test_rendered_conversations(tekken: Any, tmp_path: Path) -> None:
    """ChatML renders of the shared conversations (tool calls, Chinese, reasoning), markup next to content."""
    import pyarrow.parquet as pq

    from dsprep.config import ConvertConfig
    from dsprep.errors import TemplateError
    from dsprep.pipeline import convert
    from dsprep.templates import load_template, render, template_messages, template_tools

    files = [SHARED_DATA / f for f in CONVERSATIONS]
    if not all(f.is_file() for f in files):
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    convert(ConvertConfig(inputs=tuple(str(f) for f in files), out=tmp_path / "rows"))
    template = load_template("chatml")
    texts = []
    for part in sorted((tmp_path / "rows").glob("part-*.parquet")):
        for row in pq.read_table(part).to_pylist():
            try:
                texts.append(render(template, template_messages(row["messages"]), tools=template_tools(row["tools"]),
                                    special_tokens=tekken.special_tokens))  # fmt: skip
            except TemplateError:
                continue
    assert len(texts) > 1000
    _assert_same(tekken, texts, positions=64)


@pytest.fixture(params=["fastokens", "tiktoken"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Runs a test with each engine under the fast encoder: tiktoken by hiding fastokens (as where it is missing)."""
    from dsprep.workers import encoder_for

    if request.param == "tiktoken":
        monkeypatch.setitem(sys.modules, "fastokens", None)
    monkeypatch.setenv(ENGINE_ENV, request.param)
    load_tokenizer.cache_clear()
    encoder_for.cache_clear()
    yield request.param
    load_tokenizer.cache_clear()
    encoder_for.cache_clear()


def test_a_text_the_engine_regex_gives_up_on_is_still_encoded(tmp_path: Path, engine: str) -> None:
    """tiktoken's regex gives up on a run of about a million spaces (its backtracking limit), where fastokens does
    not: either way the row gets the ids `apply_chat_template` gives (from the tokenizer itself where tiktoken is the
    engine), and the other rows as before."""
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from dsprep.cli import main
    from dsprep.templates import load_template
    from oracles import reference_ids

    encoder = load_tokenizer("mistral:tekken").fast.ordinary
    assert encoder.engine == "tiktoken"  # nothing built before the run asks for it
    assert encoder.wait() == engine
    long = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x" + " " * 1_000_000 + "y"}]
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    data = tmp_path / "ws.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in (long, short)))
    out = tmp_path / "o"
    args = ["convert", str(data), "-o", str(out), "-t", "mistral:tekken", "--template", "chatml", "-q", "--no-cache"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    ids = pq.read_table(out / "part-00000.parquet", columns=["input_ids"]).column(0).to_pylist()
    tok, template = load_tokenizer("mistral:tekken").tokenizer, load_template("chatml").text
    assert ids == [reference_ids(tok, template, m, None) for m in (long, short)]
