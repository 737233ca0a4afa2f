"""The rich terminal rendering of an inspect report.

Each input gets a section, up to `MAX_SECTIONS` of them: with more inputs (a folder of thousands of small files), the
sections go to the inputs with something to say (no format, rejects, findings, duplicates), first come first, and
the rest are summed up in one line; the JSON report (``--json``) always holds every input.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from dsprep.report.stats import over
from dsprep.report.visible import visible_report

__all__ = ["MAX_SECTIONS", "print_report"]

MAX_SECTIONS = 20  # inputs shown in full, and overlaps listed, at most


def _pct(x: float) -> str:
    return f"{x:.2%}"


def _efficiency(packing: dict[str, Any]) -> str:
    """A packing's efficiency, or why there is none (nothing packed)."""
    return _pct(packing["efficiency"]) if packing["rows"] else "n/a (no rows)"


def _tallies(console: Console, title: str, tallies: dict[str, Any]) -> None:
    if not tallies:
        return
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("what")
    table.add_column("rows", justify="right")
    table.add_column("examples")
    for name, t in tallies.items():
        examples = "\n".join(f"{e['location']}: {e['detail'][:100]}" for e in t["examples"])
        table.add_row(escape(name), str(t["count"]), escape(examples))
    console.print(table)


def _input(console: Console, d: dict[str, Any]) -> None:
    fmt, rows = d["format"], d["rows"]
    console.rule(f"[bold]{escape(d['path'])}")
    if fmt["name"]:
        conf = f" (confidence {fmt['confidence']:.0%})" if fmt["confidence"] is not None else ""
        console.print(f"format [bold]{escape(fmt['name'])}[/]{conf}; mapping as a spec:")
        console.print(Text(fmt["spec"], style="dim"))
    else:
        console.print(f"[red]no format: {escape(str(fmt['error']))}[/]")
    console.print(f"rows: read {rows['read']} = kept {rows['kept']} + rejected {rows['rejected']}")
    _tallies(console, "rejected", d["rejected_by_reason"])
    _tallies(console, "findings", d["findings"])
    dup = d["duplicates"]
    if dup["rows"]:
        examples = "; ".join(e["location"] + " " + e["detail"] for e in dup["examples"][:2])
        console.print(f"[yellow]duplicates: {dup['rows']} rows ({_pct(dup['share'])}), e.g. {escape(examples)}")
    c = d["chars"]
    longest = c["longest_message"]
    console.print(f"characters per row: min {c['min']}, median {c['p50']}, p99 {c['p99']}, max {c['max']}; "
                  f"longest message {longest['chars']} chars ({longest['role']}, {longest['location']})",
                  markup=False)  # fmt: skip


def _notable(d: dict[str, Any]) -> bool:
    """Whether an input has something to say beyond its counts."""
    return not d["format"]["name"] or bool(d["rejected_by_reason"] or d["findings"] or d["duplicates"]["rows"])


def _inputs(console: Console, inputs: list[dict[str, Any]]) -> None:
    """A section per input; past `MAX_SECTIONS`, sections for the first notable inputs and one line for the rest."""
    if len(inputs) <= MAX_SECTIONS:
        shown = inputs
    else:
        notable = [d for d in inputs if _notable(d)]
        shown = notable[:MAX_SECTIONS] if notable else inputs[:MAX_SECTIONS]
    for d in shown:
        _input(console, d)
    in_full = {id(d) for d in shown}
    rest = [d for d in inputs if id(d) not in in_full]
    if not rest:
        return
    formats = Counter(d["format"]["name"] or "none" for d in rest)
    read, kept = sum(d["rows"]["read"] for d in rest), sum(d["rows"]["kept"] for d in rest)
    flagged = sum(map(_notable, rest))
    console.rule(f"[bold]{len(rest)} more inputs")
    console.print(
        f"{len(rest)} more inputs not shown, {flagged} of them with rejects, findings or duplicates: formats "
        f"{', '.join(f'{name} {n}' for name, n in formats.most_common())}; rows: read {read} = kept {kept} + rejected "
        f"{read - kept}; --json writes every input's section",
        markup=False,
    )


def _histogram(console: Console, hist: dict[str, Any], width: int = 40) -> None:
    top = max(hist["counts"]) or 1
    for lo, hi, n in zip(hist["edges"], hist["edges"][1:], hist["counts"], strict=False):
        if n:
            console.print(f"{lo:>8}–{hi - 1:<8} {'█' * max(1, round(width * n / top)):<{width}} {n}",
                          style="red" if over(hi, hist.get("mark")) else None)  # fmt: skip


def _tokens(console: Console, t: dict[str, Any]) -> None:
    console.rule("[bold]tokens")
    console.print(
        f"tokenizer {t['tokenizer']['name']}, template {t['template']['name']}; {t['rows_encoded']} rows, "
        f"{t['tokens']} tokens, trained {_pct(t['trained_share'])}, untrained rows {t['untrained_rows']}",
        markup=False,
    )
    _histogram(console, t["lengths"]["histogram"])
    o = t["overflow"]
    if t["max_len"] is not None:
        console.print(
            f"over --max-len {t['max_len']}: {o['rows_over']} rows ({_pct(o['share_over'])}); "
            f"--overflow {o['policy']} drops {o['rows_dropped']} rows ({o['tokens_dropped']} tokens), "
            f"cuts {o['tokens_cut']} tokens"
        )
    c = t["conformance"]
    console.print(
        f"template checks: end-of-turn {c['eot_text']!r} {'trained' if c['eot_trained'] else 'NOT trained'}, "
        f"single BOS {c['single_bos']}, prefix-stable {c['prefix_stable']}",
        markup=False,
    )
    if errors := t["encode_errors"]:
        reasons = ", ".join(f"{name} {e['count']}" for name, e in errors.items())
        console.print(f"rejected while encoding (in their inputs' rejected rows): {reasons}", markup=False)
    if p := t["packing"]:
        console.print(f"packing at {p['max_len']}: {p['rows']} rows, efficiency {_efficiency(p)}, lower bound "
                      f"{p['lower_bound']} (+{p['gap_to_lower_bound']})")  # fmt: skip


def _recipe_sources(console: Console, sources: list[dict[str, Any]]) -> None:
    table = Table("source", "read", "rejected", "examples", "tokens", "trained", "share (examples / tokens)")
    for r in sources:
        share = f"{r['share_of_examples']:.1%} / {r['share_of_tokens']:.1%}"
        table.add_row(escape(r["name"]), str(r["rows_read"]), str(r["rows_rejected"]), str(r["examples"]),
                      str(r["tokens"]), str(r["trained_tokens"]), share)  # fmt: skip
    console.print(table)


def _shards(console: Console, s: dict[str, Any]) -> None:
    console.rule(f"[bold]{escape(s['path'])}")
    console.print(f"[green]verified[/]: {s['stage']}, {s['shards']} shards, {s['rows']} rows, {s['bytes']} bytes")
    for i in s["inputs"]:
        console.print(f"  {i['path']}: {i['format']}, read {i['rows_read']} = kept {i['rows_kept']} + "
                      f"rejected {i['rows_rejected']}", markup=False)  # fmt: skip
    if sources := s.get("recipe_sources"):
        _recipe_sources(console, sources)
    if ts := s["token_stats"]:
        console.print(
            f"{ts['tokens']} tokens, trained {_pct(ts['trained_share'])}, untrained rows {ts['untrained_rows']}"
        )
        _histogram(console, ts["lengths"]["histogram"])
    if p := s["packing"]:
        console.print(f"packing: {p['rows']} rows of ≤{p['max_len']}, efficiency {_efficiency(p)}")


def _example(console: Console, e: dict[str, Any]) -> None:
    console.rule(Text(f"example {e['location']} ({e['kind']}, {e['tokens']} tokens)"))
    text = Text()
    for k, (piece, trained) in enumerate(e["pieces"]):
        shade = "on grey19" if k % 2 else "on grey27"
        text.append(piece, style=f"bold green {shade}" if trained else f"dim {shade}")
    console.print(text)
    if (shown := e.get("shown_tokens", e["tokens"])) < e["tokens"]:
        console.print(f"… the first {shown} of {e['tokens']} tokens shown", style="dim")


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    """Print the whole report: per input, overlaps, shards, tokens, examples, then the gate. Text from the data is
    shown with its control characters escaped (`visible_report`)."""
    console = console or Console()
    report = visible_report(report)
    _inputs(console, report["inputs"])
    for o in report["overlaps"][:MAX_SECTIONS]:
        console.print(f"[yellow]overlap: {o['rows']} rows of {escape(o['b'])} also in {escape(o['a'])}")
    if len(report["overlaps"]) > MAX_SECTIONS:
        more = report["overlaps"][MAX_SECTIONS:]
        console.print(f"[yellow]overlap: {len(more)} more pairs of inputs share rows ({sum(o['rows'] for o in more)} "
                      "rows); --json lists every pair")  # fmt: skip
    for s in report["shards"]:
        _shards(console, s)
    if report["tokens"]:
        _tokens(console, report["tokens"])
    for e in report["examples"]:
        _example(console, e)
    t = report["totals"]
    console.print(f"total: {t['inputs']} inputs, read {t['rows_read']} = kept {t['rows_kept']} + rejected "
                  f"{t['rows_rejected']}; duplicates {t['duplicate_rows']}, overlap {t['overlap_rows']}")  # fmt: skip
    if gate := report["gate"]:
        for r in gate["rules"]:
            verdict = "[red]FAIL" if r["failed"] else "[green]ok"
            console.print(f"gate {escape(r['rule'])}: value {r['value']:g} → {verdict}")
