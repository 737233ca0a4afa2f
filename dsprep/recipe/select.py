"""Which rows of each source go where: dedup, eval split and sampling, decided from content keys and seeds alone.

The steps, all deterministic:

1. **Dedup** (``dedup.by`` not ``none``): a row whose key was seen before is a duplicate of that first row. Eval
   sources (``split: eval``) are scanned first, then train sources, each in recipe order, so a train row that
   repeats an eval row is the one removed (the eval set stays as given) and, within a split, the first occurrence
   in recipe order is kept.
2. **Eval split**: a train source with an ``eval`` block (its own or the recipe's) holds out ``rows`` or
   ``round(fraction × n)`` of its remaining rows, chosen by seed. Identical rows of the source are held out
   together (a group of equal keys is never split between its train and eval rows); a row another source repeats
   is that source's own to hold out or keep, which the leakage counts show (dedup removes such twins).
3. **Sampling**: ``rows: N`` or ``weight: w`` (N = round(w × n)) over the rows left in the source's split; fewer
   than n rows are drawn without replacement, more repeat every row ``N // n`` times plus ``N % n`` rows drawn.

Leakage is measured on the keys: eval rows that equal a train row, before and after selection.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import orjson

from dsprep.errors import RecipeError
from dsprep.recipe.model import MAX_ROWS

__all__ = ["Selection", "SourcePlan", "content_key", "leakage", "select"]

Twin = tuple[int, int]  # (source index, row index) of the row that was kept
CONTENT = ("kind", "messages", "completion_messages", "chosen_messages", "rejected_messages", "text", "prompt",
           "completion", "chosen", "rejected", "label", "tools")  # fmt: skip
MESSAGE_CONTENT = ("role", "content", "name", "tool_calls", "tool_call_id", "reasoning")


def _messages(messages: Sequence[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if messages is None:
        return None
    return [{k: m.get(k) for k in MESSAGE_CONTENT} for m in messages]


def _prompt(row: dict[str, Any]) -> dict[str, Any]:
    """The part of a row before its answer: the turns before the last assistant turn, or the prompt."""
    if row["kind"] == "conversation":
        messages = row["messages"] or []
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
        return {"messages": _messages(messages[:last]), "tools": row["tools"]}
    if row["kind"] == "text":
        return {"text": row["text"]}
    return {"messages": _messages(row["messages"]), "prompt": row["prompt"], "tools": row["tools"]}


def content_key(row: dict[str, Any], by: Literal["conversation", "prompt"]) -> bytes:
    """A 128-bit key of a normalized row's content (ids, source positions and unmapped fields left out)."""
    if by == "prompt":
        value = _prompt(row)
    else:
        value = {k: row.get(k) for k in CONTENT}
        for k in ("messages", "completion_messages", "chosen_messages", "rejected_messages"):
            value[k] = _messages(value[k])
    return hashlib.blake2b(orjson.dumps(value, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


@dataclass(frozen=True, kw_only=True)
class SourcePlan:
    """What selection needs of one source: its content keys and what the recipe asks of it."""

    label: str
    keys: Sequence[bytes]
    split: Literal["train", "eval"] = "train"
    eval_fraction: float | None = None
    eval_rows: int | None = None
    eval_seed: int = 0
    weight: float | None = None
    rows: int | None = None
    seed: int = 0


@dataclass
class Selection:
    """One source's outcome: train rows as (row, copy) pairs, eval rows, duplicates and rows left out by sampling."""

    train: list[tuple[int, int]] = field(default_factory=list)
    eval: list[int] = field(default_factory=list)
    duplicates: dict[int, Twin] = field(default_factory=dict)
    not_sampled: list[int] = field(default_factory=list)
    held_out: int = 0


def _rng(seed: int, label: str, purpose: int) -> np.random.Generator:
    tag = int.from_bytes(hashlib.blake2b(label.encode(), digest_size=4).digest(), "big")
    return np.random.default_rng([seed, tag, purpose])


def _hold_out(plan: SourcePlan, rows: list[int]) -> tuple[list[int], list[int]]:
    """Split `rows` into (train, eval) by the plan's eval size; equal keys stay on one side."""
    if plan.eval_fraction is None and plan.eval_rows is None:
        return rows, []
    target = plan.eval_rows if plan.eval_rows is not None else round((plan.eval_fraction or 0) * len(rows))
    groups: dict[bytes, list[int]] = {}
    for r in rows:
        groups.setdefault(plan.keys[r], []).append(r)
    ordered = list(groups.values())
    taken: list[int] = []
    for g in _rng(plan.eval_seed, plan.label, 1).permutation(len(ordered)):
        if len(taken) >= target:
            break
        if len(taken) + len(ordered[g]) <= target:
            taken.extend(ordered[g])
    held = set(taken)
    return [r for r in rows if r not in held], sorted(taken)


def _sample(plan: SourcePlan, rows: list[int], *, repeat: bool) -> tuple[list[tuple[int, int]], list[int]]:
    """Draw the plan's `rows`/`weight` worth of `rows`: (chosen as (row, copy)), left out)."""
    n = len(rows)
    target = plan.rows if plan.rows is not None else round(plan.weight * n) if plan.weight is not None else n
    if target > MAX_ROWS:
        raise RecipeError(f"source {plan.label}: weight {plan.weight} asks for {target:,} of its {n:,} rows, more than "
                          f"the {MAX_ROWS:,} one source may give")  # fmt: skip
    if not repeat or n == 0:
        target = min(target, n)
    rng = _rng(plan.seed, plan.label, 2)
    if target <= n:
        picked = set(rng.choice(n, size=target, replace=False).tolist()) if target < n else set(range(n))
        return [(rows[i], 0) for i in range(n) if i in picked], [rows[i] for i in range(n) if i not in picked]
    copies, rest = divmod(target, n)
    chosen = [(r, c) for c in range(copies) for r in rows]
    extra = sorted(rng.choice(n, size=rest, replace=False).tolist())
    return chosen + [(rows[i], copies) for i in extra], []


def select(plans: Sequence[SourcePlan], *, dedup: bool) -> list[Selection]:
    """Decide, per source, its train rows, eval rows, duplicates and rows left out by sampling."""
    out = [Selection() for _ in plans]
    seen: dict[bytes, Twin] = {}
    order = [i for i, p in enumerate(plans) if p.split == "eval"] + [
        i for i, p in enumerate(plans) if p.split == "train"
    ]
    for i in order:
        for r, key in enumerate(plans[i].keys):
            twin = seen.setdefault(key, (i, r))
            if dedup and twin != (i, r):
                out[i].duplicates[r] = twin
    for plan, sel in zip(plans, out, strict=True):
        rows = [r for r in range(len(plan.keys)) if r not in sel.duplicates]
        if plan.split == "eval":
            chosen, sel.not_sampled = _sample(plan, rows, repeat=False)
            sel.eval = [r for r, _ in chosen]
            continue
        rows, sel.eval = _hold_out(plan, rows)
        sel.held_out = len(sel.eval)
        sel.train, sel.not_sampled = _sample(plan, rows, repeat=True)
    return out


def leakage(plans: Sequence[SourcePlan], selections: Sequence[Selection] | None = None) -> dict[str, int]:
    """Eval rows equal to a train row, and train rows equal to an eval row: of the sources as read, or as selected."""
    train: list[bytes] = []
    evals: list[bytes] = []
    for i, plan in enumerate(plans):
        if selections is None:
            (evals if plan.split == "eval" else train).extend(plan.keys)
        else:
            train.extend(plan.keys[r] for r, _ in selections[i].train)
            evals.extend(plan.keys[r] for r in selections[i].eval)
    train_set, eval_set = set(train), set(evals)
    return {
        "eval_rows_in_train": sum(k in train_set for k in evals),
        "train_rows_in_eval": sum(k in eval_set for k in train),
    }
