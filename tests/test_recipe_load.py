"""Recipe files: unknown keys with a suggestion and a line, wrong types naming key and type, the JSON Schema."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import orjson
import pytest
import yaml
from click.testing import CliRunner

from dsprep.cli import main
from dsprep.errors import RecipeError
from dsprep.recipe.load import load_recipe, parse_recipe
from dsprep.recipe.model import recipe_json_schema
from paths import FIXTURES, REPO

SHIPPED_SCHEMA = REPO / "dsprep" / "recipe" / "recipe.schema.json"
EXAMPLES = sorted((FIXTURES / "recipes").glob("*.yaml"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sources:\n  - path: a.json\nmax_lenght: 4\n",
         "prep.yaml:3: unknown key 'max_lenght' in the recipe (did you mean 'max_len'?)"),
        ("sources:\n  - path: a.json\n  - path: b.json\n\n    wieght: 2\n",
         "prep.yaml:5: unknown key 'wieght' in sources[1] (did you mean 'weight'?)"),
        ("sources:\n  - path: a.json\n    eval: {fraction: 0.1, sed: 3}\n",
         "prep.yaml:3: unknown key 'sed' in sources[0].eval (did you mean 'seed'?)"),
        ("sources:\n  - path: a.json\n    roles:\n      human: {rol: user}\n",
         "prep.yaml:4: unknown key 'rol' in sources[0].roles.human (did you mean 'role'?)"),
        ("sources:\n  - path: a.json\ndedup:\n  bye: prompt\n",
         "prep.yaml:4: unknown key 'bye' in dedup (did you mean 'by'?)"),
        ("sources:\n  - path: a.json\nzzz: 1\n", "prep.yaml:3: unknown key 'zzz' in the recipe"),
    ],
)  # fmt: skip
def test_unknown_keys_name_the_line_and_suggest_the_key(text: str, expected: str) -> None:
    with pytest.raises(RecipeError) as err:
        parse_recipe(text, origin="prep.yaml")
    assert str(err.value) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sources:\n  - path: a.json\n    rows: ten\n", "prep.yaml:3: sources[0].rows: expected an integer, got 'ten'"),
        ("sources:\n  - path: 3\n", "prep.yaml:2: sources[0].path: expected a string or a list, got 3"),
        ("sources:\n  - path: a.json\npack: '4096'\n", "prep.yaml:3: pack: expected an integer, got '4096'"),
        ("sources: a.json\n", "prep.yaml:1: sources: expected a list, got 'a.json'"),
        ("sources:\n  - path: a.json\n    split: test\n",
         "prep.yaml:3: sources[0].split: expected 'train' or 'eval', got 'test'"),
        ("sources:\n  - path: a.json\n    weight: -1\n",
         "prep.yaml:3: sources[0].weight: Input should be greater than or equal to 0"),
        ("sources:\n  - name: x\n", "prep.yaml:2: sources[0]: missing key 'path'"),
        ("sources:\n  - path: a.json\n    weight: 1\n    rows: 3\n", "prep.yaml:3: sources[0]: give 'weight' or 'rows', not both"),
        ("sources:\n  - path: a.json\n\npack: 10\n", "prep.yaml:4: the recipe: 'pack' needs a 'tokenizer'"),
        ("sources:\n  - path: a.json\neval: {fraction: 0.1, rows: 3}\n",
         "prep.yaml:3: eval: give exactly one of 'fraction' and 'rows'"),
        ("sources:\n  - path: a.json\n  - path: b/a.json\n",
         "prep.yaml:1: the recipe: source names must be unique; give 'name' to the sources called a"),
        ("sources:\n  - path: a.json\n    path: b.json\n", "prep.yaml:3: key 'path' appears twice in sources[0]"),
        ("sources: [\n", "prep.yaml:2: not valid YAML: expected the node content, but found '<stream end>'"),
        ("- a\n- b\n", "prep.yaml:1: a recipe is a mapping with at least a 'sources' list"),
        ("sources: &s [*s]\n", "prep.yaml:1: sources[0] contains itself (a recursive alias)"),
        ("x: &x {y: *x}\nsources:\n  - path: a.json\n", "prep.yaml:1: x.y contains itself (a recursive alias)"),
        ("sources:\n  - path: a.json\n    format: nosuch\n",
         "prep.yaml:3: sources[0].format: expected 'auto', a shipped format (alpaca, hh_transcript, kto, openai, "
         "preference, prompt_completion, sharegpt, text) or a .toml spec path, got 'nosuch'"),
    ],
)  # fmt: skip
def test_wrong_values_name_the_key_and_what_was_expected(text: str, expected: str) -> None:
    with pytest.raises(RecipeError) as err:
        parse_recipe(text, origin="prep.yaml")
    assert str(err.value) == expected


def test_a_typo_is_one_line_on_stderr_with_exit_code_10(tmp_path: Path) -> None:
    recipe = tmp_path / "prep.yaml"
    recipe.write_text("sources:\n  - path: data.jsonl\n    trian_on: last\n")
    result = CliRunner().invoke(main, ["convert", "--recipe", str(recipe), "--out", str(tmp_path / "o")])
    assert result.exit_code == 10
    assert result.output == f"error: {recipe}:3: unknown key 'trian_on' in sources[0] (did you mean 'train_on'?)\n"
    assert not (tmp_path / "o").exists()


def test_paths_are_relative_to_the_recipe_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    recipe = tmp_path / "sub" / "prep.yaml"
    recipe.write_text("sources:\n  - path: ../data/*.jsonl\n    format: my.toml\ntemplate: chatml\nout: prepared\n")
    loaded = load_recipe(recipe)
    assert loaded.sources[0].path == str(tmp_path / "data" / "*.jsonl")
    assert loaded.sources[0].format == str(tmp_path / "sub" / "my.toml")
    assert loaded.template == "chatml"
    assert loaded.out == str(tmp_path / "sub" / "prepared")


def test_the_shipped_schema_is_the_models_schema() -> None:
    assert orjson.loads(SHIPPED_SCHEMA.read_bytes()) == recipe_json_schema()


def test_recipe_schema_command_prints_the_schema() -> None:
    result = CliRunner().invoke(main, ["recipe", "schema"])
    assert result.exit_code == 0
    assert orjson.loads(result.output) == recipe_json_schema()


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_the_json_schema_validates_the_example_recipes(example: Path) -> None:
    data = yaml.safe_load(example.read_text())
    jsonschema.Draft202012Validator(recipe_json_schema()).validate(data)
    assert example.read_text().startswith("# yaml-language-server: $schema=../../dsprep/recipe/recipe.schema.json\n")
    parse_recipe(example.read_text(), origin=str(example))  # and the loader agrees


def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize(
    "change",
    [{"max_lenght": 4}, {"sources": [{"path": "a.json", "wieght": 1}]}, {"pack": "4096"},
     {"sources": [{"path": "a.json", "split": "test"}]}, {"dedup": {"by": "rows"}}],
)  # fmt: skip
def test_the_json_schema_rejects_what_the_loader_rejects(change: dict[str, object]) -> None:
    data = {"sources": [{"path": "a.json"}], **change}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, recipe_json_schema())
    with pytest.raises(RecipeError):
        parse_recipe(yaml.safe_dump(data), origin="prep.yaml")


def test_the_readme_example_recipe_is_valid_and_exit_code_10_is_documented() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Recipes", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    jsonschema.validate(yaml.safe_load(example), recipe_json_schema())
    recipe = parse_recipe(example, origin="README.md")
    assert [s.split for s in recipe.sources].count("eval") == 1
    assert "| 10 | a recipe file is invalid" in readme
    assert RecipeError.exit_code == 10


@pytest.mark.parametrize(
    ("path", "label"),
    [("data/sharegpt.jsonl", "sharegpt"), ("a/b/c.json.gz", "c"), ("raw/2024/**/*.json", "2024"),
     ("*.jsonl", "source"), ("../d/e f.jsonl", "e_f"), ("folder/", "folder")],
)  # fmt: skip
def test_unnamed_sources_are_named_after_their_path(path: str, label: str) -> None:
    assert parse_recipe(f"sources:\n  - path: '{path}'\n", origin="p.yaml").labels() == [label]
