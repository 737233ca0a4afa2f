"""Format specs: shipped ones load; a user's spec needs no Python; mistakes name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsprep.errors import FormatSpecError
from dsprep.specs import load_spec, shipped_spec_names

SHIPPED = {"alpaca", "hh_transcript", "kto", "openai", "preference", "prompt_completion", "sharegpt", "text"}


def test_shipped_specs() -> None:
    assert set(shipped_spec_names()) == SHIPPED
    for name in SHIPPED:
        spec = load_spec(name)
        assert spec.name == name and spec.description and len(spec.sha256) == 64


def test_sharegpt_roles_map_tool_turns() -> None:
    roles = load_spec("sharegpt").roles
    assert (roles["human"].role, roles["gpt"].role, roles["observation"].role) == ("user", "assistant", "tool")
    assert (roles["function_call"].role, roles["function_call"].content) == ("assistant", "tool_call")


@pytest.mark.parametrize(
    ("text", "expected_error"),
    [
        ('kind = "text"\ndescription = "d"\n[fields]\ntext = "t"\ncolour = "red"\n', r"unknown key 'fields\.colour'"),
        ('kind = "text"\ndescription = "d"\nfeilds = {text = "t"}\n', r"unknown key 'feilds'"),
        (
            'kind = "text"\ndescription = "d"\n[fields]\ntext = "t"\n[message]\nrol = "r"\n',
            r"unknown key 'message\.rol'",
        ),
        ('kind = "poem"\ndescription = "d"\n', r"kind: Input should be"),
        ('kind = "preference"\ndescription = "d"\n[fields]\nchosen = "c"\n', r"needs fields\.rejected"),
        ('kind = "text"\ndescription = "d"\n[fields]\ntext = 3\n', r"fields"),
        ('kind = "text"\ndescription = "d"\ntransform = "nope"\n[fields]\ntext = "t"\n', r"unknown transform 'nope'"),
        ('kind = "text"\n[fields\n', r"not valid TOML"),
        ('kind = "conversation"\ndescription = "d"\n[fields]\nmessages = "m"\n[roles]\nbot = "robot"\n', r"roles\.bot"),
    ],
)
def test_spec_errors_name_file_and_key(tmp_path: Path, text: str, expected_error: str) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(text)
    with pytest.raises(FormatSpecError, match=expected_error) as caught:
        load_spec(str(path))
    assert str(caught.value).startswith(str(path))


def test_unknown_format_name_lists_the_shipped_ones() -> None:
    with pytest.raises(FormatSpecError, match=r"unknown format 'sharegtp'; expected 'auto', one of alpaca, .*sharegpt"):
        load_spec("sharegtp")


def test_user_spec_with_alternatives_and_roles(run_convert, tmp_path: Path) -> None:
    data = tmp_path / "chat.jsonl"
    data.write_text('{"dialog": [{"speaker": "Q", "text": "hi"}, {"speaker": "A", "text": "hello"}], "lang": "en"}\n')
    spec = tmp_path / "dialog.toml"
    spec.write_text(
        'description = "Q/A dialogs"\nkind = "conversation"\n[fields]\nmessages = ["dialogue", "dialog"]\n'
        '[message]\nrole = "speaker"\ncontent = "text"\n[roles]\nQ = "user"\nA = "assistant"\n'
    )
    done = run_convert(data, format=str(spec))
    assert [(m["role"], m["content"]) for m in done.rows[0]["messages"]] == [("user", "hi"), ("assistant", "hello")]
    assert done.rows[0]["extra"] == '{"lang":"en"}'
    assert done.manifest["inputs"][0]["format"] == "dialog"
    assert done.manifest["inputs"][0]["format_origin"] == str(spec)
