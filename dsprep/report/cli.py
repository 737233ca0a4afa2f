"""The `dsprep inspect` click command (registered in `dsprep.cli` with ``main.add_command(inspect_command)``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from dsprep.config import MAX_TOKENS
from dsprep.errors import DsprepError
from dsprep.report.gate import GATE_EXIT_CODE
from dsprep.report.visible import visible

__all__ = ["inspect_command"]


@click.command("inspect")
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--format", "-f", "fmt", default="auto", show_default=True, help="'auto', a shipped format or a .toml spec."
)
@click.option("--tokenizer", "-t", metavar="DIR|NAME", help="Also measure tokens with this tokenizer.")
@click.option("--template", default="tokenizer", show_default=True, help="Chat template, as for convert.")
@click.option("--train-on", type=click.Choice(["assistant", "all", "last"]), default="assistant", show_default=True)
@click.option(
    "--max-len", type=click.IntRange(1, MAX_TOKENS), help="Report rows over this many tokens and what --overflow does."
)
@click.option(
    "--overflow",
    type=click.Choice(["drop", "truncate-right", "truncate-left", "drop-turns", "split"]),
    default="drop",
    show_default=True,
)
@click.option("--pack", type=click.IntRange(1, MAX_TOKENS), metavar="L", help="Estimate packing into rows of L tokens.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the report as JSON here.")
@click.option("--html", "html_path", type=click.Path(path_type=Path), help="Write a self-contained HTML page here.")
@click.option("--show", type=click.IntRange(min=0), default=0, metavar="K", help="Render K examples token by token.")
@click.option(
    "--fail-on", metavar="RULES", help=f"Exit {GATE_EXIT_CODE} when a rule holds, e.g. rejected>0.01,duplicates>5%."
)
@click.option(
    "--workers", "-j", type=click.IntRange(min=1), help="Processes that check (and encode) rows [default: cores]."
)
@click.option("--quiet", "-q", is_flag=True, help="Print no terminal report (errors and the gate verdict only).")
@click.pass_context
def inspect_command(ctx: click.Context, paths: tuple[str, ...], fmt: str, tokenizer: str | None, template: str,
                    train_on: str, max_len: int | None, overflow: str, pack: int | None, json_path: Path | None,
                    html_path: Path | None, show: int, fail_on: str | None, workers: int | None,
                    quiet: bool) -> None:  # fmt: skip
    """Validate raw files or dsprep output folders (PATHS) and report findings; see README "Inspect".

    Exit codes: 0 ok, 2 usage, 3 unreadable input, 6 a report file cannot be written, 7 template, 8 shards fail
    verification, 11 a --fail-on rule held.
    """
    from dsprep.progress import display
    from dsprep.report.build import InspectOptions, build_report, locate
    from dsprep.report.gate import evaluate, parse_rules
    from dsprep.shards import check_writable

    _check_combination(ctx, tokenizer, max_len, pack)
    try:
        rules = parse_rules(fail_on) if fail_on is not None else []
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--fail-on") from None  # an unknown metric's lists them
    options = InspectOptions(format=fmt, tokenizer=tokenizer, template=template, train_on=train_on, max_len=max_len,
                             overflow=overflow, pack=pack, show=show, workers=workers)  # fmt: skip
    if json_path is not None and html_path is not None and json_path.resolve() == html_path.resolve():
        raise click.BadParameter(f"{json_path} is also the --json report", param_hint="--html")
    try:
        if show and tokenizer is None and locate(paths)[1]:
            raise click.BadParameter("showing raw rows token by token needs --tokenizer (output folders of "
                                     "tokenized shards show theirs without)", param_hint="--show")  # fmt: skip
        for target in (json_path, html_path):
            if target is not None:
                check_writable(target)  # before the inputs are read, not after
        shown = display(quiet)
        try:
            report = build_report(paths, options, on_start=shown.starter("inspecting") if shown else None)
        finally:
            if shown:
                shown.stop()
    except DsprepError as exc:
        click.echo(f"error: {visible(str(exc))}", err=True)
        ctx.exit(exc.exit_code)
    if rules:
        try:
            report["gate"] = evaluate(rules, report)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--fail-on") from None
    if not quiet:
        import sys

        from rich.console import Console

        from dsprep.report.terminal import print_report

        print_report(report, Console(file=sys.stdout, soft_wrap=True))
    try:
        _write_reports(report, json_path, html_path)
    except DsprepError as exc:
        click.echo(f"error: {visible(str(exc))}", err=True)
        ctx.exit(exc.exit_code)
    gate = report["gate"]
    if gate is not None and not gate["passed"]:
        failed = ", ".join(f"{r['rule']} (value {r['value']:g})" for r in gate["rules"] if r["failed"])
        click.echo(f"error: gate failed: {failed}", err=True)
        ctx.exit(GATE_EXIT_CODE)


def _check_combination(ctx: click.Context, tokenizer: str | None, max_len: int | None, pack: int | None) -> None:
    """Refuse options that would do nothing: token options without --tokenizer, an overflow policy without a length
    limit, a --max-len past --pack."""
    from click.core import ParameterSource

    overflow_given = ctx.get_parameter_source("overflow") == ParameterSource.COMMANDLINE
    if tokenizer is None:
        for option, given, what in (("--pack", pack is not None, "packing"),
                                    ("--max-len", max_len is not None, "a length limit"),
                                    ("--overflow", overflow_given, "an overflow policy")):  # fmt: skip
            if given:
                raise click.BadParameter(f"{what} needs --tokenizer", param_hint=option)
    elif overflow_given and max_len is None and pack is None:
        raise click.BadParameter("an overflow policy needs --max-len or --pack", param_hint="--overflow")
    if pack is not None and max_len is not None and max_len > pack:
        raise click.BadParameter(f"--max-len {max_len} exceeds --pack {pack}", param_hint="--max-len")


def _write_reports(report: dict[str, Any], json_path: Path | None, html_path: Path | None) -> None:
    """Write the JSON and HTML reports asked for; a file that cannot be written is an `OutputError`."""
    from dsprep.shards import write_file

    if json_path is not None:
        from dsprep.report.jsonout import to_json

        write_file(json_path, to_json(report))
    if html_path is not None:
        from dsprep.report.html import render_html

        write_file(html_path, render_html(report).encode("utf-8"))
