"""`--format auto`: score every shipped spec on a sample of rows and pick the best, or explain why none fits.

A spec *matches* a row when normalizing it raises no structural error (`missing_field`, `wrong_type`): content
problems such as an empty turn still count as a match, since they are the row's fault, not the format's. The best
spec has the highest match rate, then the highest *coverage* (the share of the row's keys it maps). A tie, or no
spec matching at least half the sample, is a `FormatDetectionError` listing the candidates and a spec snippet.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dsprep.errors import FormatDetectionError, RowError
from dsprep.normalize import normalize_record
from dsprep.specs import FormatSpec, load_spec, shipped_spec_names

__all__ = ["Detection", "detect_format", "mapping_snippet", "spec_snippet"]

STRUCTURAL = ("missing_field", "wrong_type")
MIN_MATCH_RATE = 0.5
TIE = 0.02


@dataclass(frozen=True)
class Detection:
    """The chosen spec with how well it fits the sample."""

    spec: FormatSpec
    sampled: int
    matched: int
    coverage: float
    mapping: tuple[tuple[str, str], ...]  # (input key, canonical field) pairs seen in the sample
    unmapped: tuple[str, ...]

    @property
    def confidence(self) -> float:
        """Share of sampled rows the spec matches."""
        return self.matched / self.sampled if self.sampled else 0.0

    def describe(self) -> str:
        """One line: format, confidence, the mapping and what stays unmapped (kept in `extra`)."""
        mapped = ", ".join(f"{src}→{dst}" for src, dst in self.mapping) or "-"
        line = (
            f"{self.spec.name} (confidence {math.floor(100 * self.confidence)}%: {self.matched}/{self.sampled} sampled "
            "rows match; "
            f"mapping {mapped}"
        )
        if self.unmapped:
            line += f"; kept in extra: {', '.join(self.unmapped)}"
        return line + ")"


def _has_required(record: dict[str, Any], spec: FormatSpec) -> bool:
    return all(any(record.get(k) is not None for k in keys) for keys in spec.required())


def _structural_failure(record: dict[str, Any], spec: FormatSpec) -> RowError | None:
    """The structural error `spec` raises on the row, if it raises one (content errors are the row's fault)."""
    try:
        normalize_record(record, spec)
    except RowError as exc:
        return exc if exc.reason in STRUCTURAL else None
    return None


def _matches(record: dict[str, Any], spec: FormatSpec) -> bool:
    return _has_required(record, spec) and _structural_failure(record, spec) is None


def _shadowed(best: Detection, other: Detection, sample: Sequence[dict[str, Any]]) -> RowError | None:
    """Why `other` lost to `best` although the rows have the keys only `other` reads: the error `other` raises on
    most of the rows (e.g. KTO labels spelled "yes"/"no"), or None where it did not lose that way."""
    if other.confidence >= best.confidence or not other.spec.mapped_keys & set(best.unmapped):
        return None
    failures = [f for r in sample if _has_required(r, other.spec) and (f := _structural_failure(r, other.spec))]
    return failures[0] if len(failures) >= MIN_MATCH_RATE * len(sample) else None


def score(spec: FormatSpec, sample: Sequence[dict[str, Any]]) -> Detection:
    """How well `spec` fits the sample rows."""
    matched = [r for r in sample if _matches(r, spec)]
    keys = sorted({k for r in matched for k in r})
    mapped_keys = spec.mapped_keys
    coverage = sum(len(mapped_keys & r.keys()) / max(len(r), 1) for r in matched) / len(matched) if matched else 0.0
    fields = [(src, dst) for dst, alts in spec.fields.items() for src in alts if src in keys]
    fields += [(src, turn.role) for turn in spec.turns for src in turn.sources if src in keys]
    unmapped = tuple(k for k in keys if k not in mapped_keys)
    return Detection(spec, len(sample), len(matched), coverage, tuple(fields), unmapped)


def _type(value: Any) -> str:
    if isinstance(value, list):
        return "list of objects" if value and isinstance(value[0], dict) else "list"
    return {str: "string", dict: "object", bool: "boolean", int: "number", float: "number"}.get(type(value), "null")


ROLE_KEYS = ("role", "from", "speaker", "author", "sender")
CONTENT_KEYS = ("content", "value", "text", "message", "body", "utterance")
PROMPT_KEYS = ("prompt", "instruction", "question", "query", "input")
ANSWER_KEYS = ("completion", "output", "response", "answer")
ROLE_GUESSES = {
    "user": ("user", "human", "person", "customer", "prompter", "usr", "question"),
    "assistant": ("assistant", "gpt", "bot", "model", "ai", "chatgpt", "agent", "answer"),
    "system": ("system",),
    "tool": ("tool", "function", "observation", "ipython"),
}


def _named(keys: Sequence[str], names: Sequence[str]) -> str | None:
    """The first of `keys` whose lower-cased name is one of `names` (in the order of `names`)."""
    lowered = {k.lower(): k for k in keys}
    return next((lowered[n] for n in names if n in lowered), None)


def _conversation_snippet(sample: Sequence[dict[str, Any]], lists: list[str]) -> list[str]:
    first = sample[0]
    speaking = [k for k in lists if _named(list(first[k][0]), ROLE_KEYS)]
    key = (speaking or lists)[0]
    msg_keys = list(first[key][0]) or ["role", "content"]
    role = _named(msg_keys, ROLE_KEYS) or msg_keys[0]
    texts = [k for k in msg_keys if k != role and isinstance(first[key][0].get(k), str)]
    content = _named(msg_keys, CONTENT_KEYS) or (texts or msg_keys)[-1]
    values = (m.get(role) for r in sample for m in (r.get(key) or []) if isinstance(m, dict))
    seen = sorted({v for v in values if isinstance(v, (str, int, float))}, key=str)  # a list or object names no role
    lines = ['kind = "conversation"', "", "[fields]", f"messages = {_toml(key)}", "", "[message]"]
    lines += [f"role = {_toml(role)}", f"content = {_toml(content)}", "", "[roles]"]
    for value in seen[:20]:
        guess = next((r for r, names in ROLE_GUESSES.items() if str(value).lower() in names), None)
        line = f"{_toml(str(value))} = {_toml(guess)}" if guess else f'# {_toml(str(value))} = "user" | "assistant"'
        lines.append(line)
    return lines if seen else [*lines, '# input_role = "user" | "assistant" | "system" | "tool"']


def _columns_snippet(strings: list[str]) -> list[str]:
    prompt, answer = _named(strings, PROMPT_KEYS), _named(strings, ANSWER_KEYS)
    extra_prompt = [k for k in strings if k not in (prompt, answer) and k.lower() in PROMPT_KEYS]
    if prompt and answer and len(strings) - len(extra_prompt) <= 2:  # Alpaca-like columns: turns of a conversation
        return ['kind = "conversation"', "", "[[turns]]", 'role = "user"',
                f"sources = {_toml_list([prompt, *extra_prompt])}", "", "[[turns]]", 'role = "assistant"',
                f"sources = {_toml_list([answer])}"]  # fmt: skip
    kind, names = {1: ("text", ["text"]), 2: ("prompt_completion", ["prompt", "completion"])}.get(
        len(strings), ("preference", ["prompt", "chosen", "rejected"])
    )
    lines = [f'kind = "{kind}"  # conversation | text | prompt_completion | preference | kto', "", "[fields]"]
    return lines + [f"{name} = {_toml(key)}" for name, key in zip(names, strings, strict=False)]


def spec_snippet(sample: Sequence[dict[str, Any]]) -> str:
    """A starter spec for the sample's keys that a user can save, edit and pass with `--format`: messages with the
    role and content keys and the roles seen (guessed where their names tell), or the columns' kind by their names."""
    first = sample[0] if sample else {}
    strings = [k for k, v in first.items() if isinstance(v, str)]
    lists = [k for k, v in first.items() if _type(v) == "list of objects"]
    body = _conversation_snippet(sample, lists) if lists else _columns_snippet(strings)
    return "\n".join(['description = "my format"', *body])


def _toml(key: str) -> str:
    """A TOML basic string holding `key`."""
    return json.dumps(key, ensure_ascii=False)


def _toml_list(keys: Sequence[str]) -> str:
    return "[" + ", ".join(map(_toml, keys)) + "]"


def mapping_snippet(spec: FormatSpec, detection: Detection | None) -> str:
    """The spec `spec` is, with the fields `detection` mapped, as TOML a user can save and pass with `--format`:
    every key that shapes how rows are read (roles' content, turns, split marker, transform) included."""
    lines = [f"# {spec.name} ({spec.origin})", f"description = {_toml(spec.description)}", f'kind = "{spec.kind}"']
    if spec.split_marker is not None:
        lines.append(f"split_marker = {_toml(spec.split_marker)}")
    if spec.transform is not None:
        lines.append(f"transform = {_toml(spec.transform)}")
    fields: dict[str, list[str]] = {}  # each field's keys the sample used, in the spec's order of preference
    for src, dst in detection.mapping if detection else ():
        if dst in spec.fields:
            fields.setdefault(dst, []).append(src)
    for dst, srcs in fields.items():
        preferred = list(spec.fields[dst])
        srcs.sort(key=lambda k: preferred.index(k) if k in preferred else len(preferred))
    # every field the spec reads, not only those the sample held: the keys seen first, then the spec's others
    fields = {dst: [*fields.get(dst, []), *(k for k in keys if k not in fields.get(dst, []))]
              for dst, keys in spec.fields.items()}  # fmt: skip
    if fields:
        lines += ["", "[fields]"]
        lines += [f"{dst} = {_toml(srcs[0]) if len(srcs) == 1 else _toml_list(srcs)}" for dst, srcs in fields.items()]
    if spec.message:
        lines += ["", "[message]", *(f"{k} = {_toml_list(v)}" for k, v in spec.message.items())]
    if spec.roles:
        lines += ["", "[roles]"]
        for name, target in spec.roles.items():
            value = _toml(target.role)
            if target.content != "text":
                value = f"{{ role = {value}, content = {_toml(target.content)} }}"
            lines.append(f"{_toml(name)} = {value}")
    for turn in spec.turns:
        lines += ["", "[[turns]]", f"role = {_toml(turn.role)}", f"sources = {_toml_list(turn.sources)}"]
        if turn.join != "\n":
            lines.append(f"join = {_toml(turn.join)}")
        if turn.optional:
            lines.append("optional = true")
    return "\n".join(lines)


def _candidates() -> list[FormatSpec]:
    return [s for s in (load_spec(n) for n in shipped_spec_names()) if s.auto_detect]


def detect_format(sample: Sequence[dict[str, Any]], source: str) -> Detection:
    """Pick the shipped spec that fits `sample` best, or raise FormatDetectionError with candidates and a snippet."""
    if not sample:
        raise FormatDetectionError(f"{source}: no readable rows to detect a format from; pass --format")
    scored = sorted((score(s, sample) for s in _candidates()), key=lambda d: (-d.confidence, -d.coverage, d.spec.name))
    best = scored[0]
    keys = ", ".join(f"{k} ({_type(v)})" for k, v in sample[0].items())
    snippet = spec_snippet(sample).replace("\n", "\n    ")
    tail = (
        f"\n  keys in the first row: {keys}"
        f"\n  a spec to save as my_format.toml, edit, and pass with --format:\n    {snippet}"
    )
    if best.confidence < MIN_MATCH_RATE:
        near = ", ".join(f"{d.spec.name} {d.confidence:.0%}" for d in scored[:3])
        raise FormatDetectionError(f"{source}: no known format matches (best: {near}){tail}")
    ties = [d for d in scored[1:] if best.confidence - d.confidence <= TIE and best.coverage - d.coverage <= TIE]
    if ties:
        names = ", ".join(d.spec.name for d in (best, *ties))
        raise FormatDetectionError(f"{source}: ambiguous format, equally good: {names}; pass --format{tail}")
    for other in scored[1:]:
        failure = _shadowed(best, other, sample)
        if failure is not None:
            kept = ", ".join(sorted(other.spec.mapped_keys & set(best.unmapped)))
            raise FormatDetectionError(
                f"{source}: the rows look like format {other.spec.name}, but {failure}; fix those values, or pass "
                f"--format {best.spec.name} to read them as {best.spec.name} ({kept} kept in extra){tail}"
            )
    return best
