"""Each shipped format's hand-written fixture normalizes to exactly the expected canonical rows."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dsprep.errors import RowError
from dsprep.normalize import normalize_record
from dsprep.specs import load_spec, shipped_spec_names
from paths import FIXTURES

FORMATS = FIXTURES / "formats"


def _msgs(rows: list[dict[str, Any]], column: str = "messages") -> list[list[tuple[Any, ...]]]:
    return [[(m["role"], m["content"]) for m in r[column] or []] for r in rows]


@pytest.mark.parametrize("name", shipped_spec_names())
def test_every_shipped_format_has_a_fixture_that_converts_cleanly(run_convert, name: str) -> None:
    fixture = FORMATS / f"{name}.jsonl"
    assert fixture.is_file(), f"formats/{name}.toml needs a fixture at {fixture}"
    spec = load_spec(name)
    done = run_convert(fixture, format="auto" if spec.auto_detect else name)
    assert done.manifest["inputs"][0]["format"] == name
    assert done.rejects == []
    assert {r["kind"] for r in done.rows} == {spec.kind}


def test_sharegpt(run_convert) -> None:
    rows = run_convert(FORMATS / "sharegpt.jsonl").rows
    assert _msgs(rows) == [
        [("system", "You are terse."), ("user", "Capital of France?"), ("assistant", "Paris.")],
        [("user", "Weather in Oslo?"), ("assistant", None), ("tool", '{"temp_c": -3}'),
         ("assistant", "It is -3 °C in Oslo.")],
        [("system", "Answer briefly."), ("user", "Say hi in Japanese."), ("assistant", "こんにちは 👋")],
    ]  # fmt: skip
    call = rows[1]["messages"][1]["tool_calls"]
    assert call == [{"id": None, "name": "get_weather", "arguments": '{"city":"Oslo"}'}]
    tools = json.loads(rows[1]["tools"])
    assert tools[0]["type"] == "function" and tools[0]["function"]["name"] == "get_weather"
    assert json.loads(rows[2]["extra"]) == {"source": "handwritten"}
    assert rows[0]["tools"] is None and rows[0]["extra"] is None


def test_openai_tool_calls_results_parts_and_reasoning(run_convert) -> None:
    rows = run_convert(FORMATS / "openai.jsonl").rows
    assert rows[0]["messages"][2]["weight"] == 1.0
    calls = rows[1]["messages"][1]["tool_calls"]
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("call_1", "get_weather", {"city": "Paris"}),
        ("call_2", "get_weather", {"city": "Rome"}),
    ]
    assert [(m["role"], m["tool_call_id"]) for m in rows[1]["messages"][2:4]] == [
        ("tool", "call_1"),
        ("tool", "call_2"),
    ]
    assert rows[1]["messages"][1]["content"] is None
    assert json.loads(rows[1]["tools"])[0]["function"]["name"] == "get_weather"
    assert _msgs(rows[2:]) == [[("system", "Think step by step."), ("user", "Is 17 prime?"), ("assistant", "Yes.")]]
    assert rows[2]["messages"][2]["reasoning"] == "17 has no divisors between 2 and 4."


def test_alpaca(run_convert) -> None:
    rows = run_convert(FORMATS / "alpaca.jsonl").rows
    assert _msgs(rows) == [
        [("user", "Translate to French.\nGood morning"), ("assistant", "Bonjour")],
        [("user", "Name a prime number."), ("assistant", "7")],
        [("system", "Be brief."), ("user", "Summarize.\nCats sleep a lot."), ("assistant", "Cats nap.")],
    ]


def test_text_and_prompt_completion(run_convert) -> None:
    text = run_convert(FORMATS / "text.jsonl").rows
    assert [r["text"] for r in text] == ["The quick brown fox jumps over the lazy dog.",
                                         "Pack my box with five dozen liquor jugs."]  # fmt: skip
    assert json.loads(text[1]["extra"]) == {"meta": {"lang": "en"}}
    pc = run_convert(FORMATS / "prompt_completion.jsonl").rows
    assert (pc[0]["prompt"], pc[0]["completion"], pc[0]["messages"]) == ("The capital of Italy is", " Rome.", None)
    assert _msgs(pc[1:]) == [[("user", "Spell cat backwards.")]]
    assert _msgs(pc[1:], "completion_messages") == [[("assistant", "tac")]]


def test_preference_shapes(run_convert) -> None:
    rows = run_convert(FORMATS / "preference.jsonl").rows
    assert (rows[0]["prompt"], rows[0]["chosen"], rows[0]["rejected"]) == (
        "Is the sky green?", "No, it is usually blue.", "Yes.")  # fmt: skip
    assert _msgs(rows[1:3]) == [[("user", "Greet me.")], [("user", "1+1?")]]
    assert _msgs(rows[1:3], "chosen_messages") == [[("assistant", "Hello!")], [("assistant", "2")]]
    assert _msgs(rows[1:3], "rejected_messages") == [[("assistant", "Go away.")], [("assistant", "3")]]
    assert (rows[3]["prompt"], rows[3]["chosen"], rows[3]["rejected"]) == (
        "\n\nHuman: Hi\n\nAssistant:", " Hello, how can I help?", " What?")  # fmt: skip


def test_hh_transcript_transform(run_convert) -> None:
    rows = run_convert(FORMATS / "hh_transcript.jsonl", format="hh_transcript").rows
    assert _msgs(rows) == [[("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye")]]
    assert _msgs(rows, "chosen_messages") == [[("assistant", "Goodbye, take care.")]]
    assert _msgs(rows, "rejected_messages") == [[("assistant", "Whatever.")]]


def test_kto(run_convert) -> None:
    rows = run_convert(FORMATS / "kto.jsonl").rows
    assert [r["label"] for r in rows] == [True, False]
    assert (rows[0]["prompt"], rows[0]["completion"]) == ("Tell me a fact.", "Water boils at 100 °C at sea level.")
    assert _msgs(rows[1:]) == [[("user", "Tell me a fact.")]]
    assert _msgs(rows[1:], "completion_messages") == [[("assistant", "The moon is cheese.")]]


@pytest.mark.parametrize(
    ("spec", "record", "reason", "field"),
    [
        ("openai", {"messages": []}, "empty_content", "messages"),
        ("openai", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
         "unsupported_content", "messages[0].content[0].type"),
        ("openai", {"system": "s", "messages": [{"role": "system", "content": "t"}, {"role": "user", "content": "u"}]},
         "conflicting_system", "system"),
        ("openai", {"messages": [{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}]},
         "invalid_tool_call", "messages[0].tool_calls[0].name"),
        ("openai", {"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}]},
         "invalid_tool_call", "messages[0].tool_calls[0].arguments"),
        ("preference", {"prompt": "p", "chosen": "same", "rejected": "same"}, "identical_pair", "chosen"),
        ("preference", {"chosen": "a", "rejected": "b"}, "no_prompt", "chosen"),
        ("preference", {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                        "rejected": [{"role": "user", "content": "q"}]}, "empty_content", "rejected"),
        ("kto", {"prompt": "p", "completion": "c", "label": "maybe"}, "wrong_type", "label"),
        ("alpaca", {"instruction": "", "input": "", "output": "x"}, "empty_content", "instruction"),
        ("text", {"text": 5}, "wrong_type", "text"),
    ],
)  # fmt: skip
def test_row_errors_name_field_and_reason(spec: str, record: dict[str, Any], reason: str, field: str) -> None:
    with pytest.raises(RowError) as caught:
        normalize_record(record, load_spec(spec))
    assert (caught.value.reason, caught.value.field) == (reason, field)


def test_double_encoded_arguments_are_decoded_once() -> None:
    inner = json.dumps({"location": "current"})
    record = {"messages": [{"role": "user", "content": "where?"},
                           {"role": "assistant", "tool_calls": [{"function": {"name": "loc", "arguments": json.dumps(inner)}}]}]}  # fmt: skip
    row = normalize_record(record, load_spec("openai"))
    assert row["messages"][1]["tool_calls"][0]["arguments"] == inner


@pytest.mark.parametrize(
    ("spec", "record", "column", "text"),
    [
        ("prompt_completion", {"prompt": "[INST] What is 2+2? [/INST]", "completion": "4"}, "prompt",
         "[INST] What is 2+2? [/INST]"),
        ("prompt_completion", {"prompt": "Give me a person.", "completion": '{"name": "Bob"}'}, "completion",
         '{"name": "Bob"}'),
        ("prompt_completion", {"prompt": "Sort 3 1 2.", "completion": "[1, 2, 3]"}, "completion", "[1, 2, 3]"),
        ("prompt_completion", {"prompt": "[1, 2, 3] -- sum?", "completion": "6"}, "prompt", "[1, 2, 3] -- sum?"),
        ("preference", {"prompt": "Source?", "chosen": "[citation needed] yes", "rejected": "no"}, "chosen",
         "[citation needed] yes"),
        ("kto", {"prompt": "{curly} braces", "completion": "ok", "label": True}, "prompt", "{curly} braces"),
        ("prompt_completion", {"prompt": "Extract as JSON: Ann is the CEO.", "completion": '{"name": "Ann", "role": '
         '"CEO"}'}, "completion", '{"name": "Ann", "role": "CEO"}'),  # a role no spec knows: JSON output, not a message
        ("prompt_completion", {"prompt": "Extract the account.", "completion": '{"name": "al", "role": "user"}'},
         "completion", '{"name": "al", "role": "user"}'),  # a known role but no content: not a message either
        ("preference", {"prompt": "Who?", "chosen": '{"name": "Ann", "role": "CEO"}', "rejected": "no"}, "chosen",
         '{"name": "Ann", "role": "CEO"}'),
    ],
)  # fmt: skip
def test_strings_that_open_like_json_stay_text(spec: str, record: dict[str, Any], column: str, text: str) -> None:
    row = normalize_record(record, load_spec(spec))
    assert row[column] == text
    assert row["messages"] is None


def test_message_json_in_a_string_is_decoded_and_broken_message_json_is_rejected() -> None:
    spec = load_spec("prompt_completion")
    messages = json.dumps([{"role": "user", "content": "q"}])
    row = normalize_record({"prompt": messages, "completion": json.dumps({"role": "assistant", "content": "a"})}, spec)
    assert _msgs([row]) == [[("user", "q")]]
    assert _msgs([row], "completion_messages") == [[("assistant", "a")]]
    with pytest.raises(RowError) as caught:
        normalize_record({"prompt": messages[:-2], "completion": "a"}, spec)
    assert (caught.value.reason, caught.value.field) == ("invalid_json", "prompt")


@pytest.mark.parametrize(("value", "label"), [(1, True), (0, False), (1.0, True), (0.0, False), ("1", True),
                                              ("0", False), ("TRUE", True), (" false ", False)])  # fmt: skip
def test_kto_labels_spelled_as_numbers_or_text(value: Any, label: bool) -> None:
    row = normalize_record({"prompt": "p", "completion": "c", "label": value}, load_spec("kto"))
    assert row["label"] is label


def test_legacy_function_call_is_a_tool_call() -> None:
    record = {"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "function_call": {"name": "weather", "arguments": '{"city": "Paris"}'}},
        {"role": "function", "name": "weather", "content": "sunny"},
        {"role": "assistant", "content": "Sunny.", "function_call": None},
    ]}  # fmt: skip
    messages = normalize_record(record, load_spec("openai"))["messages"]
    assert messages[1]["tool_calls"] == [{"id": None, "name": "weather", "arguments": '{"city": "Paris"}'}]
    assert (messages[1]["content"], messages[1]["extra"]) == (None, None)
    assert (messages[2]["role"], messages[2]["name"]) == ("tool", "weather")


def test_content_part_with_null_text_reads_its_value() -> None:
    record = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a", "value": None},
                                                        {"type": "text", "text": None, "value": "b"}]}]}  # fmt: skip
    assert normalize_record(record, load_spec("openai"))["messages"][0]["content"] == "ab"


def test_a_thinking_part_may_hold_its_text_under_its_type() -> None:
    content = [{"type": "thinking", "thinking": "Let me see."}, {"type": "text", "text": "4"}]
    record = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": content}]}
    message = normalize_record(record, load_spec("openai"))["messages"][1]
    assert (message["reasoning"], message["content"]) == ("Let me see.", "4")


@pytest.mark.parametrize(
    ("spec", "record", "column"),
    [
        ("prompt_completion", {"prompt": "The capital of France is", "completion": " Paris.", "system": ""}, "prompt"),
        ("prompt_completion", {"prompt": "2 + 2 =", "completion": " 4", "system": "  "}, "prompt"),
        ("preference", {"prompt": "Say hi.", "chosen": "hi", "rejected": "no", "system": ""}, "prompt"),
    ],
)  # fmt: skip
def test_an_empty_system_field_leaves_a_text_row_text(spec: str, record: dict[str, Any], column: str) -> None:
    """LLaMA-Factory exports carry ``"system": ""``: it is no system prompt, so the row is not made a chat."""
    row = normalize_record(record, load_spec(spec))
    assert row[column] == record["prompt"]
    assert row["messages"] is None


def test_an_empty_prompt_of_a_conversational_pair_is_no_user_message() -> None:
    chosen, rejected = [{"role": "assistant", "content": "A"}], [{"role": "assistant", "content": "B"}]
    row = normalize_record({"prompt": "", "chosen": chosen, "rejected": rejected}, load_spec("preference"))
    assert row["messages"] == []
    assert _msgs([row], "chosen_messages") == [[("assistant", "A")]]


def test_a_tool_call_that_is_not_json_is_an_invalid_tool_call() -> None:
    record = {"conversations": [{"from": "human", "value": "hi"}, {"from": "function_call", "value": "not json"},
                                {"from": "gpt", "value": "x"}]}  # fmt: skip
    with pytest.raises(RowError) as caught:
        normalize_record(record, load_spec("sharegpt"))
    assert (caught.value.reason, caught.value.field) == ("invalid_tool_call", "conversations[1].value")
