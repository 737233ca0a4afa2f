"""Tokenized conversations from every real sample file equal transformers' own references, row for row.

For each conversation in ../shared/data (ShareGPT, OpenAI, Alpaca, KTO, multilingual, tool calls), with both
built-in tokenizers and several templates plus each tokenizer's own:
- `input_ids` equal `tokenizer.apply_chat_template(messages, tools=..., tokenize=True)` for every row not rejected;
- labels equal the `{% generation %}` mask where the template has those tags, and the prefix-rendering oracle
  wherever the template renders the row prefix-stably; where it does not, every assistant content still lies
  inside the trained tokens;
- every rejected row carries a reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dsprep.config import ConvertConfig
from dsprep.encode import EncodeOptions, Encoder
from dsprep.errors import RowError
from dsprep.pipeline import convert
from dsprep.templates import load_template, template_messages, template_tools
from dsprep.tokenizers import load_tokenizer
from oracles import Renders, prefix_oracle_labels, prefix_renders_are_prefixes

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]

FILES = [
    "sharegpt/fastchat__dummy_conversation.json",
    "sharegpt/llamafactory__glaive_toolcall_en_demo.json",
    "sharegpt/axolotl__conversation.json",
    "sharegpt/torchtune__chat_tiny.json",
    "openai/openai-cookbook__toy_chat_fine_tuning.jsonl",
    "openai/openai-cookbook__drone_training.jsonl",
    "openai/llamafactory__reason_tool_use_demo_50.jsonl",
    "alpaca/llamafactory__alpaca_en_demo.json",
    "alpaca/llamafactory__identity.json",
    "alpaca/torchtune__alpaca_tiny.json",
    "alpaca/axolotl__alpaca.json",
    "kto/llamafactory__kto_en_demo.json",
    "multilingual/llamafactory__alpaca_zh_demo.json",
    "multilingual/llamafactory__glaive_toolcall_zh_demo.json",
]
TEMPLATES = ["tokenizer", "chatml", "mistral_v3", "mistral_tekken", "qwen2_5", "llama3"]
REASONS = {"template_error", "template_not_prefix_stable"}


@pytest.fixture(scope="module")
def conversations(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    from paths import SHARED_DATA

    if not (SHARED_DATA / "SOURCES.md").is_file():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    out = tmp_path_factory.mktemp("normalized")
    convert(ConvertConfig(inputs=tuple(str(SHARED_DATA / f) for f in FILES), out=out))
    import pyarrow.parquet as pq

    rows = [r for p in sorted(Path(out).glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]
    for row in rows:  # a KTO row is a conversation whose last assistant turn is the completion
        if row["kind"] == "kto":
            row.update(kind="conversation", messages=row["messages"] + row["completion_messages"])
    assert {r["kind"] for r in rows} == {"conversation"}
    assert len(rows) > 3500
    return rows


def _trained(messages: list[dict[str, Any]]) -> list[bool]:
    flags = []
    for m in messages:
        if m["train"] is not None:
            flags.append(m["train"])
        elif m["weight"] is not None:
            flags.append(m["weight"] > 0)
        else:
            flags.append(m["role"] == "assistant")
    return flags


@pytest.mark.parametrize("template_name", TEMPLATES)
@pytest.mark.parametrize("tokenizer_name", ["mistral:tekken", "mistral:v3"])
def test_ids_and_labels_match_transformers(conversations, tokenizer_name: str, template_name: str) -> None:
    loaded = load_tokenizer(tokenizer_name)
    tok = loaded.tokenizer
    template = load_template(template_name, loaded.chat_template)
    has_tags = "generation %}" in template.text
    encoder = Encoder(loaded, template, EncodeOptions())
    stats = {"rows": 0, "rejected": 0, "oracle": 0, "generation": 0, "unstable": 0}
    for row, result in zip(conversations, encoder.encode(conversations), strict=True):
        stats["rows"] += 1
        where = f"{row['source_file']}:{row['source_row']}"
        if isinstance(result, RowError):
            assert result.reason in REASONS, (where, result)
            assert result.message
            stats["rejected"] += 1
            continue
        [out] = result
        messages, tools = template_messages(row["messages"]), template_tools(row["tools"])
        renders = Renders(tok, template.text, messages, tools)
        mask = [int(label != -100) for label in out["labels"]]
        if has_tags:  # (before the ids: the mask's call gives them)
            assert mask == renders.generation_mask, where
            stats["generation"] += 1
        assert list(out["input_ids"]) == renders.ids, where
        if prefix_renders_are_prefixes(renders):
            oracle = prefix_oracle_labels(renders, _trained(row["messages"]))
            assert list(out["labels"]) == oracle, where
            stats["oracle"] += 1
        else:
            stats["unstable"] += 1
            trained_text = tok.decode(
                [t for t, label in zip(out["input_ids"], out["labels"], strict=True) if label != -100]
            )
            for m in row["messages"]:
                if m["role"] == "assistant" and m["content"] and tokenizer_name == "mistral:tekken":
                    assert m["content"].strip() in trained_text, where
    print(tokenizer_name, template_name, stats, encoder.method_counts, encoder.skeletons.pasted)
    if template_name in ("chatml", "qwen2_5"):  # content-opaque: most rows come from skeletons (`dsprep.skeleton`)
        assert encoder.skeletons.pasted > 0.5 * stats["rows"]
    assert stats["oracle"] + stats["generation"] > 0.5 * stats["rows"]
    assert stats["rejected"] < 0.2 * stats["rows"]
