"""Read a recipe file: YAML with line numbers, validated by `dsprep.recipe.model`, errors as one line.

Every problem is a `RecipeError` naming the file and the line, e.g.
``prep.yaml:12: unknown key 'max_lenght' in sources[1] (did you mean 'max_len'?)`` or
``prep.yaml:7: sources[0].rows: expected an integer, got 'ten'``. Paths inside the recipe are relative to its file.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from dsprep.errors import RecipeError
from dsprep.recipe.model import Recipe

__all__ = ["load_recipe", "parse_recipe", "resolve_paths"]

Loc = tuple[str | int, ...]
UNION_TAGS = {"str", "int", "float", "constrained-float", "bool", "list[str]", "RoleOverride", "EvalSplit", "Dedup",
              "Source"}  # fmt: skip
EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "string_type": "a string", "bool_type": "true or false",
    "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
}  # fmt: skip


def _lines(node: yaml.Node, loc: Loc, out: dict[Loc, int], origin: str, path: frozenset[int] = frozenset()) -> None:
    """Record the 1-based line of every key and value below `node` (keys under loc + (key,) + ('<key>',)); `path`:
    the nodes above it, so that an alias of one of them (a recursive recipe) is an error, not endless recursion."""
    out.setdefault(loc, node.start_mark.line + 1)
    if id(node) in path:
        raise RecipeError(f"{origin}:{node.start_mark.line + 1}: {_where(loc)} contains itself (a recursive alias)")
    path = path | {id(node)}
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            if key in seen:
                raise RecipeError(
                    f"{origin}:{key_node.start_mark.line + 1}: key {key!r} appears twice in {_where(loc)}"
                )
            seen.add(key)
            out[(*loc, key, "<key>")] = key_node.start_mark.line + 1
            _lines(value_node, (*loc, key), out, origin, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _lines(item, (*loc, i), out, origin, path)


def _where(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "the recipe"


def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, dict):
        return [m for arg in typing.get_args(annotation) for m in _models(arg)]
    return []


def _fields_at(loc: Loc) -> list[str]:
    """The keys the model at `loc` accepts (for 'did you mean')."""
    model: type[BaseModel] = Recipe
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            continue  # a list index or a mapping key
        sub = _models(field.annotation)
        if not sub:
            return []
        model = sub[0]
    return list(model.model_fields)


def _line(lines: dict[Loc, int], loc: Loc, *, key: bool) -> int:
    if key and (*loc, "<key>") in lines:
        return lines[(*loc, "<key>")]
    while loc not in lines and loc:
        loc = loc[:-1]
    return lines.get(loc, 1)


def _clean(loc: tuple[Any, ...]) -> Loc:
    """A pydantic location without its union-member tags (``path.str`` -> ``path``)."""
    return tuple(p for p in loc if not (isinstance(p, str) and (p in UNION_TAGS or "[" in p)))


def _message(error: ValidationError, lines: dict[Loc, int], origin: str) -> str:
    errors = error.errors()
    # the deepest error (inside a mapping rather than "not a string"), an unknown key before a missing one
    first = max(errors, key=lambda e: (len(_clean(e["loc"])), e["type"] == "extra_forbidden"))
    loc = _clean(first["loc"])
    if first["type"] == "extra_forbidden":
        key, parent = loc[-1], loc[:-1]
        close = difflib.get_close_matches(str(key), _fields_at(parent), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{origin}:{_line(lines, loc, key=True)}: unknown key {key!r} in {_where(parent)}{hint}"
    got, at = first.get("input"), f"{origin}:{_line(lines, loc, key=False)}: {_where(loc)}"
    expected = [EXPECTED[e["type"]] for e in errors if _clean(e["loc"]) == loc and e["type"] in EXPECTED]
    if first["type"] in EXPECTED:
        return f"{at}: expected {' or '.join(dict.fromkeys(expected))}, got {got!r}"
    if first["type"] == "literal_error":
        return f"{at}: expected {first['msg'].removeprefix('Input should be ')}, got {got!r}"
    if first["type"] == "missing":
        return f"{origin}:{_line(lines, loc[:-1], key=False)}: {_where(loc[:-1])}: missing key {loc[-1]!r}"
    msg = first["msg"].removeprefix("Value error, ")
    named = re.search(r"'(\w+)'", msg)
    line = _line(lines, (*loc, named.group(1)), key=True) if named else _line(lines, loc, key=False)
    return f"{origin}:{line}: {_where(loc)}: {msg}"


def parse_recipe(text: str, *, origin: str) -> Recipe:
    """Parse and validate recipe text; `origin` names the file in error messages."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"{origin}{line}: not valid YAML: {problem}") from None
    if not isinstance(data, dict) or node is None:
        raise RecipeError(f"{origin}:1: a recipe is a mapping with at least a 'sources' list")
    lines: dict[Loc, int] = {}
    _lines(node, (), lines, origin)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_message(exc, lines, origin)) from None
    _check_formats(recipe, lines, origin)
    return recipe


def _check_formats(recipe: Recipe, lines: dict[Loc, int], origin: str) -> None:
    """Each source's format is 'auto', a shipped format's name, or a spec file's path (a .toml or with a '/')."""
    from dsprep.specs import shipped_spec_names

    names = shipped_spec_names()
    for i, source in enumerate(recipe.sources):
        value = source.format
        if value != "auto" and value not in names and not value.endswith(".toml") and "/" not in value:
            loc: Loc = ("sources", i, "format")
            raise RecipeError(f"{origin}:{_line(lines, loc, key=False)}: {_where(loc)}: expected 'auto', a shipped "
                              f"format ({', '.join(names)}) or a .toml spec path, got {value!r}")  # fmt: skip


def load_recipe(path: Path) -> Recipe:
    """Read and validate a recipe file, with its paths (sources, out, spec and template files) made absolute."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: a recipe is UTF-8 text") from None
    return resolve_paths(parse_recipe(text, origin=str(path)), path.parent)


def _absolute(base: Path, value: str) -> str:
    return value if os.path.isabs(value) else os.path.normpath(os.path.abspath(base / value))


def _local(base: Path, value: str, suffixes: tuple[str, ...]) -> str:
    """A spec or template value: a file path (made absolute) or a name (kept)."""
    return _absolute(base, value) if value.endswith(suffixes) or "/" in value else value


def resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    """The recipe with every relative path made absolute against `base` (the recipe file's folder)."""
    sources = []
    for s in recipe.sources:
        paths = [_absolute(base, p) for p in s.paths]
        update: dict[str, Any] = {"path": paths[0] if isinstance(s.path, str) else paths}
        update["format"] = _local(base, s.format, (".toml",))
        sources.append(s.model_copy(update=update))
    update = {"sources": sources, "template": _local(base, recipe.template, (".jinja", ".j2"))}
    if recipe.out is not None:
        update["out"] = _absolute(base, recipe.out)
    if recipe.tokenizer is not None and (recipe.tokenizer.startswith((".", "/")) or (base / recipe.tokenizer).exists()):
        update["tokenizer"] = _absolute(base, recipe.tokenizer)
    return recipe.model_copy(update=update)
