"""Tokenization details: end-of-turn tokens trained, preference splits, length policies, masks by policy."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from dsprep.config import ConvertConfig
from dsprep.conformance import check_conformance
from dsprep.encode import EncodeOptions, Encoder
from dsprep.errors import RowError, TemplateError
from dsprep.pipeline import convert
from dsprep.templates import ChatTemplate, load_template, template_messages
from dsprep.tokenizers import load_tokenizer
from oracles import reference_ids
from paths import FIXTURES

TURN_MARKERS = ["<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>", "<start_of_turn>", "<end_of_turn>", "<bos>"]  # fmt: skip


@pytest.fixture(scope="module")
def marker_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Tekken with the chat families' turn markers as special tokens, saved as a local tokenizer folder."""
    tok = load_tokenizer("mistral:tekken").tokenizer
    tok.add_special_tokens({"additional_special_tokens": TURN_MARKERS})
    folder = tmp_path_factory.mktemp("tekken-markers")
    tok.save_pretrained(str(folder))
    load_tokenizer.cache_clear()
    return str(folder)


def _msg(role: str, content: str, **extra: Any) -> dict[str, Any]:
    base = dict.fromkeys(("name", "tool_calls", "tool_call_id", "reasoning", "train", "weight", "extra"))
    return {**base, "role": role, "content": content, **extra}


def _row(messages: list[dict[str, Any]], kind: str = "conversation", **extra: Any) -> dict[str, Any]:
    return {"id": "r", "kind": kind, "messages": messages, "tools": None, "source_file": "t", "source_row": 0,
            "completion_messages": None, **extra}  # fmt: skip


CONVERSATION = [_msg("system", "Be brief."), _msg("user", "Hi there"), _msg("assistant", "Hello!"),
                _msg("user", "Bye"), _msg("assistant", "Goodbye.")]  # fmt: skip


def _trained_runs(out: dict[str, Any]) -> list[list[int]]:
    runs: list[list[int]] = []
    for i, label in enumerate(out["labels"]):
        if label == -100:
            continue
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


@pytest.mark.parametrize(
    ("template", "eot"), [("chatml", "<|im_end|>"), ("llama3", "<|eot_id|>"), ("gemma3", "<end_of_turn>")]
)
def test_end_of_turn_token_is_trained_for_every_assistant_turn(marker_tokenizer: str, template: str, eot: str) -> None:
    loaded = load_tokenizer(marker_tokenizer)
    tok = loaded.tokenizer
    eot_id = tok.convert_tokens_to_ids(eot)
    assert eot_id != tok.eos_token_id  # these families end a turn with their own marker, not EOS
    encoder = Encoder(loaded, load_template(template), EncodeOptions())
    [[out]] = encoder.encode([_row(CONVERSATION)])
    runs = _trained_runs(out)
    assert len(runs) == 2  # one trained run per assistant turn
    for run, answer in zip(runs, ("Hello!", "Goodbye."), strict=True):
        tokens = [int(out["input_ids"][i]) for i in run]
        assert eot_id in tokens
        assert tok.decode(tokens).startswith(answer)  # the generation prompt header before it is not trained
        assert "assistant" not in tok.decode(tokens)
        assert "model" not in tok.decode(tokens)
    conformance = check_conformance(encoder)
    assert conformance.eot_trained
    assert conformance.eot_is_special
    assert eot in "".join(conformance.eot_tokens)
    assert conformance.problems == []


def test_train_on_last_and_all() -> None:
    loaded = load_tokenizer("mistral:tekken")
    template = load_template("chatml")
    [[last]] = Encoder(loaded, template, EncodeOptions(train_on="last")).encode([_row(CONVERSATION)])
    [[every]] = Encoder(loaded, template, EncodeOptions(train_on="all")).encode([_row(CONVERSATION)])
    [[default]] = Encoder(loaded, template, EncodeOptions()).encode([_row(CONVERSATION)])
    tok = loaded.tokenizer
    assert len(_trained_runs(last)) == 1
    assert (
        tok.decode([t for t, lab in zip(last["input_ids"], last["labels"], strict=True) if lab != -100])
        == "Goodbye.<|im_end|>\n"
    )
    assert list(every["labels"]) == list(every["input_ids"])
    assert default["num_trained"] > last["num_trained"]


def test_per_message_weights_and_flags_override_the_role_policy() -> None:
    messages = [
        *CONVERSATION[:2],
        _msg("assistant", "Hello!", weight=0.0),
        *CONVERSATION[3:4],
        _msg("assistant", "Goodbye.", train=True),
    ]
    encoder = Encoder(load_tokenizer("mistral:tekken"), load_template("chatml"), EncodeOptions())
    [[out]] = encoder.encode([_row(messages)])
    tok = encoder.tok.tokenizer
    assert (
        tok.decode([t for t, lab in zip(out["input_ids"], out["labels"], strict=True) if lab != -100])
        == "Goodbye.<|im_end|>\n"
    )


def test_history_rewriting_template_is_rejected_not_mis_masked() -> None:
    rewriting = ChatTemplate(
        "rewrites",
        "{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}<a>[old]</a>{% elif m.role == 'assistant' %}"
        "<a>{% generation %}{{ m.content }}</a>{% endgeneration %}{% else %}<u>{{ m.content }}</u>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<a>{% endif %}",
        "test",
    )  # fmt: skip
    encoder = Encoder(load_tokenizer("mistral:tekken"), rewriting, EncodeOptions())
    [error] = encoder.encode([_row(CONVERSATION[1:])])
    assert isinstance(error, RowError)
    assert error.reason == "template_not_prefix_stable"
    [[ok]] = Encoder(load_tokenizer("mistral:tekken"), rewriting, EncodeOptions(train_on="last")).encode(
        [_row(CONVERSATION[1:])]
    )
    assert (
        encoder.tok.tokenizer.decode([t for t, lab in zip(ok["input_ids"], ok["labels"], strict=True) if lab != -100])
        == "Goodbye.</a>"
    )


def test_conformance_stops_a_template_without_end_of_turn(tmp_path: Path) -> None:
    bare = tmp_path / "bare.jinja"
    bare.write_text(
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    )
    inputs = (str(FIXTURES / "formats" / "openai.jsonl"),)
    with pytest.raises(TemplateError, match="no trained end-of-turn marker"):
        convert(ConvertConfig(inputs=inputs, out=tmp_path / "o", tokenizer="mistral:tekken", template=str(bare)))
    done = convert(ConvertConfig(inputs=inputs, out=tmp_path / "o2", tokenizer="mistral:tekken", template=str(bare),
                                 allow_template_warnings=True))  # fmt: skip
    assert done.manifest["conformance"]["eot_trained"] is False


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"train_on": "last"}, id="train-on-last"),
        pytest.param({"max_len": 12}, id="max-len-shorter-than-the-probes"),
        pytest.param({"max_len": 12, "overflow": "truncate-right"}, id="max-len-truncate"),
    ],
)
def test_conformance_checks_the_template_not_the_run_options(tmp_path: Path, options: dict[str, Any]) -> None:
    """The probes ignore --train-on and --max-len: ChatML passes its checks, and the run applies the options."""
    inputs = (str(FIXTURES / "formats" / "openai.jsonl"),)
    config = ConvertConfig(inputs=inputs, out=tmp_path / "o", tokenizer="mistral:tekken", template="chatml", **options)
    done = convert(config)
    assert done.manifest["conformance"]["eot_trained"] is True
    assert done.rows_read == done.rows_kept + done.rows_rejected
    if "max_len" in options:
        import pyarrow.parquet as pq

        lengths = [len(ids) for ids in pq.read_table(tmp_path / "o" / "part-00000.parquet")["input_ids"].to_pylist()]
        assert all(n <= 12 for n in lengths)


def test_doubled_bos_is_caught(tmp_path: Path) -> None:
    double = ChatTemplate(
        "double",
        "{{ bos_token }}{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}</s>{% endfor %}",
        "t",
    )
    encoder = Encoder(load_tokenizer("mistral:tekken"), double, EncodeOptions())
    conformance = check_conformance(encoder)
    assert conformance.single_bos is False
    assert any("BOS twice" in p for p in conformance.problems)


@pytest.mark.shared_data
@pytest.mark.parametrize(
    "name",
    ["preference/llamafactory__dpo_en_demo.json", "preference/llamafactory__v1_dpo_demo.jsonl",
     "preference/torchtune__hh_rlhf_tiny.json", "multilingual/llamafactory__dpo_zh_demo.json"],
)  # fmt: skip
@pytest.mark.parametrize("template", ["tokenizer", "chatml"])
def test_preference_prompt_plus_continuation_is_the_whole_conversation(
    shared_data: Path, tmp_path: Path, name: str, template: str
) -> None:
    import pyarrow.parquet as pq

    out = tmp_path / "norm"
    convert(ConvertConfig(inputs=(str(shared_data / name),), out=out))
    rows = pq.read_table(out / "part-00000.parquet").to_pylist()
    loaded = load_tokenizer("mistral:tekken")
    tmpl = load_template(template, loaded.chat_template)
    results = Encoder(loaded, tmpl, EncodeOptions()).encode(rows)
    for row, result in zip(rows, results, strict=True):
        assert not isinstance(result, RowError), (row["source_row"], result)
        [enc] = result
        for side in ("chosen", "rejected"):
            full = template_messages(row["messages"] + row[f"{side}_messages"])
            expected = reference_ids(loaded.tokenizer, tmpl.text, full, None)
            assert list(enc["prompt_input_ids"]) + list(enc[f"{side}_input_ids"]) == expected, (row["source_row"], side)
        bos = loaded.tokenizer.bos_token_id
        assert list(enc["prompt_input_ids"]).count(bos) <= 1


@pytest.mark.shared_data
def test_string_preference_pairs_split_at_the_prompt(shared_data: Path, tmp_path: Path) -> None:
    import gzip

    import pyarrow.parquet as pq

    src = shared_data / "preference" / "hh-rlhf__harmless-base_test.jsonl.gz"
    out = tmp_path / "tok"
    convert(ConvertConfig(inputs=(str(src),), out=out, tokenizer="mistral:tekken", template="chatml"))
    rows = pq.read_table(out / "part-00000.parquet").to_pylist()
    with gzip.open(src, "rt", encoding="utf-8") as fh:
        raw = [json.loads(line) for line in fh]
    tok = load_tokenizer("mistral:tekken").tokenizer
    assert len(rows) == 2308
    for row in rows[:300]:
        record = raw[row["source_row"]]
        for side in ("chosen", "rejected"):
            ids = row["prompt_input_ids"] + row[f"{side}_input_ids"]
            assert ids[-1] == tok.eos_token_id
            assert tok.decode(ids[:-1]) == record[side]


def test_length_policies(tmp_path: Path) -> None:
    loaded = load_tokenizer("mistral:tekken")
    long_conv = [
        _msg("system", "S"),
        *[_msg(r, f"turn {i} " + "word " * 30) for i in range(6) for r in ("user", "assistant")],
    ]
    full = Encoder(loaded, load_template("chatml"), EncodeOptions()).encode([_row(long_conv)])[0][0]["num_tokens"]
    limit = full // 2

    def run(policy: str) -> Any:
        return Encoder(loaded, load_template("chatml"), EncodeOptions(max_len=limit, overflow=policy)).encode(
            [_row(long_conv)]
        )[0]

    dropped = run("drop")
    assert isinstance(dropped, RowError)
    assert (dropped.reason, dropped.message) == ("too_long", f"{full} tokens, over --max-len {limit}")
    [right] = run("truncate-right")
    [left] = run("truncate-left")
    assert len(right["input_ids"]) == len(left["input_ids"]) == limit
    [fewer] = run("drop-turns")
    assert fewer["num_tokens"] <= limit
    text = loaded.tokenizer.decode(fewer["input_ids"])
    assert text.startswith("<|im_start|>system\nS<|im_end|>")  # the system message stays
    assert "turn 5" in text and "turn 0" not in text  # the oldest turns go, the last assistant turn stays
    split = Encoder(loaded, load_template("chatml"), EncodeOptions(max_len=8, overflow="split")).encode(
        [{"id": "t", "kind": "text", "text": "word " * 30, "source_file": "t", "source_row": 0}]
    )[0]
    assert [len(r["input_ids"]) for r in split][:-1] == [8] * (len(split) - 1)
    assert len(split[-1]["input_ids"]) >= 2
    whole = loaded.tokenizer("word " * 30)["input_ids"] + [loaded.tokenizer.eos_token_id]
    # each chunk after the first starts with the last token of the one before: every token but the first is a target
    # (a token whose label the shifted loss reads) in exactly one chunk
    assert split[0]["input_ids"].tolist() == whole[:8]
    assert np.concatenate([r["input_ids"][1:] for r in split]).tolist() == whole[1:]
    assert all(a["input_ids"][-1] == b["input_ids"][0] for a, b in itertools.pairwise(split))
    assert sum(r["num_trained"] for r in split) == len(whole) - 1
    assert [r["id"] for r in split] == [f"t-{k}" for k in range(len(split))]


def test_a_rows_first_label_is_no_target() -> None:
    """Trainers compare each token's prediction with the next token's label, so a row's first label is never a
    target: num_trained leaves it out, and a row (or a split chunk) whose only trained label is its first is
    rejected, not kept as a row that trains nothing."""
    loaded = load_tokenizer("mistral:tekken")
    text = {"id": "t", "kind": "text", "text": "the quick brown fox", "source_file": "t", "source_row": 0}

    def run(**options: Any) -> Any:
        return Encoder(loaded, load_template("chatml"), EncodeOptions(**options)).encode([text])[0]

    [whole] = run()
    assert whole["num_trained"] == len(whole["input_ids"]) - 1
    for policy in ("truncate-left", "truncate-right"):
        one = run(max_len=1, overflow=policy)
        assert isinstance(one, RowError) and one.reason == "no_trained_tokens", policy
    [two] = run(max_len=2, overflow="truncate-left")
    assert two["num_trained"] == 1
    single = run(max_len=1, overflow="split")
    assert isinstance(single, RowError) and single.reason == "too_long"


def test_a_turn_rendered_like_a_later_one_is_not_taken_for_it() -> None:
    """qwen3 renders only the turn after the last user message with a thinking block. An earlier trained turn's
    prefix render then matches the last turn's text, not its own: the row is rejected, never given the later
    turn's mask. Trained last, the same row is exact."""
    loaded = load_tokenizer("mistral:tekken")
    encoder = Encoder(loaded, load_template("qwen3"), EncodeOptions())

    def conversation(first: int, last: int) -> dict[str, Any]:
        return _row([_msg("user", "Is water wet?"), _msg("assistant", "Yes.", weight=first),
                     _msg("user", "Is fire hot?"), _msg("assistant", "Yes.", weight=last)])  # fmt: skip

    [wrong] = encoder.encode([conversation(1, 0)])
    assert isinstance(wrong, RowError) and wrong.reason == "template_not_prefix_stable"
    [[right]] = encoder.encode([conversation(0, 1)])
    trained = [t for t, lab in zip(right["input_ids"], right["labels"], strict=True) if lab != -100]
    assert loaded.tokenizer.decode(trained) == "<think>\n\n</think>\n\nYes.<|im_end|>\n"
    assert right["labels"][-len(trained) - 1] == -100


def test_a_later_message_the_template_rewrites_does_not_unplace_a_quoting_turn(tmp_path: Path) -> None:
    """mistral_v3 writes tool results as JSON (quotes escaped), so a tool result is never found as written. That
    the trained turn before it quotes the same text is no sign of a moved turn: the row keeps its exact mask."""
    tools = [{"type": "function", "function": {"name": "lookup", "description": "d",
                                               "parameters": {"type": "object", "properties": {}}}}]  # fmt: skip
    call = [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]
    messages = [
        {"role": "user", "content": "What did he say?"},
        {"role": "assistant", "content": 'He said "hi".', "weight": 1},
        {"role": "user", "content": "Check the log"},
        {"role": "assistant", "content": "", "tool_calls": call, "weight": 0},
        {"role": "tool", "tool_call_id": "c1", "content": 'He said "hi".'},
        {"role": "assistant", "content": "Confirmed.", "weight": 0},
    ]
    src = tmp_path / "quote.jsonl"
    src.write_text(json.dumps({"messages": messages, "tools": tools}) + "\n")
    out = tmp_path / "out"
    convert(ConvertConfig(inputs=(str(src),), out=out, tokenizer="mistral:tekken", template="mistral_v3", workers=1,
                          cache=False))  # fmt: skip
    [row] = pq.read_table(out / "part-00000.parquet").to_pylist()
    trained = [t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != -100]
    assert load_tokenizer("mistral:tekken").tokenizer.decode(trained) == ' He said "hi".</s>'


def test_text_and_plain_prompt_completion() -> None:
    loaded = load_tokenizer("mistral:v3")
    tok = loaded.tokenizer
    encoder = Encoder(loaded, load_template("tokenizer", loaded.chat_template), EncodeOptions())
    text_row = {"id": "t", "kind": "text", "text": "Hello world", "source_file": "t", "source_row": 0}
    pc_row = {"id": "p", "kind": "prompt_completion", "prompt": "The capital of Italy is", "completion": " Rome.",
              "messages": None, "completion_messages": None, "source_file": "t", "source_row": 1}  # fmt: skip
    [[text]], [[pc]] = encoder.encode([text_row]), encoder.encode([pc_row])
    assert list(text["input_ids"]) == tok("Hello world")["input_ids"] + [tok.eos_token_id]  # BOS from the tokenizer
    assert text["input_ids"][0] == tok.bos_token_id
    assert list(pc["input_ids"]) == tok("The capital of Italy is Rome.")["input_ids"] + [tok.eos_token_id]
    assert tok.decode([t for t, lab in zip(pc["input_ids"], pc["labels"], strict=True) if lab != -100]) == "Rome.</s>"


def test_manifest_records_tokenizer_template_and_checks(tmp_path: Path) -> None:
    done = convert(
        ConvertConfig(
            inputs=(str(FIXTURES / "formats"),), out=tmp_path / "o", tokenizer="mistral:tekken", template="chatml"
        )
    )
    m = done.manifest
    assert m["stage"] == "tokenized"
    assert m["tokenizer"]["fingerprint"] == load_tokenizer("mistral:tekken").fingerprint
    assert m["template"]["text"] == load_template("chatml").text
    assert len(m["template"]["sha256"]) == 64
    assert m["conformance"]["eot_trained"] is True
    assert m["conformance"]["prefix_stable"] is True
    assert m["totals"]["rows_read"] == m["totals"]["rows_kept"] + m["totals"]["rows_rejected"]
    assert sum(m["mask_methods"].values()) > 0


REPEATED = [_msg("user", "Say OK"), _msg("assistant", "OK"), _msg("user", "again\n"), _msg("assistant", "OK")]


@pytest.mark.parametrize("template", ["chatml", "llama3", "gemma3", "qwen2_5", "phi4"])
@pytest.mark.parametrize(
    ("options", "messages", "trained"),
    [
        (EncodeOptions(train_on="last"), REPEATED, [False, False, False, True]),
        (EncodeOptions(), [REPEATED[0], {**REPEATED[1], "train": False}, _msg("user", "a"), REPEATED[3]],
         [False, False, False, True]),
        (EncodeOptions(), [REPEATED[0], {**REPEATED[1], "weight": 0.0}, *REPEATED[2:]], [False, False, False, True]),
    ],
)  # fmt: skip
def test_an_untrained_turn_is_never_taken_for_a_later_one_with_the_same_text(
    marker_tokenizer: str, template: str, options: EncodeOptions, messages: list[dict[str, Any]], trained: list[bool]
) -> None:
    from oracles import Renders, prefix_oracle_labels

    loaded = load_tokenizer(marker_tokenizer)
    chat = load_template(template)
    [[out]] = Encoder(loaded, chat, options).encode([_row(messages)])
    expected = prefix_oracle_labels(Renders(loaded.tokenizer, chat.text, template_messages(messages), None), trained)
    assert list(out["input_ids"]) == reference_ids(loaded.tokenizer, chat.text, template_messages(messages), None)
    assert list(out["labels"]) == expected


def test_a_searched_turn_comes_after_the_untrained_turns_before_it() -> None:
    """mistral_v3 moves the system prompt to the last user turn, so its turns are searched for in the full render:
    an untrained tool call identical to a later trained one must not take its place."""
    call = [{"id": "abcdefghi", "name": "get_w", "arguments": '{"city": "Paris"}'}]
    result = {"role": "tool", "content": "sunny", "tool_call_id": "abcdefghi"}
    messages = [
        _msg("system", "Be brief."), _msg("user", "Weather?"),
        _msg("assistant", None, tool_calls=call, train=False), _msg(**{**_msg("tool", "sunny"), **result}),
        _msg("assistant", "Sunny.", train=False), _msg("user", "And now?"),
        _msg("assistant", None, tool_calls=call), _msg(**{**_msg("tool", "sunny"), **result}),
        _msg("assistant", "Still sunny."), _msg("user", "Thanks"), _msg("assistant", "Welcome."),
    ]  # fmt: skip
    loaded = load_tokenizer("mistral:v3")
    encoder = Encoder(loaded, load_template("mistral_v3"), EncodeOptions())
    [[out]] = encoder.encode([_row(messages)])
    tok = loaded.tokenizer
    trained = [i for i, label in enumerate(out["labels"]) if label != -100]
    text = tok.decode(out["input_ids"])
    first_call = tok.decode(out["input_ids"][: trained[0]])
    assert "And now?" in first_call  # nothing before the second user question is trained
    assert text.count("[TOOL_CALLS]") == 2
    assert tok.decode([out["input_ids"][i] for i in trained]).count("get_w") == 1


@pytest.mark.parametrize("train_on", ["last", "all"])
def test_a_template_that_rewrites_earlier_turns_serves_train_on_last_and_all(tmp_path: Path, train_on: str) -> None:
    """qwen3 drops earlier turns' reasoning once later turns follow, so it cannot train every assistant turn; with
    --train-on last or all it need only place what those train, and the run goes ahead."""
    loaded = load_tokenizer("mistral:tekken")
    qwen3 = load_template("qwen3")
    with pytest.raises(TemplateError, match="try --train-on last"):
        check_conformance(Encoder(loaded, qwen3, EncodeOptions()))
    conformance = check_conformance(Encoder(loaded, qwen3, EncodeOptions(train_on=train_on)))
    assert conformance.eot_trained and conformance.eot_text.startswith("<|im_end|>")
    data = tmp_path / "chat.jsonl"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!", "reasoning": "greet"},
                {"role": "user", "content": "bye"}, {"role": "assistant", "content": "Bye!", "reasoning": "wave"}]  # fmt: skip
    data.write_text(json.dumps({"messages": messages}) + "\n")
    config = ConvertConfig(inputs=(str(data),), out=tmp_path / "out", tokenizer="mistral:tekken", template="qwen3",
                           train_on=train_on, cache=False)  # fmt: skip
    result = convert(config)
    assert result.rows_kept == 1
    import pyarrow.parquet as pq

    (row,) = pq.read_table(tmp_path / "out" / "part-00000.parquet").to_pylist()
    tok = loaded.tokenizer
    trained = tok.decode([t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100])
    if train_on == "last":
        assert trained == "<think>\nwave\n</think>\n\nBye!<|im_end|>\n"
    else:
        assert trained == tok.decode(row["input_ids"])


@pytest.fixture(scope="module")
def eos_appending_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Tekken saved as a folder whose post-processor wraps every text in BOS ... EOS (as some tokenizers do)."""
    folder = tmp_path_factory.mktemp("tekken-bos-eos")
    load_tokenizer("mistral:tekken").tokenizer.save_pretrained(str(folder))
    spec = json.loads((folder / "tokenizer.json").read_text())
    bos, eos = {"SpecialToken": {"id": "<s>", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}
    spec["post_processor"] = {
        "type": "TemplateProcessing", "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}, eos],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}, eos],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]},
                           "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}},
    }  # fmt: skip
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": True, "add_eos_token": True}))
    load_tokenizer.cache_clear()
    return str(folder)


@pytest.mark.parametrize("tokenizer", ["mistral:v3", "eos_appending"])
@pytest.mark.parametrize(("prompt", "completion"), [("Hel", "lo world"), ("", "Hello there"), (" ", "Hi"),
                                                    ("Q: 2+2=", "4")])  # fmt: skip
def test_a_plain_completion_trains_its_tokens_and_one_eos(
    request: pytest.FixtureRequest, tokenizer: str, prompt: str, completion: str
) -> None:
    """Whatever tokens the prompt ends in (a prompt inside the first token, a tokenizer that adds BOS/EOS itself),
    the completion's tokens and exactly one EOS are trained, and nothing of the prompt after BOS."""
    name = request.getfixturevalue("eos_appending_tokenizer") if tokenizer == "eos_appending" else tokenizer
    loaded = load_tokenizer(name)
    tok = loaded.tokenizer
    row = {**_row([]), "kind": "prompt_completion", "messages": None, "prompt": prompt, "completion": completion}
    [[out]] = Encoder(loaded, load_template("chatml"), EncodeOptions()).encode([row])
    ids, labels = list(out["input_ids"]), list(out["labels"])
    full = tok(prompt + completion)["input_ids"]
    assert ids == (full if full[-1] == tok.eos_token_id else [*full, tok.eos_token_id])
    assert ids.count(tok.eos_token_id) == 1 and labels[-1] == tok.eos_token_id
    trained = tok.decode([t for t, label in zip(ids, labels, strict=True) if label != -100], skip_special_tokens=True)
    assert trained.strip().endswith(completion.strip())


def test_a_split_prompt_ends_before_the_eos_a_tokenizer_appends(eos_appending_tokenizer: str) -> None:
    loaded = load_tokenizer(eos_appending_tokenizer)
    tok = loaded.tokenizer
    row = {**_row([]), "kind": "preference", "messages": None, "prompt": "Say hi ", "chosen": "hi", "rejected": "bye",
           "chosen_messages": None, "rejected_messages": None}  # fmt: skip
    [[out]] = Encoder(loaded, load_template("chatml"), EncodeOptions()).encode([row])
    assert tok.eos_token_id not in list(out["prompt_input_ids"])
    assert list(out["chosen_input_ids"])[-1] == tok.eos_token_id
    assert list(out["rejected_input_ids"])[-1] == tok.eos_token_id


def test_a_template_that_fails_on_a_prefix_of_one_row_rejects_that_row(tmp_path: Path) -> None:
    """A prefix render (for a turn's trained span) that raises is the row's template_error, as a full render's is,
    not the end of the convert."""
    template = tmp_path / "picky.jinja"
    template.write_text(
        "{% if add_generation_prompt and messages|length > 2 %}{{ raise_exception('no generation prompt after ' ~ "
        "messages|length ~ ' messages') }}{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n"
        "{{ m.content | trim }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    rows = [  # the second row's tool call takes it through prefix renders
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": "checking", "tool_calls": [call]},
         {"role": "tool", "tool_call_id": "c1", "content": "sunny"}, {"role": "assistant", "content": "It is sunny."}],
    ]  # fmt: skip
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows))
    config = ConvertConfig(inputs=(str(data),), out=tmp_path / "o", tokenizer="mistral:tekken", template=str(template),
                           allow_template_warnings=True)  # fmt: skip
    result = convert(config)
    assert (result.rows_kept, result.rows_rejected) == (1, 1)
    (reject,) = [json.loads(line) for line in (tmp_path / "o" / "rejects.jsonl").read_text().splitlines()]
    assert (reject["source_row"], reject["reason"]) == (1, "template_error")
    assert "no generation prompt after 3 messages" in reject["message"]


def _trained(out: Path) -> tuple[list[int], list[int]]:
    """The first shard row's ids and the positions of its trained tokens."""
    import pyarrow.parquet as pq

    row = pq.read_table(out / "part-00000.parquet").to_pylist()[0]
    return row["input_ids"], [i for i, label in enumerate(row["labels"]) if label != -100]


def test_a_reply_quoted_in_the_system_prompt_is_never_taken_for_the_reply(tmp_path: Path) -> None:
    """Few-shot examples written in the template's own format inside the system prompt: the mask is on the real
    last turn, not on its copy in the system text."""
    system = (
        "Answer greetings briefly. Example:\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    )
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}]  # fmt: skip
    data = tmp_path / "few_shot.jsonl"
    data.write_text(json.dumps({"messages": messages}) + "\n")
    convert(ConvertConfig(inputs=(str(data),), out=tmp_path / "o", tokenizer="mistral:tekken", template="chatml"))
    ids, trained = _trained(tmp_path / "o")
    tok = load_tokenizer("mistral:tekken").tokenizer
    template = load_template("chatml", None).text
    assert ids == list(reference_ids(tok, template, messages, None))
    prompt = tok.apply_chat_template(
        messages[:2], tokenize=True, return_dict=True, add_generation_prompt=True, chat_template=template
    )["input_ids"]
    assert trained == list(range(len(prompt), len(ids)))  # the copy in the system prompt decodes the same
    assert tok.decode(ids[len(prompt) :]) == "Hello!<|im_end|>\n"


def test_a_reply_quoted_in_an_earlier_user_turn_is_never_taken_for_the_reply(tmp_path: Path) -> None:
    """A template that moves the system prompt (prefix renders, searched turns): the turn is searched for after the
    user and tool messages before it."""
    call = {
        "id": "abc123xyz",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    messages = [
        {"role": "system", "content": "Be terse."}, {"role": "user", "content": "Please answer exactly: Hello!</s>"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "abc123xyz", "content": "21C"}, {"role": "assistant", "content": "21C."},
    ]  # fmt: skip
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Get weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}  # fmt: skip
    data = tmp_path / "quoted.jsonl"
    data.write_text(json.dumps({"messages": messages, "tools": [tool]}) + "\n")
    convert(ConvertConfig(inputs=(str(data),), out=tmp_path / "o", tokenizer="mistral:v3", template="tokenizer"))
    ids, trained = _trained(tmp_path / "o")
    tok = load_tokenizer("mistral:v3").tokenizer
    first_turn_end = ids.index(tok.convert_tokens_to_ids("[/INST]"))
    assert min(trained) > first_turn_end  # not the quote inside the first user turn
    assert tok.decode([ids[i] for i in trained]).startswith("Hello!</s>")


def test_drop_turns_never_drops_the_last_answer_of_a_conversation_ending_on_a_user_turn(tmp_path: Path) -> None:
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "long question " * 30},
                {"role": "assistant", "content": "the answer"}, {"role": "user", "content": "thanks, bye"}]  # fmt: skip
    data = tmp_path / "ends_on_user.jsonl"
    data.write_text(json.dumps({"messages": messages}) + "\n")
    config = ConvertConfig(inputs=(str(data),), out=tmp_path / "o", tokenizer="mistral:tekken", template="chatml",
                           train_on="all", max_len=100, overflow="drop-turns")  # fmt: skip
    result = convert(config)
    assert (result.rows_kept, result.rows_rejected) == (0, 1)
    (reject,) = [json.loads(line) for line in (tmp_path / "o" / "rejects.jsonl").read_text().splitlines()]
    assert reject["reason"] == "too_long"


def test_a_template_that_moves_the_system_prompt_still_places_turns_by_search() -> None:
    """mistral_v3 writes the system prompt into the last user turn: searched for in its place it is not found in
    order, so the turns are searched for without it rather than through prefix renders of every turn."""
    loaded = load_tokenizer("mistral:v3")
    encoder = Encoder(loaded, load_template("mistral_v3"), EncodeOptions())
    messages = [_msg("system", "Be brief."), _msg("user", "q"), _msg("assistant", "a"), _msg("user", "more"),
                _msg("assistant", "done")]  # fmt: skip
    [[out]] = encoder.encode([_row(messages)])
    assert encoder.method_counts == {"span": 1, "prefix": 0}
    by_renders = Encoder(loaded, load_template("mistral_v3"), EncodeOptions())
    by_renders.shape = None  # no searched spans: every turn placed by prefix renders
    [[expected]] = by_renders.encode([_row(messages)])
    assert by_renders.method_counts == {"span": 0, "prefix": 1}
    assert list(out["labels"]) == list(expected["labels"])
    assert sum(label != -100 for label in out["labels"]) > 0
