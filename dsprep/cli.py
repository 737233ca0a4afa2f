"""dsprep: turn the files people fine-tune LLMs on into verified, normalized, sharded data.

Errors are one line on stderr and an exit code (see README, "Exit codes"); set DSPREP_DEBUG=1 for a traceback.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import importlib
import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dsprep.config import MAX_SEED, MAX_TOKENS, parse_fraction
from dsprep.config import parse_size as _parse_size
from dsprep.errors import DsprepError
from dsprep.server import quiet_blas
from dsprep.version import __version__

if TYPE_CHECKING:
    from dsprep.config import ConvertConfig
    from dsprep.pipeline import InputReport

__all__ = ["main"]

MAX_INPUT_LINES = 20  # inputs whose lines convert prints (and as many more with rejected rows)


def parse_size(text: str, *, positive: bool = False) -> int:
    """'256MB', '1g', '100B', '4096' -> bytes (binary units); a usage error otherwise (see `config.parse_size`)."""
    try:
        return _parse_size(text, positive=positive)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _fraction(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_fraction(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _shard_size(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Check --shard-size up front (a shard size is positive); the text is kept, as a recipe records it."""
    parse_size(value, positive=True)
    return value


def _cache_size(ctx: click.Context, param: click.Parameter, value: str) -> str:
    parse_size(value)
    return value


# commands imported only when named (or listed by --help): `convert` imports neither, nor what they import
LAZY_COMMANDS = {"inspect": ("dsprep.report.cli", "inspect_command"), "recipe": ("dsprep.recipe.cli", "recipe_group")}


class _Group(click.Group):
    """Turns DsprepError into a one-line message and its exit code, and any other failure into one line too; imports
    `LAZY_COMMANDS` when they are asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS and cmd_name not in self.commands:
            module, name = LAZY_COMMANDS[cmd_name]
            self.add_command(getattr(importlib.import_module(module), name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DsprepError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:
            if os.environ.get("DSPREP_DEBUG"):
                raise
            click.echo(f"error: internal error: {type(exc).__name__}: {exc} (set DSPREP_DEBUG=1 for details)", err=True)
            ctx.exit(1)


@functools.lru_cache(maxsize=1)
def _exit_uncollected() -> None:
    """At exit, freeze the objects left (`gc.freeze`) so that the interpreter's last garbage collections skip them:
    after a convert they walked the tokenizer's and the run's millions of objects for about 0.3 s, only to free memory
    that the exit frees anyway. The other exit handlers run as before: this only takes objects out of the collector's
    reach."""
    atexit.register(gc.freeze)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dsprep")
def main() -> None:
    """dsprep: turn raw fine-tuning files into verified, normalized Parquet shards."""
    quiet_blas()  # before numpy is imported
    _exit_uncollected()
    for stream in (sys.stdout, sys.stderr):  # a character the locale's encoding lacks ('→' in Latin-1): an escape
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


@main.command()
@click.argument("inputs", nargs=-1)
@click.option("--out", "-o", type=click.Path(path_type=Path), help="Output folder (must be empty).")
@click.option(
    "--recipe",
    "-r",
    type=click.Path(path_type=Path),
    help="Run a recipe file (see `dsprep recipe`); options given here override the recipe's.",
)
@click.option(
    "--format",
    "-f",
    "fmt",
    default="auto",
    show_default=True,
    help="'auto', a shipped format (see `dsprep formats`), or a path to your own .toml spec.",
)
@click.option(
    "--on-error",
    type=click.Choice(["quarantine", "fail"]),
    default="quarantine",
    show_default=True,
    help="quarantine: bad rows go to rejects.jsonl; fail: stop at the first bad row.",
)
@click.option(
    "--max-rejected",
    callback=_fraction,
    metavar="FRACTION",
    help="Fail the run if more than this fraction of rows is rejected (e.g. 0.01 or 1%).",
)
@click.option(
    "--shard-size",
    default="64MB",
    show_default=True,
    callback=_shard_size,
    help="Start a new shard past this size (packed: shards of about this size, fixed from the token count).",
)
@click.option("--overwrite", is_flag=True, help="Replace the contents of a previous dsprep output folder.")
@click.option(
    "--tokenizer",
    "-t",
    metavar="DIR|NAME",
    help="Tokenize with a local tokenizer folder or a built-in (mistral:tekken, mistral:v3).",
)
@click.option(
    "--template",
    default="tokenizer",
    show_default=True,
    help="Chat template: 'tokenizer' (its own), a shipped name (see `dsprep templates`) or a .jinja file.",
)
@click.option(
    "--train-on",
    type=click.Choice(["assistant", "all", "last"]),
    default="assistant",
    show_default=True,
    help="Trained tokens: assistant turns (per-message flags in the data override), all, or the last assistant turn.",
)
@click.option(
    "--max-len",
    type=click.IntRange(1, MAX_TOKENS),
    help="Longest row in tokens; longer rows follow --overflow (needs --tokenizer).",
)
@click.option(
    "--overflow",
    type=click.Choice(["drop", "truncate-right", "truncate-left", "drop-turns", "split"]),
    default="drop",
    show_default=True,
    help="What to do with rows over --max-len (split: text rows only; needs --tokenizer).",
)
@click.option("--allow-template-warnings", is_flag=True, help="Go on when the template fails a conformance check.")
@click.option(
    "--pack", type=click.IntRange(1, MAX_TOKENS), metavar="L", help="Pack examples into rows of at most L tokens."
)
@click.option(
    "--shuffle-seed", type=click.IntRange(0, MAX_SEED), help="Shuffle the packed rows with this seed (needs --pack)."
)
@click.option(
    "--workers",
    "-j",
    type=click.IntRange(min=1),
    help="Processes that normalize and tokenize (default: every usable core); the output is the same for any number.",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Run normalize + tokenize in local processes, or through Ray Data (needs the ray extra); same output.",
)
@click.option(
    "--ray-address",
    metavar="ADDR",
    help="With --engine ray: the cluster to join (HOST:PORT or 'auto'); default: start a local Ray.",
)
@click.option(
    "--cache/--no-cache",
    default=True,
    show_default=True,
    help="Reuse the output of an identical earlier run (same inputs, specs, template, tokenizer, options).",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    help="Where cached outputs live (default: $DSPREP_CACHE/outputs, else ~/.cache/dsprep/outputs).",
)
@click.option(
    "--cache-max-size",
    default="50GB",
    show_default=True,
    callback=_cache_size,
    help="Keep the cache under this size: the least recently used outputs go first (files an output folder still "
    "holds count as nothing).",
)
@click.option("--explain-cache", is_flag=True, help="Print the cache key's components and, on a miss, what changed.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
def convert(
    inputs: tuple[str, ...],
    out: Path | None,
    recipe: Path | None,
    fmt: str,
    on_error: str,
    max_rejected: float | None,
    shard_size: str,
    overwrite: bool,
    tokenizer: str | None,
    template: str,
    train_on: str,
    max_len: int | None,
    overflow: str,
    allow_template_warnings: bool,
    pack: int | None,
    shuffle_seed: int | None,
    workers: int | None,
    engine: str,
    ray_address: str | None,
    cache: bool,
    cache_dir: Path | None,
    cache_max_size: str,
    explain_cache: bool,
    quiet: bool,
) -> None:
    """Normalize INPUTS (files, folders, globs) into Parquet shards, rejects.jsonl and manifest.json in --out.

    With --recipe, the recipe names the inputs and options, and the output holds train/ and eval/ shard sets.
    """
    from dsprep.config import ConvertConfig

    if recipe is not None:
        _convert_recipe(recipe, inputs, out, overwrite, quiet, workers)
        return
    if not inputs:
        raise click.UsageError("give INPUTS (files, folders or globs) or --recipe")
    if out is None:
        raise click.UsageError("Missing option '--out' / '-o'.")
    _check_combination(tokenizer, max_len, pack, shuffle_seed)
    if ray_address is not None and engine != "ray":
        raise click.BadParameter("--ray-address needs --engine ray", param_hint="--ray-address")
    if cache_dir is not None and _nested(cache_dir, out):
        raise click.BadParameter(
            "the cache folder and the output folder cannot lie in one another", param_hint="--cache-dir"
        )
    config = ConvertConfig(
        inputs=inputs,
        out=out,
        format=fmt,
        on_error=on_error,  # type: ignore[arg-type]
        max_rejected=max_rejected,
        overwrite=overwrite,
        shard_bytes=parse_size(shard_size, positive=True),
        tokenizer=tokenizer,
        template=template,
        train_on=train_on,  # type: ignore[arg-type]
        max_len=max_len,
        overflow=overflow,  # type: ignore[arg-type]
        allow_template_warnings=allow_template_warnings,
        pack=pack,
        shuffle_seed=shuffle_seed,
        workers=workers,
        engine=engine,  # type: ignore[arg-type]
        ray_address=ray_address,
        cache=cache,
        cache_dir=cache_dir,
        cache_max_bytes=parse_size(cache_max_size),
    )
    input_bytes = _input_bytes(inputs)
    from dsprep.server import engine_for

    click.get_current_context().with_resource(engine_for(input_bytes))  # before the server starts: it inherits it
    _start_server_early(config, input_bytes)
    from dsprep.pipeline import convert as run_convert
    from dsprep.progress import display
    from dsprep.progress import echo as plain_echo

    shown = display(quiet)
    echo = shown.say if shown else plain_echo
    say = (lambda _msg: None) if quiet else echo
    on_input = _InputLines(say)
    try:
        note = None if quiet else (lambda msg: echo(msg, err=True))
        explain = (lambda msg: echo(msg, err=True)) if explain_cache else None
        result = run_convert(
            config,
            on_bytes=shown.phase("converting", input_bytes) if shown else None,
            on_input=on_input,
            on_note=note,
            explain=explain,
            on_writing=shown.starter("writing shards", counted=True) if shown else None,
        )
    finally:
        if shown:
            shown.stop()
    on_input.summary()
    shards = result.manifest["shards"]
    if "conformance" in result.manifest:
        c = result.manifest["conformance"]
        methods = result.manifest["mask_methods"]
        say(
            f"template {result.manifest['template']['name']}: end-of-turn {c['eot_text']!r} "
            f"{'trained' if c['eot_trained'] else 'NOT trained'}, "
            f"prefix-stable {'yes' if c['prefix_stable'] else 'no'}; masks: {methods['span']} by span, "
            f"{methods['prefix']} by prefix renders"
        )
    if "packing" in result.manifest and result.manifest["packing"]["rows"]:
        p = result.manifest["packing"]
        say(
            f"packed {p['tokens']} tokens into {p['rows']} rows of at most {p['max_len']}: efficiency "
            f"{p['efficiency']:.2%}, lower bound {p['lower_bound']} (+{p['rows_above_bound']}), examples per row "
            f"{p['examples_per_row_min']}/{p['examples_per_row_mean']:.1f}/{p['examples_per_row_max']} min/mean/max"
        )
    say(f"total: read {result.rows_read} = kept {result.rows_kept} + rejected {result.rows_rejected}")
    if result.rows_read and not result.rows_kept and not quiet:
        click.echo(f"warning: no row was kept; see {out / 'rejects.jsonl'} for each row's reason", err=True)
    say(f"wrote {len(shards)} shard{'s' * (len(shards) != 1)}, rejects.jsonl and manifest.json to {out}")


def _nested(a: Path, b: Path) -> bool:
    """Whether either folder is, or lies inside, the other."""
    a, b = a.resolve(), b.resolve()
    return a.is_relative_to(b) or b.is_relative_to(a)


def _input_bytes(inputs: tuple[str, ...]) -> int:
    """The inputs' total size, for the progress bar; a file that cannot be read counts 0 and inputs that cannot be
    found count nothing (the run reports them)."""
    from dsprep.sources import discover

    total = 0
    with contextlib.suppress(DsprepError):
        for f in discover(inputs):
            with contextlib.suppress(OSError):
                total += f.size
    return total


def _start_server_early(config: ConvertConfig, input_bytes: int) -> None:
    """Start the workers' fork server before importing the pipeline, so that its start-up (importing dsprep, loading
    the encoder: about 0.5 s) runs on another core beside this process's own (another 0.3 s of imports), not after it.

    The pipeline starts it only once no cache entry can match, so that a library caller is left no server after a
    hit; this process exits after a hit, and the server with it.
    """
    from dsprep.server import encoding, launch, wants_server

    if wants_server(config, input_bytes):
        launch(encoding(config))


def _check_combination(tokenizer: str | None, max_len: int | None, pack: int | None, shuffle_seed: int | None) -> None:
    """Refuse options that would do nothing: token options without --tokenizer, an overflow policy without a length
    limit, a shuffle without --pack, cache settings with --no-cache, --max-rejected where the first reject stops."""
    ctx = click.get_current_context()
    given = _given(ctx)
    if tokenizer is None:
        for option, what in (("--pack", "packing"), ("--max-len", "a length limit"),
                             ("--overflow", "an overflow policy"), ("--template", "a chat template"),
                             ("--train-on", "a loss policy"),
                             ("--allow-template-warnings", "a template check to allow")):  # fmt: skip
            if option in given:
                raise click.BadParameter(f"{what} needs --tokenizer", param_hint=option)
    elif "--overflow" in given and max_len is None and pack is None:
        raise click.BadParameter("an overflow policy needs --max-len or --pack", param_hint="--overflow")
    if pack is not None and max_len is not None and max_len > pack:
        raise click.BadParameter(f"--max-len {max_len} exceeds --pack {pack}", param_hint="--max-len")
    if shuffle_seed is not None and pack is None:
        raise click.BadParameter("shuffling packed rows needs --pack", param_hint="--shuffle-seed")
    if not ctx.params["cache"]:
        for option in ("--cache-dir", "--cache-max-size"):
            if option in given:
                raise click.BadParameter("the cache is off (--no-cache)", param_hint=option)
    if "--max-rejected" in given and ctx.params["on_error"] == "fail":
        raise click.BadParameter("--on-error fail stops at the first bad row", param_hint="--max-rejected")


def _given(ctx: click.Context) -> set[str]:
    """The options given on the command line, as their long flags (``--max-len``)."""
    from click.core import ParameterSource

    return {
        f"--{name.replace('_', '-')}"
        for name in ctx.params
        if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
    }


class _InputLines:
    """Each finished input's format and row counts, in two lines: for the first `MAX_INPUT_LINES` inputs, then for
    as many more with rejected rows; the others are summed up in one line at the end (the manifest has them all)."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.inputs = 0
        self.more_rejecting = 0
        self.rest: list[InputReport] = []

    def __call__(self, r: InputReport) -> None:
        self.inputs += 1
        if self.inputs > MAX_INPUT_LINES:
            if not r.rows_rejected or self.more_rejecting >= MAX_INPUT_LINES:
                self.rest.append(r)
                return
            self.more_rejecting += 1
        if r.detection:
            self.say(f"{r.path}: format {r.detection}")
        else:
            self.say(f"{r.path}: format {r.format} ({r.format_origin})")
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(r.rejected_by_reason.items()))
        self.say(
            f"{r.path}: read {r.rows_read} = kept {r.rows_kept} + rejected {r.rows_rejected}"
            + (f" ({reasons})" if reasons else "")
        )

    def summary(self) -> None:
        if not self.rest:
            return
        formats = Counter(r.format for r in self.rest)
        read, kept = sum(r.rows_read for r in self.rest), sum(r.rows_kept for r in self.rest)
        rejecting = sum(1 for r in self.rest if r.rows_rejected)
        self.say(
            f"{len(self.rest)} more inputs ({rejecting} with rejected rows): formats "
            f"{', '.join(f'{name} {n}' for name, n in formats.most_common())}; read {read} = kept {kept} + rejected "
            f"{read - kept}; manifest.json lists every input"
        )


def _convert_recipe(
    path: Path, inputs: tuple[str, ...], out: Path | None, overwrite: bool, quiet: bool, workers: int | None
) -> None:
    """`dsprep convert --recipe`: the recipe's values, overridden by the options given on the command line.

    Recipe runs do not use the output cache: --cache, --cache-dir, --cache-max-size and --explain-cache are refused,
    --no-cache accepted. They run on the local engine: --engine ray and --ray-address are refused.
    """
    from click.core import ParameterSource

    from dsprep.recipe.cli import OVERRIDES, convert_with_recipe

    ctx = click.get_current_context()
    if inputs:
        raise click.UsageError("INPUTS and --recipe exclude each other: list the inputs as the recipe's sources")
    if ctx.get_parameter_source("fmt") == ParameterSource.COMMANDLINE:
        raise click.UsageError("--format applies per source with --recipe: set 'format' on the recipe's sources")
    for name in ("cache", "cache_dir", "cache_max_size", "explain_cache"):
        if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE and ctx.params[name]:
            raise click.UsageError(f"--{name.replace('_', '-')}: recipe runs do not use the output cache")
    for name in ("engine", "ray_address"):
        if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE and ctx.params[name] not in (None, "local"):
            raise click.UsageError(f"--{name.replace('_', '-')}: recipe runs use the local engine (with --workers)")
    overrides = {}
    for name in OVERRIDES:
        if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE:
            value = ctx.params[name]
            is_file = name in ("tokenizer", "template") and Path(value).exists()
            overrides[name] = str(Path(value).absolute()) if is_file else value
    convert_with_recipe(path, overrides=overrides, out=out, overwrite=overwrite, quiet=quiet, workers=workers)


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--tokenizer", "-t", metavar="DIR|NAME", help="Also require the shards to match this tokenizer.")
def verify(folder: Path, tokenizer: str | None) -> None:
    """Verify FOLDER (a dsprep output): checksums, schema, packing invariants, tokenizer fingerprint."""
    from dsprep.verify import verify_output

    manifest = verify_output(folder, tokenizer=tokenizer)
    if manifest["stage"] == "recipe":
        splits = ", ".join(f"{name} {s['rows']} rows" for name, s in manifest["splits"].items())
        click.echo(f"{folder}: ok (recipe: {splits})")
        return
    rows = sum(s["rows"] for s in manifest["shards"])
    click.echo(f"{folder}: ok ({manifest['stage']}, {len(manifest['shards'])} shards, {rows} rows)")


@main.command()
def templates() -> None:
    """List the shipped chat templates."""
    from dsprep.templates import load_template, shipped_template_names

    for name in shipped_template_names():
        first = load_template(name).text.splitlines()[0]
        click.echo(f"{name:<16} {first.removeprefix('{#-').removesuffix('-#}').strip()}")


@main.command()
def formats() -> None:
    """List the shipped input formats."""
    from dsprep.specs import load_spec, shipped_spec_names

    for name in shipped_spec_names():
        spec = load_spec(name)
        note = "" if spec.auto_detect else " [pass --format explicitly]"
        click.echo(f"{name:<18} {spec.kind:<18} {spec.description}{note}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
