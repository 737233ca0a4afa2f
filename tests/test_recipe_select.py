"""Selection: dedup (first occurrence wins, eval sources win over train), eval hold-out, sampling, determinism."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsprep.recipe.select import SourcePlan, content_key, leakage, select


def keys(*names: str) -> list[bytes]:
    return [n.encode() for n in names]


def test_dedup_keeps_the_first_occurrence_in_recipe_order() -> None:
    a = SourcePlan(label="a", keys=keys("x", "y", "x"))
    b = SourcePlan(label="b", keys=keys("y", "z"))
    sa, sb = select([a, b], dedup=True)
    assert sa.duplicates == {2: (0, 0)}
    assert sb.duplicates == {0: (0, 1)}
    assert [r for r, _ in sa.train] == [0, 1] and [r for r, _ in sb.train] == [1]


def test_without_dedup_nothing_is_removed() -> None:
    sa, sb = select([SourcePlan(label="a", keys=keys("x", "x")), SourcePlan(label="b", keys=keys("x"))], dedup=False)
    assert not sa.duplicates and not sb.duplicates
    assert len(sa.train) == 2 and len(sb.train) == 1


def test_a_train_row_equal_to_an_eval_row_is_removed_from_train() -> None:
    train = SourcePlan(label="train", keys=keys("p", "q", "r"))
    valid = SourcePlan(label="valid", keys=keys("q", "s"), split="eval")
    plans = [train, valid]
    assert leakage(plans) == {"eval_rows_in_train": 1, "train_rows_in_eval": 1}
    st_, sv = select(plans, dedup=True)
    assert st_.duplicates == {1: (1, 0)}
    assert sv.eval == [0, 1] and not sv.duplicates
    assert leakage(plans, [st_, sv]) == {"eval_rows_in_train": 0, "train_rows_in_eval": 0}
    kept = select(plans, dedup=False)
    assert leakage(plans, kept) == {"eval_rows_in_train": 1, "train_rows_in_eval": 1}


@pytest.mark.parametrize(("fraction", "rows", "held"), [(0.2, None, 20), (None, 7, 7), (0.004, None, 0)])
def test_eval_hold_out_takes_the_requested_size(fraction: float | None, rows: int | None, held: int) -> None:
    plan = SourcePlan(label="s", keys=[bytes([i]) for i in range(100)], eval_fraction=fraction, eval_rows=rows)
    (sel,) = select([plan], dedup=True)
    assert len(sel.eval) == held == sel.held_out
    assert sorted([r for r, _ in sel.train] + sel.eval) == list(range(100))


def test_identical_rows_are_held_out_together_even_without_dedup() -> None:
    plan = SourcePlan(label="s", keys=keys(*"aabbccddee"), eval_rows=4)
    (sel,) = select([plan], dedup=False)
    train_keys = {plan.keys[r] for r, _ in sel.train}
    assert len(sel.eval) == 4 and not train_keys & {plan.keys[r] for r in sel.eval}


def test_down_sampling_draws_exactly_rows_and_keeps_file_order() -> None:
    plan = SourcePlan(label="s", keys=[bytes([i]) for i in range(50)], rows=12, seed=3)
    (sel,) = select([plan], dedup=True)
    rows = [r for r, _ in sel.train]
    assert len(rows) == 12 and rows == sorted(rows) and all(c == 0 for _, c in sel.train)
    assert sorted(rows + sel.not_sampled) == list(range(50))


def test_up_sampling_repeats_every_row_then_draws_the_rest() -> None:
    plan = SourcePlan(label="s", keys=[bytes([i]) for i in range(10)], weight=2.5)
    (sel,) = select([plan], dedup=True)
    assert len(sel.train) == 25 and not sel.not_sampled
    counts = Counter(r for r, _ in sel.train)
    assert sorted(counts.values()) == [2] * 5 + [3] * 5
    assert len(set(sel.train)) == 25  # (row, copy) pairs are distinct, so are the ids made from them


def test_eval_sources_are_never_up_sampled() -> None:
    (_, sel) = select([SourcePlan(label="t", keys=keys("a")), SourcePlan(label="e", keys=keys("b", "c"), split="eval",
                                                                          rows=5)], dedup=True)  # fmt: skip
    assert sel.eval == [0, 1]


def test_seeds_decide_the_choice_and_the_same_seed_repeats_it() -> None:
    def pick(seed: int, label: str = "s") -> list[tuple[int, int]]:
        plan = SourcePlan(label=label, keys=[bytes([i]) for i in range(200)], rows=20, seed=seed)
        return select([plan], dedup=True)[0].train

    assert pick(1) == pick(1)
    assert pick(1) != pick(2)
    assert pick(1, "s") != pick(1, "t")  # sources draw independently


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 30), max_size=40), min_size=1, max_size=4),
    st.booleans(),
    st.integers(0, 60),
    st.floats(0.01, 0.9),
)
def test_every_row_is_accounted_for_and_eval_never_leaks(
    sources: list[list[int]], dedup: bool, rows: int, fraction: float
) -> None:
    plans = [
        SourcePlan(label=f"s{i}", keys=[bytes([k]) for k in ks], rows=rows if i % 2 else None,
                   eval_fraction=fraction if i == 0 else None, split="eval" if i == 3 else "train")
        for i, ks in enumerate(sources)
    ]  # fmt: skip
    if all(p.split == "eval" for p in plans):
        return
    selections = select(plans, dedup=dedup)
    for plan, sel in zip(plans, selections, strict=True):
        originals = {r for r, c in sel.train if c == 0} | set(sel.eval)
        assert sorted([*originals, *sel.duplicates, *sel.not_sampled]) == list(range(len(plan.keys)))
        if plan.split == "train" and plan.rows is not None and len(plan.keys) - len(sel.duplicates) - len(sel.eval):
            assert len(sel.train) == plan.rows
    if dedup:
        assert leakage(plans, selections) == {"eval_rows_in_train": 0, "train_rows_in_eval": 0}
    for r in selections[0].eval:  # held-out rows never share a key with the same source's train rows
        assert plans[0].keys[r] not in {plans[0].keys[t] for t, _ in selections[0].train}


def test_content_keys_ignore_ids_and_unmapped_fields_and_prompt_mode_ignores_the_answer() -> None:
    def row(answer: str, **extra: object) -> dict[str, object]:
        messages = [{"role": "user", "content": "q", "extra": None}, {"role": "assistant", "content": answer}]
        base = dict.fromkeys(("completion_messages", "chosen_messages", "rejected_messages", "text", "prompt",
                              "completion", "chosen", "rejected", "label", "tools"))  # fmt: skip
        return {**base, "kind": "conversation", "messages": messages, "id": "1", "extra": None, **extra}

    assert content_key(row("a"), "conversation") == content_key(row("a", id="2", extra='{"x":1}'), "conversation")
    assert content_key(row("a"), "conversation") != content_key(row("b"), "conversation")
    assert content_key(row("a"), "prompt") == content_key(row("b"), "prompt")
