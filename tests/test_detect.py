"""`--format auto` picks the most specific matching spec, and explains itself when it cannot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsprep.detect import detect_format, mapping_snippet
from dsprep.errors import FormatDetectionError, RowError
from dsprep.normalize import normalize_record
from dsprep.specs import FormatSpec, load_spec
from paths import FIXTURES


def _msgs(*pairs: tuple[str, str], role: str = "role", content: str = "content") -> list[dict[str, str]]:
    return [{role: r, content: c} for r, c in pairs]


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"messages": _msgs(("user", "q"), ("assistant", "a"))}, "openai"),
        ({"conversations": _msgs(("human", "q"), ("gpt", "a"), role="from", content="value")}, "sharegpt"),
        ({"messages": _msgs(("user", "q"), ("assistant", "a")), "label": True}, "kto"),
        ({"prompt": "p", "completion": "c"}, "prompt_completion"),
        ({"prompt": "p", "completion": "c", "label": False}, "kto"),
        ({"prompt": "p", "completion": "c", "label": "1"}, "kto"),  # a CSV's labels
        ({"prompt": "p", "completion": "c", "label": 0.0}, "kto"),  # a float column's
        ({"prompt": "[INST] p [/INST]", "completion": "[1, 2]"}, "prompt_completion"),
        ({"prompt": "[INST] p [/INST]", "chosen": "{c}", "rejected": "[r]"}, "preference"),
        ({"prompt": "p", "chosen": "c", "rejected": "r"}, "preference"),
        ({"instruction": "i", "input": "", "output": "o", "text": "i o"}, "alpaca"),
        ({"text": "t"}, "text"),
    ],
)
def test_detects_the_most_specific_format(row: dict[str, object], expected: str) -> None:
    detection = detect_format([row] * 3, "sample")
    assert detection.spec.name == expected
    assert detection.confidence == 1.0


def test_describe_names_mapping_and_unmapped_keys() -> None:
    row = {"messages": _msgs(("user", "q"), ("assistant", "a")), "parallel_tool_calls": False}
    line = detect_format([row], "x").describe()
    assert line == ("openai (confidence 100%: 1/1 sampled rows match; mapping messages→messages; "
                    "kept in extra: parallel_tool_calls)")  # fmt: skip


def test_no_match_offers_a_spec_snippet() -> None:
    with pytest.raises(FormatDetectionError) as caught:
        detect_format([{"question": "q", "response_j": "good", "response_k": "bad"}], "pairs.json")
    message = str(caught.value)
    assert message.startswith("pairs.json: no known format matches")
    for line in ('kind = "preference"', 'prompt = "question"', 'chosen = "response_j"', 'rejected = "response_k"'):
        assert line in message


def test_conversation_snippet_names_message_keys() -> None:
    with pytest.raises(FormatDetectionError, match=r'messages = "turns"\n\s+\n\s+\[message\]\n\s+role = "who"'):
        detect_format([{"turns": [{"who": "me", "said": "hi"}]}], "t.jsonl")


def test_a_conversation_snippet_skips_role_values_that_name_no_role() -> None:
    """A list or object where a message's role would be (found by fuzzing: it stopped detection with a TypeError)
    is left out of the snippet's roles table; the scalar roles are listed."""
    with pytest.raises(FormatDetectionError) as caught:
        detect_format([{"prompt": "", "completion": "w", "label": [{"": []}]}], "x.json")
    assert "[roles]" in str(caught.value) and "input_role" in str(caught.value)
    with pytest.raises(FormatDetectionError, match=r'# "7" = "user" \| "assistant"'):
        detect_format([{"turns": [{"who": ["a"], "said": "hi"}, {"who": 7, "said": "yo"}]}], "t.jsonl")


def test_mostly_unmatched_sample_is_an_error() -> None:
    rows = [{"text": "t"}] + [{"foo": i} for i in range(3)]
    with pytest.raises(FormatDetectionError, match="no known format matches"):
        detect_format(rows, "m.jsonl")


def test_equally_good_specs_are_ambiguous(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from dsprep.specs import load_spec

    twin = tmp_path / "openai_twin.toml"
    twin.write_text('description = "a copy"\nkind = "conversation"\n[fields]\nmessages = "messages"\n')
    monkeypatch.setattr("dsprep.detect._candidates", lambda: [load_spec("openai"), load_spec(str(twin))])
    row = {"messages": _msgs(("user", "q"), ("assistant", "a"))}
    with pytest.raises(
        FormatDetectionError, match=r"ambiguous format, equally good: openai, openai_twin; pass --format"
    ):
        detect_format([row], "a.jsonl")


@pytest.mark.parametrize("name", sorted(p.stem for p in (FIXTURES / "formats").glob("*.jsonl")))
def test_the_mapping_inspect_shows_is_a_spec_that_reads_the_file_as_its_format_does(name: str, tmp_path: Path) -> None:
    """`dsprep inspect` shows the mapping "as a spec you can save": saved and passed with --format, it reads every
    row as the shipped format does (roles' content, turns, split marker and transform included)."""
    rows = [json.loads(line) for line in (FIXTURES / "formats" / f"{name}.jsonl").read_text().splitlines() if line]
    spec = load_spec(name)
    saved = tmp_path / "mine.toml"
    saved.write_text(mapping_snippet(spec, detect_format(rows, name) if spec.auto_detect else None))
    mine = load_spec(str(saved))

    def read(spec: FormatSpec) -> list[object]:
        out: list[object] = []
        for row in rows:
            try:
                out.append(normalize_record(row, spec))
            except RowError as exc:
                out.append((exc.reason, exc.field))
        return out

    assert read(mine) == read(spec)
