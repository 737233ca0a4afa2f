"""Stage 3: render and tokenize rows into ``input_ids`` and exact ``labels``.

The mask is defined by prefix rendering: assistant message *i* trains exactly the tokens of
``render(messages[:i+1])`` beyond ``render(messages[:i], add_generation_prompt=True)`` — its content, tool calls and
end-of-turn marker, never the generation-prompt header. We reach that definition without rendering prefixes in the
common case:

1. Probe the template once (`TemplateShape`): the generation prompt ``G``, the text a template writes between ``G``
   and an assistant's content (``pre``), and after it (``S``, e.g. ``<|im_end|>\\n``).
2. Render each conversation once, tokenize the whole text once (batched, with offsets), and find each assistant
   content in order; accept the span ``[start - len(pre), end + len(S))`` only where the text before it is exactly
   ``G + pre`` and the text after it starts with ``S``. Character spans map to tokens through the encodings'
   offsets: a token is trained when it overlaps a span (the rule `apply_chat_template` uses for
   ``{% generation %}`` masks).
3. Where that check fails (tool calls, reasoning, templates that move content), fall back to prefix renders of the
   same text (still one tokenization); where even those are not prefixes of the full render (a template that
   rewrites history, e.g. drops earlier thinking), the row is rejected with ``template_not_prefix_stable`` — a
   wrong mask is never written.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from dsprep.errors import RowError, TemplateError, TemplateTimeoutError
from dsprep.fast_bpe import FastEncoder, FastEncoding
from dsprep.schema import TOKENIZED_COLUMNS
from dsprep.skeleton import SkeletonRenderer
from dsprep.templates import ChatTemplate, render, template_messages, template_tools
from dsprep.tokenizers import LoadedTokenizer

__all__ = ["EncodeOptions", "Encoder", "TemplateShape", "probe_shape"]

IGNORE = -100
TrainOn = Literal["assistant", "all", "last"]
Overflow = Literal["drop", "truncate-right", "truncate-left", "drop-turns", "split"]
Row = dict[str, Any]
Span = tuple[int, int]
PROBE_USER = "dsprep probe question 7f3a"
PROBE_ANSWER = "dsprep probe answer 7f3a"


@dataclass(frozen=True, kw_only=True)
class EncodeOptions:
    """How rows are masked and cut.

    train_on: "assistant" trains assistant turns (per-message `train`/`weight` from the data override), "all" every
        token, "last" only the last assistant turn.
    max_len: rows longer than this many tokens follow `overflow` (None: no limit).
    overflow: "drop" rejects them (reason too_long); "truncate-right"/"truncate-left" cut them; "drop-turns" removes
        the oldest turns after the system message until the row fits, keeping the last assistant turn; "split" cuts
        text rows into chunks (other kinds are dropped).
    """

    train_on: TrainOn = "assistant"
    max_len: int | None = None
    overflow: Overflow = "drop"


@dataclass(frozen=True)
class TemplateShape:
    """What a template writes around an assistant message, learnt from one probe conversation."""

    generation_prompt: str
    assistant_prefix: str
    assistant_suffix: str


def probe_shape(template: ChatTemplate, special_tokens: dict[str, str]) -> TemplateShape | None:
    """Probe a template with a one-turn conversation; None when its layout does not fit the fast path."""
    user = [{"role": "user", "content": PROBE_USER}]
    both = [*user, {"role": "assistant", "content": PROBE_ANSWER}]
    try:
        bare = render(template, user, special_tokens=special_tokens)
        prompt = render(template, user, add_generation_prompt=True, special_tokens=special_tokens)
        full = render(template, both, special_tokens=special_tokens)
    except TemplateTimeoutError:
        raise
    except TemplateError:
        return None
    if not prompt.startswith(bare) or not full.startswith(prompt) or PROBE_ANSWER not in full[len(prompt) :]:
        return None
    piece = full[len(prompt) :]
    at = piece.index(PROBE_ANSWER)
    return TemplateShape(prompt[len(bare) :], piece[:at], piece[at + len(PROBE_ANSWER) :])


def _token_range(enc: Any, start: int, end: int, n_chars: int) -> tuple[int, int] | None:
    """Indices [a, b) of the tokens overlapping characters [start, end), or None if none do."""
    if isinstance(enc, FastEncoding):
        return enc.token_range(start, min(end, n_chars))
    a = None
    for pos in range(start, min(end, n_chars)):
        a = enc.char_to_token(pos)
        if a is not None:
            break
    if a is None:
        return None
    b = None
    for pos in range(min(end, n_chars) - 1, start - 1, -1):
        b = enc.char_to_token(pos)
        if b is not None:
            break
    assert b is not None  # a token covers some char in the range, so the backward scan finds one
    n = len(enc)
    # tokens the tokenizer adds around the text (BOS, EOS) cover no characters (token_to_chars gives None)
    while a > 0 and (chars := enc.token_to_chars(a - 1)) is not None and chars[1] > start:
        a -= 1
    while b + 1 < n and (chars := enc.token_to_chars(b + 1)) is not None and chars[0] < end:
        b += 1
    return a, b + 1


def _labels(ids: np.ndarray, enc: Any, spans: Sequence[Span], n_chars: int) -> np.ndarray:
    labels = np.full_like(ids, IGNORE)
    if isinstance(enc, FastEncoding):
        for a, b in enc.token_ranges([(start, min(end, n_chars)) for start, end in spans]):
            labels[a:b] = ids[a:b]
        return labels
    for start, end in spans:
        found = _token_range(enc, start, end, n_chars)
        if found is not None:
            labels[found[0] : found[1]] = ids[found[0] : found[1]]
    return labels


def _targets(labels: np.ndarray) -> int:
    """The tokens a row trains: its labels other than IGNORE, but for the first, which nothing before it predicts
    (the trainers' loss compares each token's prediction with the next token's label)."""
    return int(np.count_nonzero(labels[1:] != IGNORE))


class Encoder:
    """Turns normalized rows into tokenized rows for one (tokenizer, template, options)."""

    def __init__(self, tokenizer: LoadedTokenizer, template: ChatTemplate, options: EncodeOptions) -> None:
        self.tok = tokenizer
        self.template = template
        self.options = options
        self.special = tokenizer.special_tokens
        self.shape = probe_shape(template, self.special)
        self.skeletons = SkeletonRenderer(template, self.special)
        self.eos_id = tokenizer.eos_token_id
        self.method_counts = {"span": 0, "prefix": 0}

    @property
    def fast(self) -> FastEncoder | None:
        """The tokenizer's tiktoken encoder where it has one (built when first used)."""
        return self.tok.fast

    def training(self, train_on: TrainOn) -> Encoder:
        """This encoder with another `train_on`, sharing its tokenizer, template and method counts."""
        if train_on == self.options.train_on:
            return self
        other = copy.copy(self)
        other.options = replace(self.options, train_on=train_on)
        return other

    # --- rendering -------------------------------------------------------------------------------------------
    def render(self, messages: Sequence[dict[str, Any]], tools: Any, *, generation_prompt: bool = False) -> str:
        """The template's text for a conversation: from its shape's skeleton where the template allows
        (`dsprep.skeleton`), else rendered in full."""
        if tools is None:
            text = self.skeletons.render(messages, generation_prompt=generation_prompt)
            if text is not None:
                return text
        return render(self.template, messages, tools=tools, add_generation_prompt=generation_prompt,
                      special_tokens=self.special)  # fmt: skip

    def _trained(self, messages: Sequence[Row], roles_trained: Sequence[bool] | None) -> list[bool]:
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
        flags = []
        for i, m in enumerate(messages):
            if roles_trained is not None:
                flags.append(roles_trained[i])
            elif self.options.train_on == "last":
                flags.append(i == last)
            elif m.get("train") is not None:
                flags.append(bool(m["train"]))
            elif m.get("weight") is not None:
                flags.append(m["weight"] > 0)
            else:
                flags.append(m["role"] == "assistant")
        return flags

    def _fast_spans(
        self, text: str, messages: Sequence[Row], tmsgs: Sequence[Row], flags: Sequence[bool], *, system: bool = True
    ) -> list[Span] | None:
        """Trained spans found by searching the messages' texts in order, or None where that cannot be told. With
        `system`, the system prompt is searched for in its place too (a reply quoted in it is then never taken for the
        reply); without, it is skipped (a template that moves it, as the mistral family does, to the last turn)."""
        shape = self.shape
        if shape is None:
            return None
        spans: list[Span] = []
        cursor = 0
        head = shape.generation_prompt + shape.assistant_prefix
        # every assistant turn is found in order, trained or not, so that a later turn with the same text is never
        # taken for an earlier one
        for m, t, trained in zip(messages, tmsgs, flags, strict=True):
            if m["role"] == "system" and not system:
                continue
            content = t.get("content")
            if m["role"] == "assistant":
                if t.get("tool_calls") or "reasoning_content" in t or not content:
                    return None
                span = self._find_turn(text, content, cursor, head, shape.assistant_suffix)
                if span is None:
                    return None
                if trained:
                    spans.append((span[0] - len(shape.assistant_prefix), span[1]))
                cursor = span[1]
            elif trained:
                return None
            elif content:
                end = self._end_of(text, content, cursor)
                if end is None:  # the template changed it: then where it ends is not known
                    return None
                cursor = end
        return spans

    @staticmethod
    def _end_of(text: str, content: str, cursor: int) -> int | None:
        """Where a message's text ends in `text`, searched from `cursor`, as written or, where the template trimmed it
        (llama3, gemma3), stripped; None where it is not found."""
        for needle in dict.fromkeys((content, content.strip())):
            at = text.find(needle, cursor)
            if at >= 0:
                return at + len(needle)
        return None

    @staticmethod
    def _find_turn(text: str, content: str, cursor: int, head: str, suffix: str) -> Span | None:
        for needle in dict.fromkeys((content, content.strip())):
            at = text.find(needle, cursor)
            while at >= 0:
                end = at + len(needle)
                if at >= len(head) and text.startswith(head, at - len(head)) and text.startswith(suffix, end):
                    return at, end + len(suffix)
                at = text.find(needle, at + 1)
        return None

    def _prefix_spans(self, text: str, tmsgs: Sequence[Row], tools: Any, flags: Sequence[bool]) -> list[Span]:
        """Spans from prefix renders: message i's turn is render(messages[:i+1]) beyond render(messages[:i], G).

        Where the template is prefix-stable that turn sits exactly at the prefix's end; where it is not (a template
        that moves the system prompt or the tool list to the last user turn), the turn's own text is found in the
        full render after the previous turn. A turn found nowhere is an error, never a guess.
        """
        spans: list[Span] = []
        cursor = 0
        passed: list[int] = []  # untrained messages since the last trained turn (the system prompt may move)
        for i, trained in enumerate(flags):
            if not trained:
                if tmsgs[i]["role"] != "system":
                    passed.append(i)
                continue
            before, through = self._turn_renders(tmsgs, tools, i)
            if text.startswith(through) and len(before) >= cursor:
                start, end = len(before), len(through)
            else:  # searched for after the messages before it, in order, so that none of them (nor a reply quoted
                for j in passed:  # in one) is taken for it
                    if tmsgs[j]["role"] == "assistant":
                        cursor = self._find_after(text, tmsgs, tools, j, cursor, i)
                    elif isinstance(content := tmsgs[j].get("content"), str) and content:
                        past = self._end_of(text, content, cursor)
                        cursor = cursor if past is None else past  # changed by the template: searched from before it
                turn = through[len(before) :]
                start = text.find(turn, cursor)
                if start < 0:
                    raise self._unstable(i)
                end = start + len(turn)
                self._check_followers(text, tmsgs, i, cursor, start, end)
            spans.append((start, end))
            cursor, passed = end, []
        return spans

    def _check_followers(self, text: str, tmsgs: Sequence[Row], i: int, searched_from: int, start: int,
                         end: int) -> None:  # fmt: skip
        """A turn found by search at [start, end) must lie before the messages after it: the same text rendered as a
        later turn (a template that renders only the last turn with its thinking block, so that an earlier turn's
        prefix render matches the last one) is not it. Each later message must be found, in order, past `end`, or
        else not between `searched_from` and `start` either; one the template changed beyond finding (a tool result
        written as JSON) is passed over."""
        cursor = end
        for later in tmsgs[i + 1 :]:
            content = later.get("content")
            if not isinstance(content, str) or not content.strip():
                continue
            past = self._end_of(text, content, cursor)
            if past is not None:
                cursor = past
            elif any(text.find(needle, searched_from, start) >= 0 for needle in (content, content.strip())):
                raise self._unstable(i)

    def _turn_renders(self, tmsgs: Sequence[Row], tools: Any, i: int) -> tuple[str, str]:
        """render(messages[:i], G) and render(messages[:i+1]): message i's turn is the second beyond the first."""
        try:
            before = self.render(tmsgs[:i], tools, generation_prompt=tmsgs[i]["role"] == "assistant")
        except TemplateError as exc:
            if i or isinstance(exc, TemplateTimeoutError):
                raise
            before = ""  # a template that cannot render an empty conversation
        through = self.render(tmsgs[: i + 1], tools)
        if not through.startswith(before) or len(through) == len(before):
            raise self._unstable(i)
        return before, through

    def _find_after(self, text: str, tmsgs: Sequence[Row], tools: Any, j: int, cursor: int, i: int) -> int:
        """Where untrained turn `j` ends in `text`, searched from `cursor`; where it cannot be told, trained turn `i`
        cannot be placed with certainty either (an error, never a guess)."""
        try:
            before, through = self._turn_renders(tmsgs, tools, j)
        except RowError:
            raise self._unstable(i) from None
        turn = through[len(before) :]
        at = text.find(turn, cursor)
        if at < 0:
            raise self._unstable(i)
        return at + len(turn)

    def _unstable(self, i: int) -> RowError:
        return RowError(
            f"messages[{i}]", "template_not_prefix_stable",
            f"template {self.template.name} renders message {i} differently once later turns follow, so its tokens "
            "cannot be attributed exactly (try --train-on last)",
        )  # fmt: skip

    # --- conversations ---------------------------------------------------------------------------------------
    def _conversation_text(self, messages: Sequence[Row], tools_json: str | None) -> tuple[str, list[Row], Any]:
        tmsgs = template_messages(messages)
        tools = template_tools(tools_json)
        try:
            return self.render(tmsgs, tools), tmsgs, tools
        except TemplateTimeoutError:  # the machine's load, not the row: fatal, never a reject that varies by run
            raise
        except TemplateError as exc:
            raise RowError("messages", "template_error", str(exc)) from None

    def _conversation_spans(self, text: str, messages: Sequence[Row], tmsgs: list[Row], tools: Any,
                            flags: list[bool]) -> list[Span]:  # fmt: skip
        if self.options.train_on == "all":
            return [(0, len(text))]
        spans = self._fast_spans(text, messages, tmsgs, flags)
        if spans is None and any(m["role"] == "system" for m in messages):  # its system prompt may have moved
            spans = self._fast_spans(text, messages, tmsgs, flags, system=False)
        if spans is not None:
            self.method_counts["span"] += 1
            return spans
        self.method_counts["prefix"] += 1
        return self._prefix_spans(text, tmsgs, tools, flags)

    def encode(self, rows: Sequence[Row]) -> list[list[Row] | RowError]:
        """Encode a batch of normalized rows; each result is the row's tokenized rows (usually one) or its error."""
        plans: list[Any] = []
        texts: list[str] = []
        for row in rows:
            try:
                plan = self._plan(row)
            except RowError as exc:
                plans.append(exc)
                continue
            plans.append(plan)
            texts.extend(plan["texts"])
        encodings = self._tokenize(texts, plans)
        results: list[list[Row] | RowError] = []
        cursor = 0
        for row, plan in zip(rows, plans, strict=True):
            if isinstance(plan, RowError):
                results.append(plan)
                continue
            encs = encodings[cursor : cursor + len(plan["texts"])]
            cursor += len(plan["texts"])
            try:
                results.append(self._finish(row, plan, encs))
            except RowError as exc:
                results.append(exc)
        return results

    def _tokenize(self, texts: list[str], plans: list[Any]) -> list[Any]:
        """Tokenize all texts of a batch at once; plain-text kinds get the tokenizer's own special tokens (BOS).

        Where the tokenizer has a `fast` encoder, that encoder does the work, except for texts that take special
        tokens the tokenizer adds and the encoder does not (`FastEncoder.with_specials`).
        """
        if not texts:
            return []
        fast = self.fast
        specials = [p["plain_text"] for p in plans if not isinstance(p, RowError) for _ in p["texts"]]
        if fast is not None and fast.with_specials:
            return [self._fast_encode(fast, text, special) for text, special in zip(texts, specials, strict=True)]
        out: list[Any] = [None] * len(texts)
        for flag in (False, True):
            index = [i for i, s in enumerate(specials) if s is flag]
            if not index:
                continue
            if fast is not None and not flag:
                for i in index:
                    out[i] = self._fast_encode(fast, texts[i], flag)
                continue
            batch = self.tok.tokenizer([texts[i] for i in index], add_special_tokens=flag, return_attention_mask=False)
            for i, enc in zip(index, batch.encodings, strict=True):
                out[i] = enc
        return out

    def _fast_encode(self, fast: FastEncoder, text: str, special: bool) -> Any:
        """`fast`'s encoding of `text`, or the tokenizer's own where tiktoken's regex gives up on the text (a run of
        about a million spaces exhausts its backtracking): the same ids, more slowly."""
        try:
            return fast.encode(text)
        except ValueError:
            return self.tok.tokenizer(text, add_special_tokens=special, return_attention_mask=False).encodings[0]

    def _plan(self, row: Row) -> dict[str, Any]:
        """What to tokenize for a row: its full text(s) and the character spans to train."""
        kind = row["kind"]
        if kind == "conversation":
            return self._plan_messages(row["messages"], row["tools"], None)
        if kind == "text":
            return {"kind": "text", "texts": [row["text"]], "spans": None, "plain_text": True}
        if kind in ("prompt_completion", "kto") and row["completion_messages"] is None:
            if kind == "kto":
                return self._plan_pair(row, plain=True)
            prompt, completion = row["prompt"], row["completion"]
            spans = [(len(prompt), len(prompt + completion))]
            return {"kind": "plain", "texts": [prompt + completion], "spans": spans, "plain_text": True}
        if kind == "prompt_completion":
            prompt, completion = row["messages"], row["completion_messages"]
            trained = [False] * len(prompt) + [True] * len(completion)
            return self._plan_messages([*prompt, *completion], row["tools"], trained)
        return self._plan_pair(row, plain=row["messages"] is None)

    def _plan_messages(self, messages: list[Row], tools_json: str | None, trained: list[bool] | None) -> dict[str, Any]:
        text, tmsgs, tools = self._conversation_text(messages, tools_json)
        flags = self._trained(messages, trained)
        try:
            spans = self._conversation_spans(text, messages, tmsgs, tools, flags)
        except TemplateTimeoutError:
            raise
        except TemplateError as exc:  # a prefix render of this row failed: the row's error, as a full render's is
            raise RowError("messages", "template_error", str(exc)) from None
        return {"kind": "chat", "texts": [text], "spans": spans, "messages": messages, "tools": tools_json,
                "trained": trained, "plain_text": False}  # fmt: skip

    def _plan_pair(self, row: Row, *, plain: bool) -> dict[str, Any]:
        """Preference and KTO: render prompt+continuation whole, split at the rendered prompt's end."""
        sides = ("chosen", "rejected") if row["kind"] == "preference" else ("completion",)
        if plain:
            prompt = row["prompt"]
            texts = [prompt + row[s] for s in sides]
            return {"kind": "pair", "texts": texts, "cut": len(prompt), "sides": sides, "plain_text": True}
        tools = template_tools(row["tools"])
        prompt_msgs = template_messages(row["messages"])
        try:
            prompt_text = self.render(prompt_msgs, tools, generation_prompt=True)
            texts = [self.render([*prompt_msgs, *template_messages(row[f"{s}_messages"])], tools) for s in sides]
        except TemplateTimeoutError:
            raise
        except TemplateError as exc:
            raise RowError("messages", "template_error", str(exc)) from None
        for side, text in zip(sides, texts, strict=True):
            if not text.startswith(prompt_text):
                raise RowError(f"{side}_messages", "template_not_prefix_stable",
                               "the rendered prompt is not a prefix of the rendered conversation")  # fmt: skip
        return {"kind": "pair", "texts": texts, "cut": len(prompt_text), "sides": sides, "plain_text": False}

    # --- tokens ----------------------------------------------------------------------------------------------
    def _ids(self, enc: Any) -> np.ndarray:
        return np.asarray(enc.ids, dtype=np.int32)

    def _finish(self, row: Row, plan: dict[str, Any], encs: list[Any]) -> list[Row]:
        if plan["kind"] == "pair":
            return [self._finish_pair(row, plan, encs)]
        enc = encs[0]
        text = plan["texts"][0]
        if plan["kind"] in ("text", "plain"):
            ids, labels = self._with_specials(enc, text, plan["spans"])
        else:
            ids = self._ids(enc)
            labels = _labels(ids, enc, plan["spans"], len(text))
        return self._fit(row, plan, ids, labels)

    def _with_specials(self, enc: Any, text: str, spans: list[Span] | None) -> tuple[np.ndarray, np.ndarray]:
        """Plain text: the tokenizer's own special tokens (BOS), plus EOS when the tokenizer adds none; the EOS is
        trained where the trained text runs to the end (whoever added it)."""
        ids = self._ids(enc)
        labels = ids.copy() if spans is None else _labels(ids, enc, spans, len(text))
        if self.eos_id is not None and (not len(ids) or ids[-1] != self.eos_id):
            eos = np.asarray([self.eos_id], np.int32)
            ids, labels = np.concatenate([ids, eos]), np.concatenate([labels, eos])
        elif len(ids) and spans is not None and any(end >= len(text) > start for start, end in spans):
            labels[-1] = ids[-1]  # the tokenizer's own EOS after a trained completion
        return ids, labels

    def _finish_pair(self, row: Row, plan: dict[str, Any], encs: list[Any]) -> Row:
        cut = plan["cut"]
        found = [self._split(plan, enc, text, cut) for enc, text in zip(encs, plan["texts"], strict=True)]
        splits = [s for s in found if s is not None]
        if len(splits) < len(found) or any(not np.array_equal(s[0], splits[0][0]) for s in splits):
            if not plan["plain_text"]:
                raise RowError(plan["sides"][0], "prompt_boundary_merge",
                               "the rendered prompt and its continuation share a token")  # fmt: skip
            splits = self._split_separately(plan, cut)  # plain strings: tokenize prompt and continuations apart
        out: Row = self._empty(row)
        out["prompt_input_ids"] = splits[0][0]
        for side, (_, continuation) in zip(plan["sides"], splits, strict=True):
            if not len(continuation):
                raise RowError(side, "empty_content", "the continuation has no tokens")
            out[f"{side}_input_ids"] = continuation
        longest = max(len(c) for _, c in splits)
        out["num_tokens"] = len(out["prompt_input_ids"]) + longest
        out["num_trained"] = longest
        if row["kind"] == "kto":
            out["label"] = row["label"]
        max_len = self.options.max_len
        if max_len is not None and out["num_tokens"] > max_len:
            raise RowError("", "too_long", f"{out['num_tokens']} tokens, over --max-len {max_len}")
        return out

    def _split(self, plan: dict[str, Any], enc: Any, text: str, cut: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(prompt ids, continuation ids) of one full rendering, or None when a token straddles the cut."""
        ids = self._with_specials(enc, text, None)[0] if plan["plain_text"] else self._ids(enc)
        k = enc.char_to_token(cut) if cut < len(text) else len(enc)
        if k is None or (k < len(enc) and enc.token_to_chars(k)[0] < cut):
            return None
        return ids[:k], ids[k:]

    def _split_separately(self, plan: dict[str, Any], cut: int) -> list[tuple[np.ndarray, np.ndarray]]:
        tok = self.tok.tokenizer
        encoded = tok(plan["texts"][0][:cut])
        prompt = np.asarray(encoded["input_ids"], np.int32)
        if len(prompt) and prompt[-1] == self.eos_id and encoded.token_to_chars(len(prompt) - 1) is None:
            prompt = prompt[:-1]  # the EOS a tokenizer appends to every text ends the continuation, not the prompt
        out = []
        for text in plan["texts"]:
            rest = tok(text[cut:], add_special_tokens=False)["input_ids"]
            out.append((prompt, np.asarray([*rest, *([self.eos_id] if self.eos_id is not None else [])], np.int32)))
        return out

    @staticmethod
    def _empty(row: Row) -> Row:
        out: Row = dict.fromkeys(TOKENIZED_COLUMNS)
        out.update(id=row["id"], kind=row["kind"], num_tokens=0, num_trained=0)
        out.update(source_file=row["source_file"], source_row=row["source_row"])
        return out

    def _row(self, row: Row, ids: np.ndarray, labels: np.ndarray, suffix: str = "") -> Row:
        trained = _targets(labels)
        if trained == 0:
            raise RowError("labels", "no_trained_tokens", "no token of this row is trained")
        out = self._empty(row)
        out.update(id=row["id"] + suffix, input_ids=ids, labels=labels, num_tokens=len(ids), num_trained=trained)
        return out

    def _fit(self, row: Row, plan: dict[str, Any], ids: np.ndarray, labels: np.ndarray) -> list[Row]:
        max_len = self.options.max_len
        if max_len is None or len(ids) <= max_len:
            return [self._row(row, ids, labels)]
        policy = self.options.overflow
        if policy == "truncate-right":
            return [self._row(row, ids[:max_len], labels[:max_len])]
        if policy == "truncate-left":
            return [self._row(row, ids[-max_len:], labels[-max_len:])]
        if policy == "split" and plan["kind"] == "text":
            return self._chunks(row, ids, labels, max_len)
        if policy == "drop-turns" and plan["kind"] == "chat":
            return [self._drop_turns(row, plan, len(ids))]
        raise RowError("input_ids", "too_long", f"{len(ids)} tokens, over --max-len {max_len}")

    def _chunks(self, row: Row, ids: np.ndarray, labels: np.ndarray, max_len: int) -> list[Row]:
        """`--overflow split`: chunks of at most `max_len` tokens, each after the first starting with the last token
        of the one before, as the context of its first target, so that every token but the row's first is a target
        exactly once. A chunk with no target is left out (it trains nothing, and no other chunk sees it)."""
        if max_len < 2:
            raise RowError("input_ids", "too_long", f"{len(ids)} tokens, over --max-len {max_len}, and chunks of "
                           f"{max_len} token leave no token a target")  # fmt: skip
        starts = range(0, len(ids) - 1, max_len - 1)  # every chunk holds two tokens at least
        chunks = [(k, ids[i : i + max_len], labels[i : i + max_len]) for k, i in enumerate(starts)]
        kept = [self._row(row, c_ids, c_labels, f"-{k}") for k, c_ids, c_labels in chunks if _targets(c_labels)]
        if not kept:
            raise RowError("labels", "no_trained_tokens", "no token of this row is trained")
        return kept

    def _drop_turns(self, row: Row, plan: dict[str, Any], length: int) -> Row:
        messages, trained = list(plan["messages"]), plan["trained"]
        keep = 1 if messages and messages[0]["role"] == "system" else 0
        last_answer = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
        # the last user turn before the last answer: the oldest turn that may still start the row
        last_user = max((i for i, m in enumerate(messages[:last_answer]) if m["role"] == "user"), default=keep)
        start = keep
        while True:
            nxt = next((i for i in range(start + 1, last_user + 1) if messages[i]["role"] == "user"), None)
            if nxt is None:
                raise RowError("input_ids", "too_long", f"{length} tokens, over --max-len {self.options.max_len} "
                               "even with only the last turn")  # fmt: skip
            start = nxt
            kept = messages[:keep] + messages[start:]
            kept_trained = None if trained is None else trained[:keep] + trained[start:]
            sub = self._plan_messages(kept, plan["tools"], kept_trained)
            enc = self._tokenize(sub["texts"], [sub])[0]
            ids = self._ids(enc)
            if self.options.max_len is None or len(ids) <= self.options.max_len:
                return self._row(row, ids, _labels(ids, enc, sub["spans"], len(sub["texts"][0])))
