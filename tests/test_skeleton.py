"""Skeleton rendering: which templates are proven content-opaque, and that pasting into a skeleton gives exactly the
template's own render.

- every shipped template the proof accepts renders 600 generated conversations (contents with edge whitespace, empty
  and missing contents, template markup, placeholder look-alikes, non-ASCII; odd role orders; with and without the
  generation prompt) the same from skeletons as in full, and raises where the full render raises;
- templates that look at contents (filters, methods, comparisons, captured output, aliases, serialized messages) are
  refused with a reason naming what they do;
- a template that forges a placeholder, rows with tools or other message fields, and over-long conversations are
  rendered in full.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

import dsprep.skeleton
from dsprep.encode import EncodeOptions, Encoder
from dsprep.errors import TemplateError
from dsprep.skeleton import SkeletonRenderer, opaque_content
from dsprep.templates import ChatTemplate, load_template, render, shipped_template_names
from dsprep.tokenizers import load_tokenizer

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}
# the shipped templates proven content-opaque; the others trim contents, look inside them or call strftime_now
OPAQUE = {"alpaca", "chatml", "granite", "mistral_v1", "mistral_v7", "olmo", "phi3", "phi4", "qwen2_5", "smollm",
          "vicuna", "zephyr"}  # fmt: skip
PIECES = ["hi", " ", "\n", "  lead", "trail  ", "", "<|im_end|>", "{{ x }}", "\ue000dsprep content 0\ue001",
          "\ue000dsprep message 1\ue001", "ünï ✓", "\t", "[INST]", "0"]  # fmt: skip


def _content(rng: random.Random) -> str:
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 5)))


def _conversation(rng: random.Random) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if rng.random() < 0.5:
        messages.append({"role": "system", "content": _content(rng)})
    for i in range(rng.randint(1, 6)):
        if rng.random() < 0.15:
            role = rng.choice(["user", "assistant", "system", "tool"])
        else:
            role = "user" if i % 2 == 0 else "assistant"
        message: dict[str, Any] = {"role": role, "content": _content(rng)}
        if rng.random() < 0.1:
            del message["content"]
        if rng.random() < 0.05:
            message["name"] = rng.choice(["alice", "bob"])
        messages.append(message)
    return messages


def _full(template: ChatTemplate, messages: list[dict[str, Any]], prompt: bool) -> str | None:
    try:
        return render(template, messages, add_generation_prompt=prompt, special_tokens=SPECIAL)
    except TemplateError:
        return None


def test_the_shipped_templates_proven_opaque() -> None:
    found = {name for name in shipped_template_names() if opaque_content(load_template(name)) is None}
    assert found == OPAQUE


@pytest.mark.parametrize("name", sorted(OPAQUE))
def test_skeleton_renders_equal_full_renders(name: str) -> None:
    template = load_template(name)
    skeletons = SkeletonRenderer(template, SPECIAL)
    rng = random.Random(name)
    pasted = 0
    for _ in range(600):
        messages, prompt = _conversation(rng), rng.random() < 0.3
        expected = _full(template, messages, prompt)
        got = skeletons.render(messages, generation_prompt=prompt)
        if got is not None:
            pasted += 1
            assert got == expected, (messages, prompt)
    assert pasted == skeletons.pasted > 200  # most conversations come from a skeleton
    assert len(skeletons._shapes) < pasted  # and shapes repeat


REFUSED = {
    "{% for m in messages %}{{ m['content'] | trim }}{% endfor %}": "goes into filter",
    "{% for m in messages %}{% if 'x' in m.content %}X{% endif %}{{ m.content }}{% endfor %}": "goes into operand",
    "{% for m in messages %}{% if m.content == 'a' %}A{% endif %}{% endfor %}": "goes into compare",
    "{% for m in messages %}{{ m.content.strip() }}{% endfor %}": "goes into getattr",
    "{% for m in messages %}{{ m.content[1:] }}{% endfor %}": "goes into getitem",
    "{% for m in messages %}{{ m.content * 2 }}{% endfor %}": "goes into mul",
    "{% for m in messages %}{{ '%s' % m.content }}{% endfor %}": "goes into mod",
    "{% for m in messages %}{{ raise_exception(m.content) }}{% endfor %}": "goes into call",
    "{% for m in messages %}{{ [m.content] | join('') | trim }}{% endfor %}": "goes into list",
    "{% for m in messages %}{{ ('a' ~ m.content) | trim }}{% endfor %}": "goes into filter",
    "{% for m in messages %}{{ (m.content if m.content else 'x') | trim }}{% endfor %}": "goes into filter",
    "{% for m in messages %}{{ m.get('content', '') | trim }}{% endfor %}": "goes into filter",
    "{% set c = messages[0]['content'] %}{{ c | trim }}": "goes into filter",
    "{% set first = messages[0] %}{{ first.content | upper }}": "goes into filter",
    "{% for m in messages %}{% if loop.previtem %}{{ loop.previtem.content | upper }}{% endif %}{% endfor %}": "filter",
    "{% set ns = namespace(c='') %}{% for m in messages %}{% set ns.c = m.content %}{% endfor %}{{ ns.c }}": "assign",
    "{{ messages | tojson }}": "the messages list is used",
    "{% for m in messages | selectattr('role') %}{{ m.content }}{% endfor %}": "the messages list is used",
    "{{ (messages | last).content }}": "the messages list is used",
    "{% for m in messages %}{{ m | tojson }}{% endfor %}": "a message is used",
    "{% for m in messages %}{% for k, v in m.items() %}{{ v }}{% endfor %}{% endfor %}": "a message is used",
    "{% for m in messages %}{% for k, v in m['items']() %}{{ v }}{% endfor %}{% endfor %}": "a message is used",
    "{% for m in messages %}{% for k in ['content'] %}{{ m[k] }}{% endfor %}{% endfor %}": "a message is used",
    "{% for m in messages %}{% if 'role' in m in [m] %}x{% endif %}{% endfor %}": "a message is used",
    "{% macro f() %}{% for m in messages %}{{ m.content }}{% endfor %}{% endmacro %}{{ f() | trim }}": "macro",
    "{% set x %}{% for m in messages %}{{ m.content }}{% endfor %}{% endset %}{{ x | upper }}": "assignblock",
    "{% filter upper %}{% for m in messages %}{{ m.content }}{% endfor %}{% endfilter %}": "filterblock",
    "{% autoescape true %}{% for m in messages %}{{ m.content }}{% endfor %}{% endautoescape %}": "autoescaping",
    "{{ strftime_now('%Y') }}{% for m in messages %}{{ m.content }}{% endfor %}": "strftime_now",
    "{% set x = messages %}{% set x = messages[0].content %}{{ x }}": "holds a",
    "{{ '\\ue000' }}{% for m in messages %}{{ m.content }}{% endfor %}": "placeholder",
    # strings built from contents but not written out: their size could pass a limit the output does not
    "{% for m in messages %}{% if m.content + m.content %}x{% endif %}{% endfor %}": "goes into if",
    "{% for m in messages %}{{ (m.content ~ m.content) and 'x' }}{% endfor %}": "goes into and",
    "{% for m in messages %}{{ ((m.content + 'a') if m.role else 'b') or 'x' }}{% endfor %}": "goes into or",
    "{% set ns = namespace() %}{% for m in messages %}{% set x = m.content + 'a' %}{% endfor %}": "goes into assign",
    "{% for m in messages %}{% set x = m.content or 'a' %}{{ x }}{% endfor %}": "stored in a variable",
}


@pytest.mark.parametrize("text", list(REFUSED))
def test_templates_that_look_at_contents_are_refused(text: str) -> None:
    problem = opaque_content(ChatTemplate("t", text, "test"))
    assert problem is not None and REFUSED[text] in problem
    skeletons = SkeletonRenderer(ChatTemplate("t", text, "test"), SPECIAL)
    assert skeletons.render([{"role": "user", "content": " a "}]) is None


ACCEPTED = [
    "{% for m in messages %}{{ m.role + ': ' + m.content }}{% endfor %}",
    "{% for m in messages %}{{ m.get('content', '') }}{% endfor %}",
    "{% for m in messages %}{% if 'content' in m and m.content is string %}{{ m.content }}{% endif %}{% endfor %}",
    "{% if messages[0].role == 'system' %}{% set sys = messages[0].content %}{% set rest = messages[1:] %}"
    "{% else %}{% set sys = '' %}{% set rest = messages %}{% endif %}{{ sys }}"
    "{% for m in rest %}{{ (m.content or '-') ~ '\\n' }}{% endfor %}",
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_templates_that_only_write_contents_are_accepted(text: str) -> None:
    template = ChatTemplate("t", text, "test")
    assert opaque_content(template) is None
    skeletons = SkeletonRenderer(template, SPECIAL)
    rng = random.Random(text)
    for _ in range(200):
        messages = _conversation(rng)
        assert skeletons.render(messages) in (None, _full(template, messages, False))
    assert skeletons.pasted > 100


def test_a_forged_placeholder_is_rendered_in_full() -> None:
    # the template writes one spelling of message 0's placeholder itself: the two skeletons differ
    forged = "{{ '%c' % 57344 }}dsprep content 0{{ '%c' % 57345 }}{% for m in messages %}{{ m.content }}{% endfor %}"
    template = ChatTemplate("forged", forged, "test")
    assert opaque_content(template) is None
    messages = [{"role": "user", "content": "hello"}]
    assert SkeletonRenderer(template, SPECIAL).render(messages) is None
    assert render(template, messages) == "\ue000dsprep content 0\ue001hello"


def test_messages_with_other_fields_or_odd_values_are_rendered_in_full() -> None:
    skeletons = SkeletonRenderer(load_template("chatml"), SPECIAL)
    assert skeletons.render([{"role": "user", "content": "hi"}]) == "<|im_start|>user\nhi<|im_end|>\n"
    assert skeletons.render([{"role": "assistant", "content": "", "tool_calls": []}]) is None
    assert skeletons.render([{"role": "user", "content": [{"type": "text", "text": "hi"}]}]) is None
    assert skeletons.render([{"role": "user\ue000", "content": "hi"}]) is None
    assert skeletons.render([{"role": "user", "name": 3, "content": "hi"}]) is None


def test_absent_none_and_empty_fields_are_different_shapes() -> None:
    text = (
        "{% for m in messages %}{{ m.role }}:{% if m.content is none %}none{% elif m.content is defined %}"
        "[{{ m.content }}]{% else %}absent{% endif %}{% if 'name' in m %}({{ m.name }}){% endif %};{% endfor %}"
    )
    template = ChatTemplate("fields", text, "test")
    assert opaque_content(template) is None
    skeletons = SkeletonRenderer(template, SPECIAL)
    variants = [
        {"role": "user", "content": ""},
        {"role": "user", "content": None},
        {"role": "user"},
        {"role": "user", "content": "x"},
        {"role": "user", "content": "", "name": None},
        {"role": "user", "content": "", "name": "a"},
    ]
    for message in variants * 2:  # the second time, each comes from its skeleton
        assert skeletons.render([message]) == render(template, [message]), message
    assert skeletons.pasted == 2 * len(variants)
    assert len(skeletons._shapes) == len(variants)


def test_a_conversation_longer_than_the_size_limits_is_rendered_in_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dsprep.skeleton, "MAX_TEXT", 40)
    skeletons = SkeletonRenderer(load_template("chatml"), SPECIAL)
    assert skeletons.render([{"role": "user", "content": "short"}]) is not None
    assert skeletons.render([{"role": "user", "content": "x" * 20}]) is None


def test_the_encoder_renders_tool_rows_in_full_and_others_from_skeletons() -> None:
    encoder = Encoder(load_tokenizer("mistral:tekken"), load_template("chatml"), EncodeOptions())
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert encoder.render(messages, tools) == render(encoder.template, messages, tools=tools,
                                                     special_tokens=encoder.special)  # fmt: skip
    assert encoder.skeletons.pasted == 0
    assert encoder.render(messages, None) == render(encoder.template, messages, special_tokens=encoder.special)
    assert encoder.skeletons.pasted == 1
