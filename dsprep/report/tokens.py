"""Token statistics for `dsprep inspect --tokenizer`: lengths, trained share, overflow, conformance, packing.

Rows are encoded exactly as `dsprep convert` would (the same `Encoder`), first without a length limit to measure
them, then — only the rows over the limit — again with the run's `--max-len`/`--overflow`, so what the policy would
drop or cut is counted, not estimated. Per row only its final lengths are kept (int32 arrays), so memory stays
bounded; the packing estimate runs `plan_packing` on those lengths.
"""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np

from dsprep.errors import RowError
from dsprep.report.stats import MAX_EXAMPLES, Tally, histogram, summary
from dsprep.sources import InputFile

__all__ = ["TokenStats"]

IGNORE = -100
UNPACKABLE = ("preference", "kto")
SHOW_TOKENS = 400
Row = dict[str, Any]


def token_pieces(tok: Any, ids: Any, labels: Any, limit: int = SHOW_TOKENS) -> list[list[Any]]:
    """[[text, trained], …] for each token, so a renderer can draw boundaries and the trained ones."""
    ids = [int(i) for i in ids[:limit]]
    return [[tok.decode([i]), bool(labels[k] != IGNORE)] for k, i in enumerate(ids)]


def example_pieces(tok: Any, row: Row) -> list[list[Any]]:
    """Token pieces of one tokenized (or packed) row; for pairs, the prompt then the chosen/completion side."""
    if row.get("input_ids") is not None:
        return token_pieces(tok, row["input_ids"], row["labels"])
    prompt = list(row["prompt_input_ids"])
    side = list(row.get("chosen_input_ids") or row.get("completion_input_ids") or [])
    return token_pieces(tok, prompt + side, [IGNORE] * len(prompt) + side)


class TokenStats:
    """Accumulates token statistics over every kept row of every input.

    tokenizer/template: as for `dsprep convert`; max_len/overflow: the length policy to evaluate (with `pack` and
    no `max_len`, the limit is `pack`); show: how many examples to keep, rendered as token pieces.
    """

    def __init__(self, tokenizer: str, template: str, *, max_len: int | None, overflow: str, pack: int | None,
                 train_on: str = "assistant", show: int = 0) -> None:  # fmt: skip
        from dsprep.conformance import check_conformance
        from dsprep.encode import EncodeOptions, Encoder
        from dsprep.templates import load_template
        from dsprep.tokenizers import load_tokenizer

        self.loaded = load_tokenizer(tokenizer)
        tmpl = load_template(template, self.loaded.chat_template)
        self.max_len = max_len if max_len is not None else pack
        self.overflow, self.pack = overflow, pack
        self.measure = Encoder(self.loaded, tmpl, EncodeOptions(train_on=train_on))  # type: ignore[arg-type]
        self.conformance = check_conformance(self.measure).to_dict()
        opts = EncodeOptions(train_on=train_on, max_len=self.max_len, overflow=overflow)  # type: ignore[arg-type]
        self.policy = Encoder(self.loaded, tmpl, opts)
        self.template = {"name": tmpl.name, "origin": tmpl.origin, "sha256": tmpl.sha256}
        self.show = show
        self.examples: list[dict[str, Any]] = []
        self.lengths, self.trained = array("q"), array("q")
        self.final: array[int] = array("q")  # lengths after the overflow policy, packable kinds only
        self.errors: dict[str, Tally] = {}
        self.over = Tally()
        self.dropped_rows = self.dropped_tokens = self.cut_tokens = self.not_packable = 0

    def add(self, f: InputFile, kept: list[tuple[str, Row]]) -> None:
        """Encode one batch of normalized rows (with their locations)."""
        results = self.measure.encode([row for _, row in kept])
        over: list[tuple[str, Row, int]] = []
        for (where, row), result in zip(kept, results, strict=True):
            if isinstance(result, RowError):
                self.errors.setdefault(result.reason, Tally()).add(where, str(result))
                continue
            n = sum(int(r["num_tokens"]) for r in result)
            self.lengths.append(n)
            self.trained.append(sum(int(r["num_trained"]) for r in result))
            if len(self.examples) < self.show:
                self.examples.append({"location": where, "kind": row["kind"], "tokens": n,
                                      "pieces": example_pieces(self.loaded.tokenizer, result[0])})  # fmt: skip
            if self.max_len is not None and n > self.max_len:
                self.over.add(where, f"{n} tokens")
                over.append((where, row, n))
            elif row["kind"] in UNPACKABLE:
                self.not_packable += 1
            else:
                self.final.append(n)
        if over:
            self._apply_policy(over)

    def _apply_policy(self, over: list[tuple[str, Row, int]]) -> None:
        results = self.policy.encode([row for _, row, _ in over])
        for (_, row, n), result in zip(over, results, strict=True):
            if isinstance(result, RowError):
                self.dropped_rows += 1
                self.dropped_tokens += n
                continue
            kept = [int(r["num_tokens"]) for r in result]
            self.cut_tokens += n - sum(kept)
            if row["kind"] in UNPACKABLE:
                self.not_packable += 1
            else:
                self.final.extend(kept)

    def _packing(self) -> dict[str, Any] | None:
        if self.pack is None:
            return None
        from dataclasses import asdict

        from dsprep.pack import PackReport, plan_packing

        lengths = np.frombuffer(self.final, dtype=np.int64) if len(self.final) else np.zeros(0, np.int64)
        report = asdict(PackReport.of(plan_packing(lengths[lengths > 0], self.pack)))
        return {"max_len": self.pack, **report, "gap_to_lower_bound": report["rows_above_bound"],
                "not_packable_rows": self.not_packable}  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        lengths = np.frombuffer(self.lengths, dtype=np.int64) if len(self.lengths) else np.zeros(0, np.int64)
        trained = np.frombuffer(self.trained, dtype=np.int64) if len(self.trained) else np.zeros(0, np.int64)
        total = int(lengths.sum())
        encoded = len(lengths)
        untrained = self.errors.get("no_trained_tokens", Tally())
        return {
            "tokenizer": {"name": self.loaded.name, "fingerprint": self.loaded.fingerprint},
            "template": self.template,
            "conformance": self.conformance,
            "rows_encoded": encoded,
            "lengths": {**summary(lengths), "histogram": histogram(lengths, mark=self.max_len)},
            "tokens": total,
            "trained_tokens": int(trained.sum()),
            "trained_share": float(trained.sum() / total) if total else 0.0,
            "encode_errors": {k: v.to_dict() for k, v in sorted(self.errors.items())},
            "untrained_rows": untrained.count,
            "max_len": self.max_len,
            "overflow": {
                "policy": self.overflow, "rows_over": self.over.count,
                "share_over": self.over.count / encoded if encoded else 0.0,
                "examples": self.over.examples[:MAX_EXAMPLES], "rows_dropped": self.dropped_rows,
                "tokens_dropped": self.dropped_tokens, "tokens_cut": self.cut_tokens,
            },
            "packing": self._packing(),
        }  # fmt: skip
