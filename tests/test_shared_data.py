"""Every real sample file in ../shared/data, converted with `--format auto`, checked against its raw contents.

One test per data file (meta/ and tokenizers/ hold no training rows). Each test asserts the detected format and
kind, the row count SOURCES.md states, the row accounting, and at least two of the quirks SOURCES.md names for that
file, with the expected values computed from the raw file in the test itself rather than copied from dsprep's output.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dsprep.errors import FormatDetectionError
from dsprep.specs import load_spec, shipped_spec_names

pytestmark = pytest.mark.shared_data

ASSISTANT = "\n\nAssistant:"
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "gpt": "assistant",
    "function_call": "assistant",
    "observation": "tool",
}
STACK_EXCHANGE_SPEC = """\
description = "stack-exchange-paired: question with a preferred (j) and a worse (k) answer"
kind = "preference"

[fields]
prompt = "question"
chosen = "response_j"
rejected = "response_k"
"""


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _load_jsonl(path: Path) -> list[dict[str, Any]]:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    # split on "\n" only: str.splitlines() would also break on form feeds and U+2028 inside a record
    return [json.loads(line) for line in data.decode("utf-8").split("\n") if line.strip()]


def _check(conv: Any, fmt: str, kind: str, rows_read: int, rejected: int = 0) -> dict[int, dict[str, Any]]:
    """Format, kind and row accounting of a single-input convert; returns the kept rows by source_row."""
    info = conv.manifest["inputs"][0]
    assert len(conv.manifest["inputs"]) == 1
    assert info["format"] == fmt
    spec = load_spec(fmt if fmt in shipped_spec_names() else info["format_origin"])
    assert spec.kind == kind
    assert info["rows_read"] == rows_read
    assert info["rows_rejected"] == rejected
    assert info["rows_read"] == info["rows_kept"] + info["rows_rejected"]
    assert len(conv.rows) == info["rows_kept"]
    assert len(conv.rejects) == info["rows_rejected"]
    assert sum(info["rejected_by_reason"].values()) == rejected
    assert info["kinds"] == ({kind: info["rows_kept"]} if info["rows_kept"] else {})
    assert all(row["kind"] == kind for row in conv.rows)
    by_row = {row["source_row"]: row for row in conv.rows}
    assert len(by_row) == len(conv.rows), "source_row must be unique within one input"
    assert len({row["id"] for row in conv.rows}) == len(conv.rows), "ids must be unique, even for duplicate rows"
    return by_row


def _repeats(keys: list[Any]) -> int:
    """How many items equal an earlier item (exact duplicates beyond the first)."""
    seen: set[str] = set()
    n = 0
    for key in keys:
        text = json.dumps(key, sort_keys=True, ensure_ascii=False)
        n += text in seen
        seen.add(text)
    return n


def _payload(row: dict[str, Any]) -> dict[str, Any]:
    """A normalized row without its provenance columns (which differ even between duplicate input rows)."""
    return {k: v for k, v in row.items() if k not in ("id", "source_row", "source_file")}


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _roles(messages: list[dict[str, Any]] | None) -> list[str]:
    return [m["role"] for m in messages or []]


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _non_bmp(text: str) -> int:
    return sum(ord(c) > 0xFFFF for c in text)


def _alpaca_user(rec: dict[str, Any]) -> str:
    return rec["instruction"] + "\n" + rec["input"] if rec["input"] else rec["instruction"]


def _check_alpaca(raw: list[dict[str, Any]], rows: dict[int, dict[str, Any]]) -> None:
    """Every Alpaca row is exactly [user: instruction (+ "\\n" + input), assistant: output], nothing stripped."""
    for i, rec in enumerate(raw):
        messages = rows[i]["messages"]
        assert _roles(messages) == ["user", "assistant"], i
        assert messages[0]["content"] == _alpaca_user(rec), i
        assert messages[1]["content"] == rec["output"], i
        assert rows[i]["tools"] is None


def _check_glaive(raw: list[dict[str, Any]], rows: dict[int, dict[str, Any]]) -> Counter[str]:
    """Compare LLaMA-Factory glaive rows turn by turn; returns counts of calls, observations and empty tool lists."""
    counts: Counter[str] = Counter()
    for i, rec in enumerate(raw):
        row = rows[i]
        turns = rec["conversations"]
        assert _roles(row["messages"]) == [SHAREGPT_ROLES[t["from"]] for t in turns], i
        for turn, msg in zip(turns, row["messages"], strict=True):
            if turn["from"] == "function_call":
                call = json.loads(turn["value"])
                assert isinstance(call["arguments"], dict)  # an object inside the JSON string, not a string
                assert msg["content"] is None
                [tool_call] = msg["tool_calls"]
                assert tool_call["name"] == call["name"]
                assert json.loads(tool_call["arguments"]) == call["arguments"]
                counts["tool_calls"] += 1
            else:
                assert msg["tool_calls"] is None
                assert msg["content"] == turn["value"]
                counts["tool_messages"] += msg["role"] == "tool"
        assert isinstance(rec["tools"], str)  # JSON text, not a list
        raw_tools = json.loads(rec["tools"])
        if raw_tools:
            assert all("type" not in t for t in raw_tools)  # no OpenAI wrapper in the input...
            # ...but the normalized tools carry it
            assert json.loads(row["tools"]) == [{"type": "function", "function": t} for t in raw_tools], i
        else:
            assert row["tools"] is None, i
            counts["empty_tools"] += 1
        assert row["extra"] is None
    return counts


# ----------------------------------------------------------------------------------------------------------------
# coverage of the data folder


TESTED_FILES = {
    "sharegpt/llamafactory__glaive_toolcall_en_demo.json",
    "sharegpt/fastchat__dummy_conversation.json",
    "sharegpt/axolotl__conversation.missingturns.json",
    "sharegpt/axolotl__conversation.json",
    "sharegpt/torchtune__chat_tiny.json",
    "alpaca/llamafactory__alpaca_en_demo.json",
    "alpaca/llamafactory__identity.json",
    "alpaca/torchtune__alpaca_tiny.json",
    "alpaca/axolotl__alpaca.json",
    "openai/openai-cookbook__toy_chat_fine_tuning.jsonl",
    "openai/openai-cookbook__drone_training.jsonl",
    "openai/llamafactory__reason_tool_use_demo_50.jsonl",
    "text/llamafactory__c4_demo.jsonl",
    "text/llamafactory__wiki_demo.txt",
    "text/mlx-examples__lora_wikisql_train.jsonl",
    "prompt_completion/mlx-examples__wwdc25_train.jsonl",
    "prompt_completion/mlx-examples__wwdc25_valid.jsonl",
    "preference/llamafactory__dpo_en_demo.json",
    "preference/llamafactory__v1_dpo_demo.jsonl",
    "preference/hh-rlhf__harmless-base_test.jsonl.gz",
    "preference/torchtune__stack_exchange_paired_tiny.json",
    "preference/torchtune__hh_rlhf_tiny.json",
    "kto/llamafactory__kto_en_demo.json",
    "multilingual/llamafactory__alpaca_zh_demo.json",
    "multilingual/llamafactory__glaive_toolcall_zh_demo.json",
    "multilingual/llamafactory__dpo_zh_demo.json",
}


def test_every_data_file_has_a_test(shared_data: Path) -> None:
    present = {
        p.relative_to(shared_data).as_posix()
        for p in shared_data.rglob("*")
        if p.is_file() and p.name != "SOURCES.md" and p.relative_to(shared_data).parts[0] not in ("meta", "tokenizers")
    }
    assert present == TESTED_FILES


# ----------------------------------------------------------------------------------------------------------------
# sharegpt/


def test_glaive_toolcall_en(shared_data: Path, run_convert) -> None:
    path = shared_data / "sharegpt/llamafactory__glaive_toolcall_en_demo.json"
    raw = _load_json(path)
    rows = _check(run_convert(path), "sharegpt", "conversation", 300)
    counts = _check_glaive(raw, rows)
    assert counts == {"tool_calls": 211, "tool_messages": 211, "empty_tools": 109}
    # role totals from SOURCES.md: human 746, gpt 746 (+ 211 function_call turns, also assistant)
    roles = Counter(r for row in rows.values() for r in _roles(row["messages"]))
    assert roles == {"user": 746, "assistant": 746 + 211, "tool": 211}
    # LLaMA-Factory's rule: user/tool turns at even indices, assistant turns at odd ones; human first, gpt last
    for row in rows.values():
        assert all((m["role"] == "assistant") == (j % 2 == 1) for j, m in enumerate(row["messages"]))
        assert row["messages"][-1]["role"] == "assistant"
        assert row["messages"][-1]["tool_calls"] is None
    # 35 exact duplicates are kept, not dropped
    assert _repeats(raw) == 35
    assert _repeats([_payload(rows[i]) for i in range(len(raw))]) == 35


def test_fastchat_dummy_conversation(shared_data: Path, run_convert) -> None:
    path = shared_data / "sharegpt/fastchat__dummy_conversation.json"
    raw = _load_json(path)
    rows = _check(run_convert(path), "sharegpt", "conversation", 500)
    for i, rec in enumerate(raw):
        row = rows[i]
        # the row's `id` is not a conversation field: it is kept in extra, verbatim
        assert json.loads(row["extra"]) == {"id": rec["id"]}
        assert rec["id"].startswith("identity_")
        # only human/gpt, strictly alternating, ending with gpt
        messages = row["messages"]
        assert 2 <= len(messages) <= 6
        assert _roles(messages) == ["user", "assistant"] * (len(messages) // 2)
        assert [m["content"] for m in messages] == [t["value"] for t in rec["conversations"]]
        assert all(m["content"].isascii() for m in messages)
        assert row["tools"] is None


def test_axolotl_conversation_missingturns(shared_data: Path, run_convert) -> None:
    path = shared_data / "sharegpt/axolotl__conversation.missingturns.json"
    raw = _load_json(path)
    assert isinstance(raw, dict)  # a single top-level object, read as one row
    assert raw["conversations"][1] == {"from": "gpt", "value": ""}
    conv = run_convert(path)
    _check(conv, "sharegpt", "conversation", 1, rejected=1)
    assert conv.manifest["inputs"][0]["rejected_by_reason"] == {"empty_content": 1}
    [reject] = conv.rejects
    assert reject["source_row"] == 0
    assert reject["location"].endswith("[0]")
    assert reject["reason"] == "empty_content"
    assert reject["field"] == "conversations[1].value"
    assert json.loads(reject["raw"]) == raw


def test_axolotl_conversation(shared_data: Path, run_convert) -> None:
    path = shared_data / "sharegpt/axolotl__conversation.json"
    raw = _load_json(path)
    assert isinstance(raw, dict)  # a single top-level object, not an array
    rows = _check(run_convert(path), "sharegpt", "conversation", 1)
    messages = rows[0]["messages"]
    assert len(messages) == 12
    assert _roles(messages) == ["user", "assistant"] * 6
    assert [m["content"] for m in messages] == [t["value"] for t in raw["conversations"]]
    # long markdown and code answers, about 8.7K chars in all, kept whole
    total = sum(len(m["content"]) for m in messages)
    assert total == sum(len(t["value"]) for t in raw["conversations"])
    assert 8_000 < total < 9_500
    assert any("```" in m["content"] for m in messages if m["role"] == "assistant")
    assert rows[0]["extra"] is None


def test_torchtune_chat_tiny(shared_data: Path, run_convert) -> None:
    path = shared_data / "sharegpt/torchtune__chat_tiny.json"
    raw = _load_json(path)
    rows = _check(run_convert(path), "sharegpt", "conversation", 1)
    turns = raw[0]["conversations"]
    assert turns[0]["from"] == "system"
    # the system turn inside `conversations` becomes the first (system) message, then human/gpt twice
    messages = rows[0]["messages"]
    assert _roles(messages) == ["system", "user", "assistant", "user", "assistant"]
    assert [m["content"] for m in messages] == [t["value"] for t in turns]


# ----------------------------------------------------------------------------------------------------------------
# alpaca/


def test_alpaca_en_demo(shared_data: Path, run_convert) -> None:
    path = shared_data / "alpaca/llamafactory__alpaca_en_demo.json"
    raw = _load_json(path)
    rows = _check(run_convert(path), "alpaca", "conversation", 999)
    _check_alpaca(raw, rows)
    # `input` is "" in 587 rows: the user turn is then the bare instruction, with no trailing newline
    empty_input = [i for i, rec in enumerate(raw) if rec["input"] == ""]
    assert len(empty_input) == 587
    assert all(rows[i]["messages"][0]["content"] == raw[i]["instruction"] for i in empty_input)
    assert all(row["extra"] is None for row in rows.values())
    # 14 exact duplicates are kept
    assert _repeats(raw) == 14
    assert _repeats([_payload(rows[i]) for i in range(len(raw))]) == 14
    # 4 rows carry emoji outside the BMP, which survive intact
    with_emoji = [i for i, row in rows.items() if any(_non_bmp(m["content"]) for m in row["messages"])]
    assert len(with_emoji) == 4
    assert with_emoji == [i for i, rec in enumerate(raw) if _non_bmp(rec["instruction"] + rec["input"] + rec["output"])]


def test_alpaca_identity(shared_data: Path, run_convert) -> None:
    path = shared_data / "alpaca/llamafactory__identity.json"
    raw = _load_json(path)
    rows = _check(run_convert(path), "alpaca", "conversation", 91)
    _check_alpaca(raw, rows)
    # `input` is always "", so the user turn is exactly the instruction
    assert all(rec["input"] == "" for rec in raw)
    assert all(rows[i]["messages"][0]["content"] == rec["instruction"] for i, rec in enumerate(raw))
    # 85 outputs hold {{name}} / {{author}} placeholders, kept verbatim (not rendered as Jinja)
    placeholder = [
        i
        for i, row in rows.items()
        if "{{name}}" in row["messages"][1]["content"] or "{{author}}" in row["messages"][1]["content"]
    ]
    assert len(placeholder) == 85
    assert all(rows[i]["messages"][1]["content"] == raw[i]["output"] for i in placeholder)
    # English and Chinese rows are mixed
    cjk = [i for i, row in rows.items() if any("\u4e00" <= c <= "\u9fff" for c in row["messages"][0]["content"])]
    assert 0 < len(cjk) < len(raw)
    assert cjk == [i for i, rec in enumerate(raw) if any("\u4e00" <= c <= "\u9fff" for c in rec["instruction"])]


def test_torchtune_alpaca_tiny(shared_data: Path, run_convert) -> None:
    path = shared_data / "alpaca/torchtune__alpaca_tiny.json"
    raw = _load_json(path)
    rows = _check(run_convert(path), "alpaca", "conversation", 100)
    _check_alpaca(raw, rows)
    assert sum(rec["input"] == "" for rec in raw) == 54
    for i, rec in enumerate(raw):
        row = rows[i]
        # the pre-rendered `text` (which includes the output) is kept in extra, never trained on as a message
        assert "### Response:" in rec["text"]
        assert rec["output"] in rec["text"]
        assert json.loads(row["extra"]) == {"text": rec["text"]}
        assert all("### Response:" not in m["content"] for m in row["messages"])
        assert all(m["content"] != rec["text"] for m in row["messages"])


def test_axolotl_alpaca(shared_data: Path, run_convert) -> None:
    path = shared_data / "alpaca/axolotl__alpaca.json"
    raw = _load_json(path)
    rows = _check(run_convert(path), "alpaca", "conversation", 2)
    _check_alpaca(raw, rows)
    # all three fields are non-empty, so the user turn is instruction + "\n" + input
    for i, rec in enumerate(raw):
        assert all(rec[k] for k in ("instruction", "input", "output"))
        assert rows[i]["messages"][0]["content"] == f"{rec['instruction']}\n{rec['input']}"
        assert rows[i]["extra"] is None


# ----------------------------------------------------------------------------------------------------------------
# openai/


def test_cookbook_toy_chat(shared_data: Path, run_convert) -> None:
    path = shared_data / "openai/openai-cookbook__toy_chat_fine_tuning.jsonl"
    raw = _load_jsonl(path)
    rows = _check(run_convert(path), "openai", "conversation", 5)
    for i, rec in enumerate(raw):
        assert _roles(rows[i]["messages"]) == [m["role"] for m in rec["messages"]]
        assert [m["content"] for m in rows[i]["messages"]] == [m["content"] for m in rec["messages"]]
    # row 1 has 9 turns
    assert len(rows[1]["messages"]) == 9
    # row 2 has no system message
    assert "system" not in _roles(rows[2]["messages"])
    assert _roles(rows[2]["messages"])[0] == "user"
    # row 3 is system + assistant with no user turn, and it is still kept
    assert _roles(rows[3]["messages"]) == ["system", "assistant"]
    # row 4 has a 26,000-char assistant message, kept whole
    raw_long = raw[4]["messages"][-1]["content"]
    assert len(raw_long) == 26_000
    long_message = rows[4]["messages"][-1]
    assert long_message["role"] == "assistant"
    assert len(long_message["content"]) == len(raw_long)
    assert long_message["content"] == raw_long
    assert long_message["content"].startswith("Eat a banana!")


def test_cookbook_drone_training(shared_data: Path, run_convert) -> None:
    path = shared_data / "openai/openai-cookbook__drone_training.jsonl"
    raw = _load_jsonl(path)
    rows = _check(run_convert(path), "openai", "conversation", 103)
    for i, rec in enumerate(raw):
        row = rows[i]
        assert _roles(row["messages"]) == ["system", "user", "assistant"]
        raw_assistant = rec["messages"][2]
        assert "content" not in raw_assistant
        assistant = row["messages"][2]
        # no content key at all: content is null, the turn holds only its tool calls
        assert assistant["content"] is None
        assert len(assistant["tool_calls"]) == len(raw_assistant["tool_calls"]) >= 1
        for call, raw_call in zip(assistant["tool_calls"], raw_assistant["tool_calls"], strict=True):
            assert raw_call["id"] == "call_id"
            assert call["id"] == "call_id"
            assert call["name"] == raw_call["function"]["name"]
            assert isinstance(raw_call["function"]["arguments"], str)
            assert json.loads(call["arguments"]) == json.loads(raw_call["function"]["arguments"])
        # `parallel_tool_calls` is not a canonical column: kept in extra
        assert rec["parallel_tool_calls"] is False
        assert json.loads(row["extra"]) == {"parallel_tool_calls": False}
        # tools: a real list of 16 wrapped function schemas, passed through unchanged
        tools = json.loads(row["tools"])
        assert len(tools) == 16
        assert tools == rec["tools"]
        assert all(t["type"] == "function" for t in tools)
    # there are no tool result messages in this file
    assert not any(m["role"] == "tool" for row in rows.values() for m in row["messages"])


def test_reason_tool_use_demo(shared_data: Path, run_convert) -> None:
    path = shared_data / "openai/llamafactory__reason_tool_use_demo_50.jsonl"
    raw = _load_jsonl(path)
    rows = _check(run_convert(path), "openai", "conversation", 50)
    calls = reasoning = no_tools = 0
    for i, rec in enumerate(raw):
        row = rows[i]
        assert _roles(row["messages"]) == [m["role"] for m in rec["messages"]]
        for raw_msg, msg in zip(rec["messages"], row["messages"], strict=True):
            parts = raw_msg["content"]
            texts = [p["value"] for p in parts if p["type"] == "text"]
            thoughts = [p["value"] for p in parts if p["type"] == "reasoning"]
            raw_calls = [json.loads(p["value"]) for p in parts if p["type"] == "tool_call"]
            # text parts (keyed `value`) become content; reasoning parts go to `reasoning`, not into content
            assert msg["content"] == ("".join(texts) if texts else None)
            assert msg["reasoning"] == ("".join(thoughts) if thoughts else None)
            reasoning += bool(thoughts)
            # each tool_call part becomes one tool call with the same name and arguments
            got = msg["tool_calls"] or []
            assert [c["name"] for c in got] == [c["name"] for c in raw_calls]
            assert [json.loads(c["arguments"]) for c in got] == [c["arguments"] for c in raw_calls]
            calls += len(raw_calls)
        # tools arrive as a JSON string and come out as the same list (already wrapped; "type": "dict" kept)
        assert isinstance(rec["tools"], str)
        raw_tools = json.loads(rec["tools"])
        assert (json.loads(row["tools"]) if row["tools"] is not None else []) == raw_tools
        no_tools += not raw_tools
    # the few rows whose tools string is "[]" get no tools at all
    assert sum(row["tools"] is None for row in rows.values()) == no_tools < 50
    n_calls = sum(len(m["tool_calls"] or []) for row in rows.values() for m in row["messages"])
    assert n_calls == calls > 50
    assert max(len(m["tool_calls"] or []) for row in rows.values() for m in row["messages"]) == 3
    assert sum(m["reasoning"] is not None for row in rows.values() for m in row["messages"]) == reasoning > 0
    assert {m["role"] for row in rows.values() for m in row["messages"]} == {"system", "user", "assistant", "tool"}


# ----------------------------------------------------------------------------------------------------------------
# text/


def test_c4_demo(shared_data: Path, run_convert) -> None:
    path = shared_data / "text/llamafactory__c4_demo.jsonl"
    raw = _load_jsonl(path)
    rows = _check(run_convert(path), "text", "text", 300)
    assert [rows[i]["text"] for i in range(len(raw))] == [rec["text"] for rec in raw]
    lengths = [len(row["text"]) for row in rows.values()]
    assert min(lengths) == 31
    assert max(lengths) == 37_499
    assert sum(n > 20_000 for n in lengths) == 3
    assert all(row["messages"] is None for row in rows.values())


def test_wiki_demo_txt(shared_data: Path, run_convert) -> None:
    path = shared_data / "text/llamafactory__wiki_demo.txt"
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    lines = text.split("\n")[:-1]
    assert len(lines) == 30
    rows = _check(run_convert(path), "text", "text", 30)
    # one document per line, each exactly the raw line
    assert [rows[i]["text"] for i in range(30)] == lines
    assert rows[0]["text"].startswith("Anarchism")
    lengths = [len(row["text"]) for row in rows.values()]
    assert min(lengths) == 1_007
    assert max(lengths) == 109_672


def test_wikisql_train(shared_data: Path, run_convert) -> None:
    path = shared_data / "text/mlx-examples__lora_wikisql_train.jsonl"
    raw = _load_jsonl(path)
    rows = _check(run_convert(path), "text", "text", 1000)
    assert [rows[i]["text"] for i in range(len(raw))] == [rec["text"] for rec in raw]
    # prompt and answer stay baked into one text: no split into prompt/completion
    assert all(row["text"].startswith("table: ") and "\nA: SELECT" in row["text"] for row in rows.values())
    assert all(row["prompt"] is None and row["completion"] is None for row in rows.values())
    # the one duplicate row is kept
    assert _repeats([rec["text"] for rec in raw]) == 1
    assert _repeats([row["text"] for row in rows.values()]) == 1


# ----------------------------------------------------------------------------------------------------------------
# prompt_completion/


def test_wwdc25_train(shared_data: Path, run_convert) -> None:
    path = shared_data / "prompt_completion/mlx-examples__wwdc25_train.jsonl"
    raw = _load_jsonl(path)
    rows = _check(run_convert(path), "prompt_completion", "prompt_completion", 1800)
    for i, rec in enumerate(raw):
        assert (rows[i]["prompt"], rows[i]["completion"]) == (rec["prompt"], rec["completion"])
        assert rows[i]["messages"] is None
        assert rows[i]["completion_messages"] is None
    pairs = [(rows[i]["prompt"], rows[i]["completion"]) for i in range(len(raw))]
    # deliberate repetition survives: 437 exact duplicate rows, only 271 distinct prompts
    assert _repeats(pairs) == 437
    assert len({p for p, _ in pairs}) == 271
    assert max(Counter(p for p, _ in pairs).values()) == 36
    completion_lengths = [len(c) for _, c in pairs]
    assert (min(completion_lengths), max(completion_lengths)) == (37, 2_161)


def test_wwdc25_valid(shared_data: Path, run_convert) -> None:
    path = shared_data / "prompt_completion/mlx-examples__wwdc25_valid.jsonl"
    raw = _load_jsonl(path)
    rows = _check(run_convert(path), "prompt_completion", "prompt_completion", 144)
    for i, rec in enumerate(raw):
        assert (rows[i]["prompt"], rows[i]["completion"]) == (rec["prompt"], rec["completion"])
    # 16 rows are identical to train rows (train/valid leakage), and nothing drops them
    train = {(r["prompt"], r["completion"]) for r in _load_jsonl(path.with_name("mlx-examples__wwdc25_train.jsonl"))}
    assert sum((row["prompt"], row["completion"]) in train for row in rows.values()) == 16


# ----------------------------------------------------------------------------------------------------------------
# preference/


def _check_llamafactory_dpo(raw: list[dict[str, Any]], rows: dict[int, dict[str, Any]]) -> None:
    for i, rec in enumerate(raw):
        row = rows[i]
        turns = rec["conversations"]
        # the prompt history always ends on human
        assert turns[-1]["from"] == "human"
        assert _roles(row["messages"]) == [SHAREGPT_ROLES[t["from"]] for t in turns], i
        assert [m["content"] for m in row["messages"]] == [t["value"] for t in turns], i
        # chosen/rejected are single message objects: each becomes a single assistant message
        for side in ("chosen", "rejected"):
            assert isinstance(rec[side], dict)
            assert rec[side]["from"] == "gpt"
            [msg] = row[f"{side}_messages"]
            assert (msg["role"], msg["content"]) == ("assistant", rec[side]["value"]), (i, side)
        assert row["prompt"] is None and row["chosen"] is None and row["rejected"] is None


def test_dpo_en_demo(shared_data: Path, run_convert) -> None:
    path = shared_data / "preference/llamafactory__dpo_en_demo.json"
    raw = _load_json(path)
    rows = _check(run_convert(path), "preference", "preference", 300)
    _check_llamafactory_dpo(raw, rows)
    # 80 rows start with a system turn, kept as the first prompt message
    assert sum(rec["conversations"][0]["from"] == "system" for rec in raw) == 80
    assert sum(row["messages"][0]["role"] == "system" for row in rows.values()) == 80
    assert max(len(row["messages"]) for row in rows.values()) == 13
    # one row holds a form feed, kept as is
    form_feed = [i for i, row in rows.items() if any("\x0c" in s for s in _strings(_payload(row)))]
    assert len(form_feed) == 1
    assert form_feed == [i for i, rec in enumerate(raw) if any("\x0c" in s for s in _strings(rec))]
    # 5 duplicates are kept
    assert _repeats(raw) == 5
    assert _repeats([_payload(rows[i]) for i in range(len(raw))]) == 5


def test_v1_dpo_demo(shared_data: Path, run_convert) -> None:
    path = shared_data / "preference/llamafactory__v1_dpo_demo.jsonl"
    raw = _load_jsonl(path)
    rows = _check(run_convert(path), "preference", "preference", 10)
    for i, rec in enumerate(raw):
        row = rows[i]
        chosen, rejected = rec["chosen_messages"], rec["rejected_messages"]
        # full conversations sharing a prefix: the prefix becomes the prompt, the rest each side's response
        n = len(chosen) - 1
        assert chosen[:n] == rejected[:n]
        assert _roles(row["messages"]) == [m["role"] for m in chosen[:n]] == ["system", "user"]
        assert [m["content"] for m in row["messages"]] == [m["content"][0]["value"] for m in chosen[:n]]
        # loss weights survive as message weights: 0.0 on the prompt turns, 1.0 on the responses
        assert [m["weight"] for m in row["messages"]] == [m["loss_weight"] for m in chosen[:n]] == [0.0, 0.0]
        [good] = row["chosen_messages"]
        [bad] = row["rejected_messages"]
        assert good["weight"] == chosen[-1]["loss_weight"] == 1.0
        assert bad["weight"] == rejected[-1]["loss_weight"] == 1.0
        assert good["role"] == bad["role"] == "assistant"
        # content parts keyed `value` are read; the rejected response keeps its leading space
        assert good["content"] == chosen[-1]["content"][0]["value"]
        assert bad["content"] == rejected[-1]["content"][0]["value"]
        assert bad["content"].startswith(" ")
        assert not good["content"].startswith(" ")


def test_hh_rlhf_harmless_base(shared_data: Path, run_convert) -> None:
    path = shared_data / "preference/hh-rlhf__harmless-base_test.jsonl.gz"
    raw = _load_jsonl(path)
    conv = run_convert(path)
    rows = _check(conv, "preference", "preference", 2312, rejected=4)
    # 4 chosen transcripts end with an empty final assistant reply: rejected as empty_content on `chosen`
    empty_final = [
        i for i, rec in enumerate(raw) if not rec["chosen"][rec["chosen"].rfind(ASSISTANT) + len(ASSISTANT) :].strip()
    ]
    assert empty_final == [86, 516, 925, 1103]
    assert conv.manifest["inputs"][0]["rejected_by_reason"] == {"empty_content": 4}
    assert [r["source_row"] for r in conv.rejects] == empty_final
    for reject in conv.rejects:
        assert (reject["reason"], reject["field"]) == ("empty_content", "chosen")
        assert json.loads(reject["raw"]) == raw[reject["source_row"]]
    assert sorted(rows) == sorted(set(range(2312)) - set(empty_final))
    # the implicit prompt ends at an "\n\nAssistant:" marker, and prompt + reply gives back each transcript
    for i, row in rows.items():
        rec = raw[i]
        assert row["prompt"].startswith("\n\n")
        assert row["prompt"].endswith(ASSISTANT)
        assert row["prompt"] + row["chosen"] == rec["chosen"], i
        assert row["prompt"] + row["rejected"] == rec["rejected"], i
        assert row["messages"] is None
    # in 5 rows the text before the last marker differs between chosen and rejected: the prompt is then only the
    # shared text up to the last marker inside it, shorter than at least one transcript's last-marker prefix
    differing = [
        i
        for i, rec in enumerate(raw)
        if rec["chosen"][: rec["chosen"].rfind(ASSISTANT)] != rec["rejected"][: rec["rejected"].rfind(ASSISTANT)]
    ]
    assert differing == [1254, 1688, 1950, 1952, 2036]
    for i in differing:
        chosen, rejected = raw[i]["chosen"], raw[i]["rejected"]
        shared = _common_prefix(chosen, rejected)
        assert rows[i]["prompt"] == chosen[: chosen.rfind(ASSISTANT, 0, shared) + len(ASSISTANT)]
        last = max(chosen.rfind(ASSISTANT), rejected.rfind(ASSISTANT)) + len(ASSISTANT)
        assert len(rows[i]["prompt"]) < last
    for i, row in rows.items():
        if i not in differing:
            assert row["prompt"] == raw[i]["chosen"][: raw[i]["chosen"].rfind(ASSISTANT) + len(ASSISTANT)], i


def test_stack_exchange_paired_with_spec(shared_data: Path, run_convert, tmp_path: Path) -> None:
    path = shared_data / "preference/torchtune__stack_exchange_paired_tiny.json"
    raw = _load_json(path)
    spec_path = tmp_path / "stack_exchange_paired.toml"
    spec_path.write_text(STACK_EXCHANGE_SPEC, encoding="utf-8")
    conv = run_convert(path, format=str(spec_path))
    rows = _check(conv, "stack_exchange_paired", "preference", 25)
    assert conv.manifest["inputs"][0]["detection"] is None
    assert conv.manifest["inputs"][0]["format_origin"] == str(spec_path)
    for i, rec in enumerate(raw):
        assert set(rec) == {"question", "response_j", "response_k"}
        row = rows[i]
        # response_j is the preferred answer
        assert row["prompt"] == rec["question"]
        assert row["chosen"] == rec["response_j"]
        assert row["rejected"] == rec["response_k"]
        assert row["messages"] is None and row["extra"] is None
    # rows of markdown, code and HTML reach about 13K chars, kept whole
    row_chars = [len(row["prompt"]) + len(row["chosen"]) + len(row["rejected"]) for row in rows.values()]
    assert max(row_chars) == max(sum(len(v) for v in rec.values()) for rec in raw)
    assert max(row_chars) > 12_000
    fences = sum("```" in s for row in rows.values() for s in (row["prompt"], row["chosen"], row["rejected"]))
    assert fences == sum("```" in v for rec in raw for v in rec.values()) > 0


def test_stack_exchange_paired_auto_detection_fails(shared_data: Path, run_convert) -> None:
    path = shared_data / "preference/torchtune__stack_exchange_paired_tiny.json"
    with pytest.raises(FormatDetectionError) as info:
        run_convert(path)
    message = str(info.value)
    assert "no known format matches" in message
    # the error carries a spec snippet naming the file's own columns
    assert 'kind = "preference"' in message
    assert 'prompt = "question"' in message
    assert 'chosen = "response_j"' in message
    assert 'rejected = "response_k"' in message


def test_torchtune_hh_rlhf_tiny(shared_data: Path, run_convert) -> None:
    path = shared_data / "preference/torchtune__hh_rlhf_tiny.json"
    raw = _load_json(path)
    rows = _check(run_convert(path), "preference", "preference", 1)
    chosen, rejected = raw[0]["chosen"], raw[0]["rejected"]
    assert list(chosen[0]) == ["content", "role"]  # content before role
    # both lists repeat the user prompt: it appears once, as the shared prompt
    assert chosen[:-1] == rejected[:-1]
    row = rows[0]
    assert [(m["role"], m["content"]) for m in row["messages"]] == [(m["role"], m["content"]) for m in chosen[:-1]]
    assert [(m["role"], m["content"]) for m in row["chosen_messages"]] == [("assistant", chosen[-1]["content"])]
    assert [(m["role"], m["content"]) for m in row["rejected_messages"]] == [("assistant", rejected[-1]["content"])]


# ----------------------------------------------------------------------------------------------------------------
# kto/


def test_kto_en_demo(shared_data: Path, run_convert) -> None:
    path = shared_data / "kto/llamafactory__kto_en_demo.json"
    raw = _load_json(path)
    rows = _check(run_convert(path), "kto", "kto", 300)
    for i, rec in enumerate(raw):
        row = rows[i]
        assert isinstance(rec["label"], bool)
        assert row["label"] is rec["label"]
        *prompt, last = rec["messages"]
        assert last["role"] == "assistant"
        # the label applies to the final assistant turn, which is the completion; the rest is the prompt
        assert [(m["role"], m["content"]) for m in row["completion_messages"]] == [("assistant", last["content"])]
        assert [(m["role"], m["content"]) for m in row["messages"]] == [(m["role"], m["content"]) for m in prompt]
    assert Counter(row["label"] for row in rows.values()) == {True: 150, False: 150}
    # row 139 holds a literal </s>, kept as text
    assert [i for i, row in rows.items() if any("</s>" in s for s in _strings(_payload(row)))] == [139]
    assert "</s>" in json.dumps(raw[139], ensure_ascii=False)


# ----------------------------------------------------------------------------------------------------------------
# multilingual/


def test_alpaca_zh_demo(shared_data: Path, run_convert) -> None:
    path = shared_data / "multilingual/llamafactory__alpaca_zh_demo.json"
    raw = _load_json(path)
    rows = _check(run_convert(path), "alpaca", "conversation", 1000)
    _check_alpaca(raw, rows)
    assert sum(rec["input"] == "" for rec in raw) == 861
    # 43 strings with leading or trailing whitespace are not stripped (the exact comparison above checks them)
    padded = [
        (i, k) for i, rec in enumerate(raw) for k in ("instruction", "input", "output") if rec[k] != rec[k].strip()
    ]
    assert len(padded) == 43
    for i, key in padded:
        content = rows[i]["messages"][1 if key == "output" else 0]["content"]
        assert raw[i][key] in content
    # the literal "输入：" / "输出：" prefixes are content and stay
    assert sum("输入：" in row["messages"][0]["content"] for row in rows.values()) == sum(
        "输入：" in rec["instruction"] + rec["input"] for rec in raw
    )
    assert sum("输出：" in row["messages"][1]["content"] for row in rows.values()) == sum(
        "输出：" in rec["output"] for rec in raw
    )
    # 8 duplicates are kept
    assert _repeats(raw) == 8
    assert _repeats([_payload(rows[i]) for i in range(len(raw))]) == 8


def test_glaive_toolcall_zh(shared_data: Path, run_convert) -> None:
    path = shared_data / "multilingual/llamafactory__glaive_toolcall_zh_demo.json"
    raw = _load_json(path)
    rows = _check(run_convert(path), "sharegpt", "conversation", 300)
    counts = _check_glaive(raw, rows)
    # 216 function_call turns and 218 observations: two observations have no structured call before them
    assert counts["tool_calls"] == 216
    assert counts["tool_messages"] == 218
    orphans = [
        i
        for i, row in rows.items()
        for prev, msg in zip(row["messages"], row["messages"][1:], strict=False)
        if msg["role"] == "tool" and prev["role"] == "assistant" and not prev["tool_calls"]
    ]
    assert orphans == [197, 293]
    for i in orphans:
        turns = raw[i]["conversations"]
        j = next(j for j, t in enumerate(turns) if t["from"] == "observation" and turns[j - 1]["from"] == "gpt")
        # the call written into the gpt text stays plain assistant content
        assert rows[i]["messages"][j - 1]["content"] == turns[j - 1]["value"]
        assert rows[i]["messages"][j]["content"] == turns[j]["value"]
    # Chinese inside tool arguments survives the JSON round trip
    assert any(
        any("\u4e00" <= c <= "\u9fff" for c in tc["arguments"])
        for row in rows.values()
        for m in row["messages"]
        for tc in m["tool_calls"] or []
    )
    assert _repeats(raw) == 43
    assert _repeats([_payload(rows[i]) for i in range(len(raw))]) == 43


def test_dpo_zh_demo(shared_data: Path, run_convert) -> None:
    path = shared_data / "multilingual/llamafactory__dpo_zh_demo.json"
    raw = _load_json(path)
    rows = _check(run_convert(path), "preference", "preference", 300)
    _check_llamafactory_dpo(raw, rows)
    # 1-2 prompt turns; 64 rows start with a system turn
    assert {len(row["messages"]) for row in rows.values()} == {1, 2}
    assert sum(row["messages"][0]["role"] == "system" for row in rows.values()) == 64
    # escaped markdown (a literal backslash before "_") is content, kept as is
    escaped = [i for i, rec in enumerate(raw) if any("\\_" in s for s in _strings(rec))]
    assert escaped
    assert escaped == [i for i, row in rows.items() if any("\\_" in s for s in _strings(_payload(row)))]
    # emoji (outside the BMP) survive: the same count as in the raw file
    raw_emoji = sum(_non_bmp(s) for rec in raw for s in _strings(rec))
    assert raw_emoji > 100
    assert sum(_non_bmp(s) for row in rows.values() for s in _strings(_payload(row))) == raw_emoji
    # 11 duplicates are kept
    assert _repeats(raw) == 11
    assert _repeats([_payload(rows[i]) for i in range(len(raw))]) == 11
