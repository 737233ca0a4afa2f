"""Independent references for tokenized rows, computed with transformers alone (never with dsprep's encoder)."""

from __future__ import annotations

from typing import Any


def reference_ids(tok: Any, template: str, messages: list[dict[str, Any]], tools: Any) -> list[int]:
    """`tokenizer.apply_chat_template(..., tokenize=True)`: what the model sees at inference."""
    out = tok.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True, chat_template=template)
    return list(out["input_ids"])


def _render(tok: Any, template: str, messages: list[dict[str, Any]], tools: Any, generation_prompt: bool) -> str:
    if not messages and not generation_prompt:
        return ""
    return tok.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt, chat_template=template
    )


def prefix_renders_are_prefixes(tok: Any, template: str, messages: list[dict[str, Any]], tools: Any) -> bool:
    """Whether every prefix render (with and without the generation prompt) is a prefix of the full render."""
    full = _render(tok, template, messages, tools, False)
    for i in range(1, len(messages)):
        if not full.startswith(_render(tok, template, messages[:i], tools, False)):
            return False
        if messages[i]["role"] == "assistant" and not full.startswith(
            _render(tok, template, messages[:i], tools, True)
        ):
            return False
    return True


def prefix_oracle_labels(
    tok: Any, template: str, messages: list[dict[str, Any]], tools: Any, trained: list[bool]
) -> list[int]:
    """Labels by incremental prefix rendering: message i trains tok(render(m[:i+1])) beyond tok(render(m[:i], gen))."""
    ids = reference_ids(tok, template, messages, tools)
    labels = [-100] * len(ids)
    for i, flag in enumerate(trained):
        if not flag:
            continue
        before = _render(tok, template, messages[:i], tools, messages[i]["role"] == "assistant")
        through = _render(tok, template, messages[: i + 1], tools, False)
        start = len(tok(before, add_special_tokens=False)["input_ids"]) if before else 0
        end = len(tok(through, add_special_tokens=False)["input_ids"])
        labels[start:end] = ids[start:end]
    return labels


def generation_mask(tok: Any, template: str, messages: list[dict[str, Any]], tools: Any) -> list[int]:
    """transformers' `{% generation %}` mask (1 where a token overlaps a generation block)."""
    out = tok.apply_chat_template(
        messages, tools=tools, tokenize=True, return_dict=True, chat_template=template,
        return_assistant_tokens_mask=True,
    )  # fmt: skip
    return list(out["assistant_masks"])
