"""Format specs and detection at their edges: specs that cannot work are refused when loaded, naming the key; rows
whose values fail the format they look like are not quietly read as another; transforms read the spec's keys; the
confidence and the saved mapping say no more than they should."""

from __future__ import annotations

from typing import Any

import pytest

from dsprep.detect import detect_format, mapping_snippet
from dsprep.errors import FormatDetectionError, FormatSpecError, RowError
from dsprep.normalize import normalize_record
from dsprep.specs import load_spec, parse_spec

USER, ANSWER = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}


@pytest.mark.parametrize(
    "rows",
    [
        [{"prompt": "hi", "completion": "yo", "label": "yes"}, {"prompt": "hi", "completion": "no", "label": "no"}],
        [{"messages": [USER, ANSWER], "label": "good"}, {"messages": [USER, ANSWER], "label": "bad"}],
    ],
)
def test_rows_whose_kto_labels_fail_are_not_read_as_another_format(rows: list[dict[str, Any]]) -> None:
    with pytest.raises(FormatDetectionError) as refused:
        detect_format(rows, "kto.jsonl")
    first = str(refused.value).splitlines()[0]
    assert first.startswith("kto.jsonl: the rows look like format kto, but label: expected a boolean label, got ")
    assert "(label kept in extra)" in first


def test_kto_rows_with_boolean_labels_are_still_detected() -> None:
    rows = [{"prompt": "hi", "completion": "yo", "label": True}, {"prompt": "hi", "completion": "no", "label": 0}]
    assert detect_format(rows, "kto.jsonl").spec.name == "kto"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('origin = "o"\n[fields]\ntext = "t"', "unknown key 'origin'"),
        ('sha256 = "0"\n[fields]\ntext = "t"', "unknown key 'sha256'"),
        ("auto_detect = 0\n[fields]\ntext = \"t\"", "auto_detect: Input should be a valid boolean"),
        ("[fields]\ntext = 3", "fields: text: expected a key name or a list of key names"),
        ('[fields]\ntext = ["t", 3]', "fields: text: expected a key name or a non-empty list of key names"),
    ],
)  # fmt: skip
def test_spec_values_of_the_wrong_kind_name_their_key(body: str, message: str) -> None:
    with pytest.raises(FormatSpecError) as refused:
        parse_spec(f'description = "x"\nkind = "text"\n{body}\n', name="x", origin="x.toml")
    assert str(refused.value) == f"x.toml: {message}"
    assert refused.value.exit_code == 3


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('kind = "kto"\n[fields]\nprompt = "p"\ncompletion = "c"\nlabel = "l"\n[[turns]]\nrole = "user"\n'
         'sources = ["q"]', "[[turns]] build a conversation's messages; kind 'kto' does not read them"),
        ('kind = "conversation"\n[fields]\nmessages = "m"\n[roles]\nuser = { role = "user", content = "tool_call" }',
         "content 'tool_call' makes an assistant's tool call; role 'user' makes none"),
        ('kind = "conversation"\n[[turns]]\nrole = "user"\nsources = ["q"]\noptional = "yes"',
         "Input should be a valid boolean"),
    ],
)  # fmt: skip
def test_specs_that_could_read_no_row_are_refused(body: str, message: str) -> None:
    with pytest.raises(FormatSpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_spec(f'description = "x"\n{body}\n', name="x", origin="x.toml")


def test_the_transcript_transform_reads_the_keys_the_spec_maps() -> None:
    spec = parse_spec(
        'description = "hh"\nkind = "preference"\ntransform = "transcript_to_messages"\n'
        '[fields]\nchosen = "good"\nrejected = "bad"\n',
        name="hh",
        origin="hh.toml",
    )
    row = normalize_record(
        {"good": "\n\nHuman: hi\n\nAssistant: fine", "bad": "\n\nHuman: hi\n\nAssistant: go away", "chosen": "x"},
        spec,
    )
    assert [m["content"] for m in row["messages"]] == ["hi"]
    assert [m["content"] for m in row["chosen_messages"]] == ["fine"]
    assert [m["content"] for m in row["rejected_messages"]] == ["go away"]


def test_confidence_is_never_rounded_up_to_a_full_match() -> None:
    rows = [{"messages": [USER, ANSWER]}] * 199 + [{"messages": "not a list"}]
    assert detect_format(rows, "x.jsonl").describe().startswith("openai (confidence 99%: 199/200")


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"system": "S1", "messages": [USER, {"role": "system", "content": "S2"}, ANSWER]}, "conflicting_system"),
        ({"messages": [USER, {**ANSWER, "weight": "nan"}]}, "wrong_type"),
    ],
)
def test_rows_that_contradict_themselves_are_rejected(record: dict[str, Any], reason: str) -> None:
    with pytest.raises(RowError) as rejected:
        normalize_record(record, load_spec("openai"))
    assert rejected.value.reason == reason


def test_a_null_turn_source_is_a_missing_field() -> None:
    with pytest.raises(RowError) as rejected:
        normalize_record({"instruction": None, "input": None, "output": "A"}, load_spec("alpaca"))
    assert rejected.value.reason == "missing_field"


def test_a_saved_mapping_reads_the_fields_its_sample_lacked(tmp_path: Any) -> None:
    detection = detect_format([{"messages": [USER, ANSWER]}] * 3, "s.jsonl")
    saved = parse_spec(mapping_snippet(detection.spec, detection), name="saved", origin="saved.toml")
    later = {
        "system": "Be terse",
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "messages": [USER, ANSWER],
    }
    assert normalize_record(later, saved) == normalize_record(later, load_spec("openai"))


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([{"chat": [{"role": "user", "content": "hi", "name": "bob"}, {"role": "assistant", "content": "yo"}]}],
         [("user", "hi"), ("assistant", "yo")]),
        ([{"tools": [{"name": "f"}], "dialog": [{"speaker": "human", "text": "hi"}, {"speaker": "bot", "text": "yo"}]}],
         [("user", "hi"), ("assistant", "yo")]),
        ([{"talk": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}],
         [("user", "hi"), ("assistant", "yo")]),
        ([{"Instruction": "do", "Input": "this", "Output": "done"}], [("user", "do\nthis"), ("assistant", "done")]),
    ],
)  # fmt: skip
def test_the_suggested_spec_reads_the_rows_it_was_made_from(
    rows: list[dict[str, Any]], expected: list[tuple[str, str]]
) -> None:
    with pytest.raises(FormatDetectionError) as refused:
        detect_format(rows, "x.jsonl")
    snippet = str(refused.value).split("pass with --format:\n", 1)[1]
    spec = parse_spec("\n".join(line.removeprefix("    ") for line in snippet.splitlines()), name="s", origin="s.toml")
    row = normalize_record(rows[0], spec)
    assert [(m["role"], m["content"]) for m in row["messages"]] == expected
