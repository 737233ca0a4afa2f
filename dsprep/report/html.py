"""A single self-contained HTML page for an inspect report: inline CSS, inline SVG histograms, no script, no links.

Token examples are `<span class="tok">` per token (boundaries drawn as borders), trained ones `tok trained`.
"""

from __future__ import annotations

from html import escape
from typing import Any

from dsprep.report.stats import over
from dsprep.report.visible import visible_report

__all__ = ["render_html"]

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ddd;padding:2px 8px;text-align:left;vertical-align:top}
pre{background:#f6f6f6;padding:.5em;overflow:auto}.bad{color:#b00}.ok{color:#070}
svg.histogram rect.bar{fill:#4a7bd0}svg.histogram rect.over{fill:#d04a4a}svg.histogram text{font-size:10px}
.example{font-family:ui-monospace,monospace;white-space:pre-wrap;line-height:1.9;border:1px solid #ddd;padding:.5em}
.tok{border:1px solid #ccc;border-radius:2px;margin:0 1px;color:#888}
.tok.trained{background:#c8f0c8;color:#111;border-color:#5a5}
"""


def _histogram(hist: dict[str, Any], label: str) -> str:
    counts, edges, mark = hist["counts"], hist["edges"], hist.get("mark")
    w, h, pad = 640, 160, 24
    bw = (w - 2 * pad) / max(len(counts), 1)
    top = max(counts) or 1
    parts = [f'<svg class="histogram" role="img" aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg" '
             f'width="{w}" height="{h + 30}" viewBox="0 0 {w} {h + 30}"><title>{escape(label)}</title>']  # fmt: skip
    for i, n in enumerate(counts):
        bh = (h - pad) * n / top
        cls = "bar over" if over(edges[i + 1], mark) else "bar"
        x = pad + i * bw
        parts.append(f'<rect class="{cls}" x="{x:.1f}" y="{h - bh:.1f}" width="{max(bw - 1, 1):.1f}" height="{bh:.1f}">'
                     f"<title>{edges[i]}–{edges[i + 1] - 1}: {n}</title></rect>")  # fmt: skip
        if i % 4 == 0:
            parts.append(f'<text x="{x:.1f}" y="{h + 14}">{edges[i]}</text>')
    parts.append(f'<text x="{pad}" y="12">{escape(label)} (max bin {top})</text></svg>')
    return "".join(parts)


def _tallies(title: str, tallies: dict[str, Any]) -> str:
    if not tallies:
        return ""
    rows = "".join(
        f"<tr><td>{escape(name)}</td><td>{t['count']}</td><td>"
        + "<br>".join(escape(f"{e['location']}: {e['detail'][:160]}") for e in t["examples"])
        + "</td></tr>"
        for name, t in tallies.items()
    )
    return f"<h3>{escape(title)}</h3><table><tr><th>what</th><th>rows</th><th>examples</th></tr>{rows}</table>"


def _input(d: dict[str, Any]) -> str:
    fmt, rows, dup, c = d["format"], d["rows"], d["duplicates"], d["chars"]
    conf = f" (confidence {fmt['confidence']:.0%})" if fmt["confidence"] is not None else ""
    bad = f'<p class="bad">no format: {escape(fmt["error"] or "")}</p>'
    head = f"<p>format <b>{escape(fmt['name'])}</b>{conf}</p>" if fmt["name"] else bad
    spec = f"<pre>{escape(fmt['spec'])}</pre>" if fmt["spec"] else ""
    longest = c["longest_message"]
    return (
        f'<section class="input"><h2>{escape(d["path"])}</h2>{head}{spec}'
        f"<p>rows: read {rows['read']} = kept {rows['kept']} + rejected {rows['rejected']}; duplicates {dup['rows']}"
        f" ({dup['share']:.2%}); characters per row min {c['min']}, median {c['p50']}, max {c['max']}; longest message "
        f"{longest['chars']} chars ({escape(str(longest['location']))})</p>"
        + _tallies("rejected", d["rejected_by_reason"]) + _tallies("findings", d["findings"])
        + _histogram(c["histogram"], f"characters per row: {d['path']}") + "</section>"
    )  # fmt: skip


def _tokens(t: dict[str, Any]) -> str:
    o, c, p = t["overflow"], t["conformance"], t["packing"]
    efficiency = (f"{p['efficiency']:.2%}" if p["rows"] else "n/a (no rows)") if p else ""
    pack = (f"<p>packing at {p['max_len']}: {p['rows']} rows, efficiency {efficiency}, lower bound "
            f"{p['lower_bound']} (+{p['gap_to_lower_bound']})</p>") if p else ""  # fmt: skip
    errors = ", ".join(f"{escape(name)} {e['count']}" for name, e in t["encode_errors"].items())
    rejected = f"<p>rejected while encoding (in their inputs' rejected rows): {errors}</p>" if errors else ""
    return (
        f'<section class="tokens"><h2>tokens</h2><p>tokenizer {escape(t["tokenizer"]["name"])}, template '
        f"{escape(t['template']['name'])}: {t['rows_encoded']} rows, {t['tokens']} tokens, trained "
        f"{t['trained_share']:.2%}, untrained rows {t['untrained_rows']}</p>"
        f"<p>over --max-len {t['max_len']}: {o['rows_over']} rows ({o['share_over']:.2%}); --overflow {o['policy']} "
        f"drops {o['rows_dropped']} rows ({o['tokens_dropped']} tokens), cuts {o['tokens_cut']} tokens</p>"
        f"<p>template checks: end-of-turn {escape(repr(c['eot_text']))} trained {c['eot_trained']}, single BOS "
        f"{c['single_bos']}, prefix-stable {c['prefix_stable']}</p>{pack}"
        + rejected + _histogram(t["lengths"]["histogram"], "tokens per row")
        + "</section>"
    )  # fmt: skip


def _shards(s: dict[str, Any]) -> str:
    ts = s["token_stats"]
    body = (f"<p>{ts['tokens']} tokens, trained {ts['trained_share']:.2%}, untrained rows {ts['untrained_rows']}</p>"
            + _histogram(ts["lengths"]["histogram"], f"tokens per row: {s['path']}")) if ts else ""  # fmt: skip
    return (f'<section class="shards"><h2>{escape(s["path"])}</h2><p class="ok">verified: {s["stage"]}, '
            f"{s['shards']} shards, {s['rows']} rows</p>{body}</section>")  # fmt: skip


def _example(e: dict[str, Any]) -> str:
    spans = "".join(f'<span class="tok{" trained" if trained else ""}">{escape(piece)}</span>'
                    for piece, trained in e["pieces"])  # fmt: skip
    shown = e.get("shown_tokens", e["tokens"])
    cut = f"<p>… the first {shown} of {e['tokens']} tokens shown</p>" if shown < e["tokens"] else ""
    return (f'<h3>{escape(e["location"])} ({escape(e["kind"])}, {e["tokens"]} tokens)</h3>'
            f'<div class="example">{spans}</div>{cut}')  # fmt: skip


def render_html(report: dict[str, Any]) -> str:
    """The whole report as one HTML document (no network, no external resources); text from the data is shown with
    its control characters escaped (`visible_report`)."""
    report = visible_report(report)
    t = report["totals"]
    gate = report["gate"]
    verdict = ""
    if gate is not None:
        rules = [
            f"{escape(r['rule'])} (value {r['value']:g}) {'FAILED' if r['failed'] else 'ok'}" for r in gate["rules"]
        ]
        verdict = f'<p class="{"ok" if gate["passed"] else "bad"}">gate: {", ".join(rules)}</p>'
    overlaps = "".join(f"<p>overlap: {o['rows']} rows of {escape(o['b'])} also in {escape(o['a'])}</p>"
                       for o in report["overlaps"])  # fmt: skip
    examples = "".join(_example(e) for e in report["examples"])
    body = (
        f"<h1>dsprep inspect</h1><p>{t['inputs']} inputs, read {t['rows_read']} = kept {t['rows_kept']} + rejected "
        f"{t['rows_rejected']}; duplicates {t['duplicate_rows']}; overlap {t['overlap_rows']}</p>{verdict}{overlaps}"
        + "".join(_input(d) for d in report["inputs"]) + "".join(_shards(s) for s in report["shards"])
        + (_tokens(report["tokens"]) if report["tokens"] else "")
        + (f'<section class="examples"><h2>examples</h2>{examples}</section>' if examples else "")
    )  # fmt: skip
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>dsprep inspect report</title>'
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")  # fmt: skip
