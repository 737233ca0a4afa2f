"""Token statistics for `dsprep inspect --tokenizer`: lengths, trained share, overflow, conformance, packing.

Rows are encoded exactly as `dsprep convert` would (the same `Encoder`), first without a length limit to measure
them, then — only the rows over the limit, and those the first encoding rejects — again with the run's
`--max-len`/`--overflow`, so what the policy would drop or cut, and the reason convert would reject a row for
(`Measured.reject`), are what convert does, not estimates. Per row only its final lengths are kept (int32 arrays),
so memory stays bounded; the packing estimate runs `plan_packing` on those lengths.

`measure_rows` (a pure function, run wherever the rows are checked: `dsprep.report.scan`) encodes a batch;
`TokenStats.add` adds its outcome, batch after batch in input order.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dsprep.errors import RowError
from dsprep.report.stats import MAX_EXAMPLES, Tally, histogram, summary
from dsprep.workers import UNPACKABLE, EncodeSpec, encoder_for

__all__ = ["Measured", "TokenStats", "measure_rows"]

IGNORE = -100
SHOW_TOKENS = 400
Row = dict[str, Any]


def token_pieces(tok: Any, ids: Any, labels: Any, limit: int = SHOW_TOKENS) -> list[list[Any]]:
    """[[text, trained], …] for the first `limit` tokens, so a renderer can draw boundaries and the trained ones.

    Each piece is what its token adds to the decoded text, so the pieces join to the text itself: tokens that hold
    only part of a character (the bytes of an emoji, say) are one piece together, trained if any of them is.
    """
    ids = [int(i) for i in ids[:limit]]
    out: list[list[Any]] = []
    done, start = "", 0  # the text of the tokens before `start`, which are in `out`
    for k in range(len(ids)):
        text = tok.decode(ids[: k + 1])
        if text.endswith("\ufffd") and k + 1 < len(ids):
            continue  # a character not complete yet (or a real U+FFFD, shown with the next token)
        piece = text[len(done) :] if text.startswith(done) else tok.decode(ids[start : k + 1])
        out.append([piece, any(labels[j] != IGNORE for j in range(start, k + 1))])
        done, start = text, k + 1
    return out


def example_pieces(tok: Any, row: Row) -> tuple[list[list[Any]], int]:
    """Token pieces of one tokenized (or packed) row, and how many of its tokens they show (at most `SHOW_TOKENS`);
    for pairs, the prompt then the chosen/completion side."""
    if row.get("input_ids") is not None:
        ids, labels = row["input_ids"], row["labels"]
    else:
        prompt = list(row["prompt_input_ids"])
        side = row.get("chosen_input_ids")
        side = list(side if side is not None else row.get("completion_input_ids", []))
        ids, labels = prompt + side, [IGNORE] * len(prompt) + side
    return token_pieces(tok, ids, labels), min(len(ids), SHOW_TOKENS)


@dataclass
class Measured:
    """What one row's encoding adds to the statistics: its error without a length limit (reason, message), or its
    tokens, trained tokens, token pieces (for the first rows of a batch, where examples are shown) and, for a row
    over the limit, the lengths the overflow policy leaves (None: it drops the row). reject: the (reason, message)
    convert rejects the row for at encoding, with the run's length policy (None: convert keeps it)."""

    error: tuple[str, str] | None = None
    tokens: int = 0
    trained: int = 0
    pieces: list[list[Any]] | None = None
    shown: int = 0
    over: bool = False
    kept: list[int] | None = None
    reject: tuple[str, str] | None = None


def measure_rows(measure: EncodeSpec, policy: EncodeSpec, rows: Sequence[Row], pieces: int) -> list[Measured]:
    """Encode `rows` without a limit (`measure`), then with the policy those over `policy.max_len` and those the first
    encoding rejects (a row over the limit may be rejected for its length first); the first `pieces` encoded rows
    also get their token pieces. A pure function of its arguments (run in any process)."""
    encoder = encoder_for(measure)
    out: list[Measured] = []
    for result in encoder.encode(rows):
        if isinstance(result, RowError):
            error = (result.reason, str(result))
            out.append(Measured(error=error, reject=error))
            continue
        m = Measured(tokens=sum(int(r["num_tokens"]) for r in result),
                     trained=sum(int(r["num_trained"]) for r in result))  # fmt: skip
        if pieces > 0:
            m.pieces, m.shown = example_pieces(encoder.tok.tokenizer, result[0])
            pieces -= 1
        m.over = policy.max_len is not None and m.tokens > policy.max_len
        out.append(m)
    again = [i for i, m in enumerate(out) if m.over or (m.error is not None and policy.max_len is not None)]
    if again:
        for i, result in zip(again, encoder_for(policy).encode([rows[i] for i in again]), strict=True):
            if isinstance(result, RowError):
                out[i].kept, out[i].reject = None, (result.reason, str(result))
            else:
                out[i].kept, out[i].reject = [int(r["num_tokens"]) for r in result], None
    return out


class TokenStats:
    """Accumulates token statistics over every kept row of every input.

    tokenizer/template: as for `dsprep convert`; max_len/overflow: the length policy to evaluate (with `pack` and
    no `max_len`, the limit is `pack`); show: how many examples to keep, rendered as token pieces. `specs` is what
    `measure_rows` is given to encode with.
    """

    def __init__(self, tokenizer: str, template: str, *, max_len: int | None, overflow: str, pack: int | None,
                 train_on: str = "assistant", show: int = 0) -> None:  # fmt: skip
        from dsprep.conformance import conformance_for

        self.max_len = max_len if max_len is not None else pack
        self.overflow, self.pack = overflow, pack
        self.specs = (EncodeSpec(tokenizer, template, train_on, None, "drop"),
                      EncodeSpec(tokenizer, template, train_on, self.max_len, overflow))  # fmt: skip
        measure = encoder_for(self.specs[0])
        self.loaded = measure.tok
        self.conformance = conformance_for(measure).to_dict()
        tmpl = measure.template
        self.template = {"name": tmpl.name, "origin": tmpl.origin, "sha256": tmpl.sha256}
        self.show = show
        self.examples: list[dict[str, Any]] = []
        self.lengths, self.trained = array("q"), array("q")
        self.final: array[int] = array("q")  # lengths after the overflow policy, packable kinds only
        self.errors: dict[str, Tally] = {}  # rows convert rejects at encoding, by reason
        self.untrained = 0  # rows with no trained token (before any length policy)
        self.over = Tally()
        self.dropped_rows = self.dropped_tokens = self.cut_tokens = self.not_packable = 0

    def add(self, kept: Sequence[tuple[str, str]], measured: Sequence[Measured]) -> None:
        """Add one batch's rows, each its (location, kind) and what `measure_rows` made of it."""
        for (where, kind), m in zip(kept, measured, strict=True):
            if m.reject is not None:
                self.errors.setdefault(m.reject[0], Tally()).add(where, m.reject[1])
            if m.error is not None:
                self.untrained += m.error[0] == "no_trained_tokens"
                continue
            n = m.tokens
            self.lengths.append(n)
            self.trained.append(m.trained)
            if len(self.examples) < self.show and m.pieces is not None:
                self.examples.append({"location": where, "kind": kind, "tokens": n, "shown_tokens": m.shown,
                                      "pieces": m.pieces})  # fmt: skip
            lengths = [n]
            if m.over:
                self.over.add(where, f"{n} tokens")
                if m.kept is None:
                    self.dropped_rows += 1
                    self.dropped_tokens += n
                    continue
                self.cut_tokens += n - sum(m.kept)
                lengths = m.kept
            if kind in UNPACKABLE:
                self.not_packable += 1
            else:
                self.final.extend(lengths)

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
            "untrained_rows": self.untrained,
            "max_len": self.max_len,
            "overflow": {
                "policy": self.overflow, "rows_over": self.over.count,
                "share_over": self.over.count / encoded if encoded else 0.0,
                "examples": self.over.examples[:MAX_EXAMPLES], "rows_dropped": self.dropped_rows,
                "tokens_dropped": self.dropped_tokens, "tokens_cut": self.cut_tokens,
            },
            "packing": self._packing(),
        }  # fmt: skip
