"""Independent references for tokenized rows, computed with transformers alone (never with dsprep's encoder)."""

from __future__ import annotations

from typing import Any


def reference_ids(tok: Any, template: str, messages: list[dict[str, Any]], tools: Any) -> list[int]:
    """`tokenizer.apply_chat_template(..., tokenize=True)`: what the model sees at inference."""
    out = tok.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True, chat_template=template)
    return list(out["input_ids"])


class Renders:
    """One conversation as transformers renders it, each render made once: its reference ids, and the renders of its
    prefixes with and without the generation prompt."""

    def __init__(self, tok: Any, template: str, messages: list[dict[str, Any]], tools: Any) -> None:
        self.tok, self.template, self.messages, self.tools = tok, template, messages, tools
        self._texts: dict[tuple[int, bool], str] = {}
        self._ids: list[int] | None = None
        self._mask: list[int] | None = None

    @property
    def ids(self) -> list[int]:
        """`reference_ids` of the whole conversation."""
        if self._ids is None:
            self._ids = reference_ids(self.tok, self.template, self.messages, self.tools)
        return self._ids

    @property
    def generation_mask(self) -> list[int]:
        """transformers' `{% generation %}` mask (1 where a token overlaps a generation block); the same call gives
        the reference ids."""
        if self._mask is None:
            out = self.tok.apply_chat_template(
                self.messages, tools=self.tools, tokenize=True, return_dict=True, chat_template=self.template,
                return_assistant_tokens_mask=True,
            )  # fmt: skip
            self._ids, self._mask = list(out["input_ids"]), list(out["assistant_masks"])
        return self._mask

    def text(self, upto: int, generation_prompt: bool) -> str:
        """The render of the first `upto` messages (the generation prompt after them, where asked)."""
        key = (upto, generation_prompt)
        if key not in self._texts:
            if not upto and not generation_prompt:
                self._texts[key] = ""
            else:
                self._texts[key] = self.tok.apply_chat_template(
                    self.messages[:upto], tools=self.tools, tokenize=False, add_generation_prompt=generation_prompt,
                    chat_template=self.template,
                )  # fmt: skip
        return self._texts[key]

    def token_counts(self, texts: list[str]) -> list[int]:
        """How many tokens each text is (as `apply_chat_template` tokenizes a render: no special tokens added); the
        whole conversation's render is as long as its reference ids."""
        whole = self.text(len(self.messages), False)
        todo = sorted({t for t in texts if t and t != whole})
        counts = (
            dict(zip(todo, map(len, self.tok(todo, add_special_tokens=False)["input_ids"]), strict=True))
            if todo
            else {}
        )
        counts.update({"": 0, whole: len(self.ids)})
        return [counts[t] for t in texts]


def prefix_renders_are_prefixes(renders: Renders) -> bool:
    """Whether every prefix render (with and without the generation prompt) is a prefix of the full render."""
    messages = renders.messages
    full = renders.text(len(messages), False)
    for i in range(1, len(messages)):
        if not full.startswith(renders.text(i, False)):
            return False
        if messages[i]["role"] == "assistant" and not full.startswith(renders.text(i, True)):
            return False
    return True


def prefix_oracle_labels(renders: Renders, trained: list[bool]) -> list[int]:
    """Labels by incremental prefix rendering: message i trains tok(render(m[:i+1])) beyond tok(render(m[:i], gen))."""
    ids = renders.ids
    labels = [-100] * len(ids)
    spans = [
        (renders.text(i, renders.messages[i]["role"] == "assistant"), renders.text(i + 1, False))
        for i, flag in enumerate(trained)
        if flag
    ]
    counts = renders.token_counts([text for span in spans for text in span])
    for start, end in zip(counts[::2], counts[1::2], strict=True):
        labels[start:end] = ids[start:end]
    return labels
