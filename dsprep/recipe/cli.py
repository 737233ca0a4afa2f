"""The command line of recipes: ``dsprep convert --recipe``, ``dsprep recipe schema`` and ``dsprep recipe init``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import orjson

__all__ = ["OVERRIDES", "convert_with_recipe", "recipe_group"]

# `dsprep convert` options a recipe also sets; given on the command line, they win over the recipe's values.
OVERRIDES = ("tokenizer", "template", "train_on", "max_len", "overflow", "allow_template_warnings", "pack",
             "shuffle_seed", "on_error", "max_rejected", "shard_size")  # fmt: skip


def convert_with_recipe(
    path: Path, *, overrides: dict[str, Any], out: Path | None, overwrite: bool, quiet: bool, workers: int | None = None
) -> dict[str, Any]:
    """Load the recipe at `path`, apply command-line `overrides` (and `out`), run it and print a summary."""
    from pydantic import ValidationError

    from dsprep.errors import RecipeError
    from dsprep.progress import display
    from dsprep.recipe.load import load_recipe
    from dsprep.recipe.model import Recipe
    from dsprep.recipe.run import run_recipe

    recipe = load_recipe(path)
    try:
        recipe = Recipe.model_validate({**recipe.model_dump(), **overrides})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "options"
        raise RecipeError(f"{path}: with the command-line options: {where}: "
                          f"{err['msg'].removeprefix('Value error, ')}") from None  # fmt: skip
    target = out if out is not None else Path(recipe.out) if recipe.out else None
    if target is None:
        raise click.UsageError("the recipe sets no 'out'; pass --out")
    say = (lambda _msg: None) if quiet else click.echo
    shown = display(quiet)
    try:
        manifest = run_recipe(recipe, out=target, overwrite=overwrite, origin=str(path), say=say, workers=workers,
                              progress=shown.phase if shown else None)  # fmt: skip
    finally:
        if shown:
            shown.stop()
    dedup, as_read, selected = manifest["dedup"], manifest["leakage"]["as_read"], manifest["leakage"]["selected"]
    say(f"dedup ({dedup['by']}): removed {dedup['removed']} rows; eval rows equal to a train row: "
        f"{as_read['eval_rows_in_train']} as read, {selected['eval_rows_in_train']} selected")  # fmt: skip
    if selected["eval_rows_in_train"]:
        click.echo("warning: eval rows duplicate train rows; set dedup.by to remove them from train", err=True)
    for s in manifest["sources"]:
        train, share, evals = s["train"]["examples"], s["share_of_train_examples"], s["eval"]["examples"]
        say(f"{s['name']}: read {s['rows_read']} = kept {s['rows_kept']} + rejected {s['rows_rejected']}; "
            f"train {train} ({share:.1%}), eval {evals}")  # fmt: skip
    for name, split in manifest["splits"].items():
        say(f"{name}: {split['examples']} examples in {split['rows']} rows ({split['stage']})")
    say(f"wrote train/, eval/, rejects.jsonl and manifest.json to {target}")
    if manifest["totals"]["rows_read"] and not manifest["splits"]["train"]["examples"]:
        click.echo(f"warning: the train split kept no row; see {target / 'rejects.jsonl'} for each row's reason",
                   err=True)  # fmt: skip
    return manifest


@click.group("recipe")
def recipe_group() -> None:
    """Recipes: one YAML file describing a whole preparation (see README, "Recipes")."""


@recipe_group.command("schema")
def schema_command() -> None:
    """Print the JSON Schema of recipe files (for editors: `# yaml-language-server: $schema=...`)."""
    from dsprep.recipe.model import recipe_json_schema

    click.echo(orjson.dumps(recipe_json_schema(), option=orjson.OPT_INDENT_2).decode())


@recipe_group.command("init")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Write the recipe here (default: stdout).")
@click.option("--tokenizer", "-t", metavar="DIR|NAME", help="The tokenizer the recipe names.")
@click.option("--template", help="The chat template the recipe names.")
@click.option("--force", is_flag=True, help="Replace an existing --output file.")
def init_command(
    inputs: tuple[str, ...], output: Path | None, tokenizer: str | None, template: str | None, force: bool
) -> None:
    """Write a commented starter recipe for INPUTS, with each input's detected format."""
    from dsprep.errors import OutputError
    from dsprep.recipe.init import starter_recipe
    from dsprep.shards import check_writable, write_file

    if output is not None:
        check_writable(output)
        if output.exists() and not force:
            raise OutputError(f"{output}: exists; pass --force to replace it")
    base = output.parent if output is not None else Path.cwd()
    name = output.name if output is not None else "prep.yaml"
    text = starter_recipe(inputs, base=base, name=name, tokenizer=tokenizer, template=template)
    if output is None:
        click.echo(text, nl=False)
        return
    write_file(output, text.encode("utf-8"))
    click.echo(f"wrote {output}")
