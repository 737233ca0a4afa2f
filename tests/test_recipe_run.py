"""`dsprep convert --recipe` on the hand-written fixtures: layout, accounting, overrides, reproduction, inspect."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from dsprep.cli import main
from dsprep.config import ConvertConfig
from dsprep.pipeline import convert
from dsprep.report.jsonout import load_schema
from dsprep.verify import verify_output
from paths import FIXTURES

MIX = FIXTURES / "recipes" / "formats_mix.yaml"


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(main, ["convert", *args])


def load(out: Path) -> dict[str, Any]:
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    manifest["_rows"] = {s: pq.read_table(sorted((out / s).glob("part-*.parquet"))[0]).to_pylist()
                         for s in ("train", "eval")}  # fmt: skip
    manifest["_rejects"] = [orjson.loads(line) for line in (out / "rejects.jsonl").read_bytes().splitlines()]
    return manifest


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.parquet"))}


@pytest.fixture(scope="module")
def mix(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("mix") / "out"
    result = run_cli("--recipe", str(MIX), "--out", str(out))
    assert result.exit_code == 0, result.output
    return out, load(out)


def by_source(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in manifest["sources"]}


def test_the_output_is_two_verified_shard_sets_and_a_manifest(mix: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = mix
    assert sorted(p.name for p in out.iterdir()) == ["eval", "manifest.json", "rejects.jsonl", "train"]
    assert verify_output(out)["stage"] == "recipe"
    for split in ("train", "eval"):
        assert verify_output(out / split)["stage"] == "tokenized"
    assert manifest["splits"]["train"]["examples"] == len(manifest["_rows"]["train"]) == 12
    assert manifest["splits"]["eval"]["examples"] == len(manifest["_rows"]["eval"]) == 3


def test_every_row_read_is_kept_or_rejected_per_source(mix: tuple[Path, dict[str, Any]]) -> None:
    _, manifest = mix
    rejected = Counter((r["source"], r["reason"]) for r in manifest["_rejects"])
    written = Counter(r["source_file"] for split in manifest["_rows"].values() for r in split if "-r" not in r["id"])
    for s in manifest["sources"]:
        assert s["rows_read"] == s["rows_kept"] + s["rows_rejected"]
        assert s["rejected_by_reason"] == {reason: n for (name, reason), n in rejected.items() if name == s["name"]}
        assert s["rows_kept"] == written[s["paths"][0]]
        assert s["rows_read"] == sum(i["rows_read"] for i in s["inputs"])


def test_sampling_eval_and_split_follow_the_recipe(mix: tuple[Path, dict[str, Any]]) -> None:
    _, manifest = mix
    s = by_source(manifest)
    assert (s["sharegpt"]["train"]["examples"], s["sharegpt"]["repeated"]) == (6, 3)
    assert (s["alpaca"]["train"]["examples"], s["alpaca"]["eval"]["examples"]) == (2, 1)
    assert (s["completions"]["train"]["examples"], s["completions"]["not_sampled"]) == (1, 1)
    assert (s["kto"]["train"]["examples"], s["kto"]["eval"]["examples"]) == (0, 2)
    ids = [r["id"] for r in manifest["_rows"]["train"]]
    assert len(ids) == len(set(ids))
    assert sum(1 for i in ids if i.endswith("-r1")) == 3
    shares = [x["share_of_train_examples"] for x in manifest["sources"]]
    assert shares == pytest.approx([6 / 12, 3 / 12, 2 / 12, 1 / 12, 0.0])


def test_a_source_train_on_gives_the_masks_of_that_policy(mix: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    _, manifest = mix
    src = str(FIXTURES / "formats" / "openai.jsonl")
    expected = {}  # a plain convert with --train-on last (its conformance probe flags earlier turns' markers)
    for policy in ("last", "assistant"):
        config = ConvertConfig(inputs=(src,), out=tmp_path / policy, tokenizer="mistral:tekken", template="chatml",
                               train_on=policy, max_len=512, allow_template_warnings=True)  # fmt: skip
        convert(config)
        rows = pq.read_table(tmp_path / policy / "part-00000.parquet").to_pylist()
        expected[policy] = {r["id"]: r["num_trained"] for r in rows}
    got = {r["id"]: r["num_trained"] for r in manifest["_rows"]["train"] if r["source_file"] == src}
    assert got == expected["last"]
    assert got != expected["assistant"]  # the fixture has a multi-turn row, so the policy matters


@pytest.mark.parametrize("other", [None, "last"])
def test_a_source_trained_on_all_has_the_labels_of_a_plain_convert_whatever_the_other_sources_do(
    other: str | None, tmp_path: Path
) -> None:
    """`all` trains the template's own tokens too, as `--train-on all` does, also beside a source of another policy."""
    src = FIXTURES / "formats" / "openai.jsonl"
    config = ConvertConfig(inputs=(str(src),), out=tmp_path / "plain", tokenizer="mistral:tekken", template="chatml",
                           train_on="all", allow_template_warnings=True)  # fmt: skip
    convert(config)
    plain = {r["source_row"]: r["labels"] for r in pq.read_table(tmp_path / "plain" / "part-00000.parquet").to_pylist()}
    assert all(-100 not in labels for labels in plain.values())
    sources = [{"path": str(src), "train_on": "all"}]
    if other is not None:
        sources.append({"path": str(FIXTURES / "formats" / "sharegpt.jsonl"), "format": "sharegpt", "train_on": other})
    recipe = tmp_path / "mix.yaml"
    recipe.write_text(yaml.safe_dump({"sources": sources, "tokenizer": "mistral:tekken", "template": "chatml",
                                      "allow_template_warnings": True}))  # fmt: skip
    result = run_cli("--recipe", str(recipe), "--out", str(tmp_path / "out"), "-q")
    assert result.exit_code == 0, result.output
    rows = load(tmp_path / "out")["_rows"]["train"]
    got = {r["source_row"]: r["labels"] for r in rows if r["source_file"] == str(src)}
    assert got == plain
    if other is not None:
        assert any(-100 in r["labels"] for r in rows if r["source_file"] != str(src))


def test_the_manifest_recipe_reproduces_byte_identical_shards(mix: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, manifest = mix
    recorded = tmp_path / "recorded.yaml"
    recorded.write_text(yaml.safe_dump(manifest["recipe"]))
    result = run_cli("--recipe", str(recorded), "--out", str(tmp_path / "again"), "-q")
    assert result.exit_code == 0, result.output
    assert shard_bytes(tmp_path / "again") == shard_bytes(out)
    assert len(shard_bytes(out)) == 2
    assert (tmp_path / "again" / "rejects.jsonl").read_bytes() == (out / "rejects.jsonl").read_bytes()


def test_command_line_options_override_the_recipe_and_are_recorded(
    mix: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out = tmp_path / "o"
    result = run_cli("--recipe", str(MIX), "--out", str(out), "-q", "--max-len", "100", "--shard-size", "1MB")
    assert result.exit_code == 0, result.output
    manifest = load(out)
    assert (manifest["recipe"]["max_len"], manifest["recipe"]["shard_size"]) == (100, "1MB")
    assert manifest["recipe"]["out"] == str(out)
    assert manifest["recipe"]["tokenizer"] == "mistral:tekken"  # not given: the recipe's value
    assert orjson.loads((out / "train" / "manifest.json").read_bytes())["options"]["max_len"] == 100
    long_ones = [r for r in mix[1]["_rows"]["train"] if r["num_tokens"] > 100]
    assert long_ones and max(r["num_tokens"] for r in manifest["_rows"]["train"]) <= 100
    assert len(manifest["_rows"]["train"]) == len(mix[1]["_rows"]["train"]) - len(long_ones)
    too_long = {(r["source_file"], r["source_row"]) for r in manifest["_rejects"] if r["reason"] == "too_long"}
    assert too_long == {(r["source_file"], r["source_row"]) for r in long_ones}


def test_any_number_of_workers_writes_the_same_bytes_and_rejects_a_row_once(tmp_path: Path) -> None:
    files = {}
    for workers in ("1", "2"):
        out = tmp_path / workers
        result = run_cli("--recipe", str(MIX), "--out", str(out), "-q", "--max-len", "60", "--workers", workers)
        assert result.exit_code == 0, result.output
        files[workers] = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    manifests = [orjson.loads(f.pop("manifest.json")) for f in files.values()]
    assert files["1"] == files["2"]
    assert [m["recipe"].pop("out") for m in manifests] == [str(tmp_path / "1"), str(tmp_path / "2")]
    assert manifests[0] == manifests[1]
    sharegpt = str(FIXTURES / "formats" / "sharegpt.jsonl")
    in_train = [orjson.loads(line) for line in files["1"]["train/rejects.jsonl"].splitlines()]
    repeated = [r for r in in_train if r["source_file"] == sharegpt]
    assert len(repeated) == 2 and repeated[0] == repeated[1]  # a row and its repeated copy
    assert (
        repeated[0]["reason"] == "too_long" and repeated[0]["location"] == f"{sharegpt}:{repeated[0]['source_row'] + 1}"
    )
    top = [orjson.loads(line) for line in files["1"]["rejects.jsonl"].splitlines()]
    too_long = [(r["source"], r["source_row"]) for r in top if r["reason"] == "too_long"]
    assert too_long.count(("sharegpt", repeated[0]["source_row"])) == 1
    sharegpt_stats = by_source(manifests[0])["sharegpt"]
    assert sharegpt_stats["train"]["rejected"] == 2 and sharegpt_stats["rejected_by_reason"] == {"too_long": 1}


def test_recipe_runs_refuse_the_output_cache_options(tmp_path: Path) -> None:
    refused = (["--cache"], ["--cache-dir", str(tmp_path / "c")], ["--cache-max-size", "1GB"], ["--explain-cache"])
    for option in refused:
        result = run_cli("--recipe", str(MIX), "--out", str(tmp_path / "o"), *option)
        assert result.exit_code == 2 and "recipe runs do not use the output cache" in result.output
    assert not (tmp_path / "o").exists()


def test_a_recipe_output_is_replaced_only_with_overwrite(mix: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(mix[0], out)
    again = run_cli("--recipe", str(MIX), "--out", str(out), "-q")
    assert again.exit_code == 6 and "--overwrite" in again.output
    assert run_cli("--recipe", str(MIX), "--out", str(out), "-q", "--overwrite").exit_code == 0
    assert shard_bytes(out) == shard_bytes(mix[0])


def test_inputs_and_format_do_not_mix_with_a_recipe(tmp_path: Path) -> None:
    assert run_cli("x.jsonl", "--recipe", str(MIX), "--out", str(tmp_path / "o")).exit_code == 2
    assert run_cli("--recipe", str(MIX), "--format", "openai", "--out", str(tmp_path / "o")).exit_code == 2
    assert run_cli("--out", str(tmp_path / "o")).exit_code == 2


def test_spec_overrides_map_other_keys_and_bad_ones_name_the_source(tmp_path: Path) -> None:
    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "Q1", "answer": "A1"}\n{"question": "Q2"}\n')
    recipe = tmp_path / "prep.yaml"
    recipe.write_text("sources:\n  - path: qa.jsonl\n    format: prompt_completion\n"
                      "    fields: {prompt: question, completion: answer}\n")  # fmt: skip
    assert run_cli("--recipe", str(recipe), "--out", str(tmp_path / "o"), "-q").exit_code == 0
    manifest = load(tmp_path / "o")
    (row,) = manifest["_rows"]["train"]
    assert (row["kind"], row["prompt"], row["completion"]) == ("prompt_completion", "Q1", "A1")
    assert manifest["stage"] == "recipe" and manifest["splits"]["train"]["stage"] == "normalized"
    assert [r["reason"] for r in manifest["_rejects"]] == ["missing_field"]
    recipe.write_text("sources:\n  - path: qa.jsonl\n    format: prompt_completion\n    fields: {answer: x}\n")
    bad = run_cli("--recipe", str(recipe), "--out", str(tmp_path / "o2"))
    assert bad.exit_code == 10
    assert bad.output.startswith(f"error: {recipe}: source qa: its overrides make an invalid prompt_completion spec: ")
    assert ": :" not in bad.output  # an error of the whole spec names no empty location


def test_a_derived_spec_neither_uses_nor_fills_the_output_cache(tmp_path: Path, output_cache: Path) -> None:
    from dsprep.specs import FormatSpec

    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "Q1", "answer": "A1"}\n')

    def derive(spec: FormatSpec) -> FormatSpec:
        fields = {**spec.model_dump()["fields"], "prompt": "question", "completion": "answer"}
        return FormatSpec.model_validate({**spec.model_dump(), "fields": fields})

    def run(name: str, **derived: Any) -> Any:
        config = ConvertConfig(inputs=(str(data),), out=tmp_path / name, format="prompt_completion", cache=True)
        return convert(config, **derived)

    assert run("derived", derive_spec=derive).rows_kept == 1
    assert not output_cache.exists()
    plain = run("plain")
    assert (plain.rows_kept, plain.cached) == (0, False) and output_cache.exists()
    again = run("again", derive_spec=derive)
    assert (again.rows_kept, again.cached) == (1, False)


def test_prompt_dedup_keeps_one_answer_per_prompt(tmp_path: Path) -> None:
    data = tmp_path / "pc.jsonl"
    data.write_text("".join(orjson.dumps({"prompt": f"P{i % 3}", "completion": f"C{i}"}).decode() + "\n"
                            for i in range(9)))  # fmt: skip
    recipe = tmp_path / "prep.yaml"
    for by, kept in (("prompt", 3), ("conversation", 9), ("none", 9)):
        recipe.write_text(f"sources:\n  - path: pc.jsonl\ndedup: {{by: {by}}}\n")
        assert run_cli("--recipe", str(recipe), "--out", str(tmp_path / by), "-q").exit_code == 0
        manifest = load(tmp_path / by)
        assert [r["completion"] for r in manifest["_rows"]["train"]] == [f"C{i}" for i in range(kept)]
        duplicates = [r for r in manifest["_rejects"] if r["reason"] == "duplicate"]
        assert len(duplicates) == 9 - kept
        for d in duplicates:
            assert d["duplicate_of"]["source_row"] == d["source_row"] % 3
            assert d["duplicate_of"]["location"] == f"{data}:{d['source_row'] % 3 + 1}"


def test_inspect_shows_per_source_statistics(mix: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, manifest = mix
    result = CliRunner().invoke(main, ["inspect", str(out), "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    report = orjson.loads((tmp_path / "r.json").read_bytes())
    jsonschema.validate(report, load_schema())
    entries = {Path(s["path"]).name: s for s in report["shards"]}
    assert sorted(entries) == ["eval", "train"]
    train = {s["name"]: s for s in entries["train"]["recipe_sources"]}
    for s in manifest["sources"]:
        assert train[s["name"]]["examples"] == s["train"]["examples"]
        assert train[s["name"]]["trained_tokens"] == s["train"]["trained_tokens"]
        assert s["name"] in result.output
    assert sum(r["tokens"] for r in train.values()) == entries["train"]["token_stats"]["tokens"]


def test_recipe_init_writes_a_recipe_that_runs(tmp_path: Path) -> None:
    recipe = tmp_path / "prep.yaml"
    inputs = [str(FIXTURES / "formats" / f) for f in ("sharegpt.jsonl", "alpaca.jsonl", "kto.jsonl")]
    result = CliRunner().invoke(main, ["recipe", "init", *inputs, "-o", str(recipe), "--template", "chatml"])
    assert result.exit_code == 0, result.output
    text = recipe.read_text()
    assert text.startswith("# yaml-language-server: $schema=")
    data = yaml.safe_load(text)
    assert [s["format"] for s in data["sources"]] == ["sharegpt", "alpaca", "kto"]
    assert CliRunner().invoke(main, ["recipe", "init", *inputs, "-o", str(recipe)]).exit_code == 6
    run = run_cli("--recipe", str(recipe), "-q")
    assert run.exit_code == 0, run.output
    assert verify_output(tmp_path / "prepared")["stage"] == "recipe"


def test_recipe_init_writes_local_template_and_tokenizer_relative_to_the_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dsprep.recipe.load import load_recipe

    monkeypatch.chdir(tmp_path)
    shutil.copy(FIXTURES / "formats" / "openai.jsonl", "chats.jsonl")
    Path("my.jinja").write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    Path("tok").mkdir()
    Path("sub").mkdir()
    args = ["recipe", "init", "chats.jsonl", "-o", "sub/prep.yaml", "--tokenizer", "tok", "--template", "my.jinja"]
    assert CliRunner().invoke(main, args).exit_code == 0
    data = yaml.safe_load(Path("sub/prep.yaml").read_text())
    assert (data["sources"][0]["path"], data["tokenizer"], data["template"]) == (
        "../chats.jsonl",
        "../tok",
        "../my.jinja",
    )
    recipe = load_recipe(Path("sub/prep.yaml"))
    assert (recipe.tokenizer, recipe.template) == (str(tmp_path / "tok"), str(tmp_path / "my.jinja"))
    args = ["recipe", "init", "chats.jsonl", "-o", "prep.yaml", "--tokenizer", "tok", "--template", "a: b"]
    assert CliRunner().invoke(main, args).exit_code == 0
    data = yaml.safe_load(Path("prep.yaml").read_text())  # a value YAML would misread is quoted
    assert (data["tokenizer"], data["template"]) == ("./tok", "a: b")
    assert load_recipe(Path("prep.yaml")).tokenizer == str(tmp_path / "tok")


@pytest.mark.parametrize(
    ("options", "code", "message"),
    [
        ("", 0, ""),
        ("on_error: fail\n", 4, "invalid_rows.jsonl:"),
        ("max_rejected: 0.01\n", 5, "over max_rejected 1%"),
    ],
)  # fmt: skip
def test_bad_rows_follow_on_error_and_max_rejected(tmp_path: Path, options: str, code: int, message: str) -> None:
    recipe = tmp_path / "prep.yaml"
    bad = FIXTURES / "bad" / "invalid_rows.jsonl"
    recipe.write_text(f"sources:\n  - path: {bad}\n    format: openai\n  - path: {FIXTURES / 'formats' / 'openai.jsonl'}\n"
                      + options)  # fmt: skip
    result = run_cli("--recipe", str(recipe), "--out", str(tmp_path / "o"), "-q")
    assert result.exit_code == code, result.output
    assert message in result.output
    assert (tmp_path / "o" / "manifest.json").exists() == (code == 0)
    if options.startswith("on_error: fail"):  # the row that stopped the run is in the recipe's rejects
        (entry,) = [orjson.loads(line) for line in (tmp_path / "o" / "rejects.jsonl").read_bytes().splitlines()]
        assert entry["source"] == "invalid_rows" and entry["location"] in result.output
    if code == 0:
        manifest = load(tmp_path / "o")
        (first, second) = manifest["sources"]
        assert first["rows_rejected"] > 0 and second["rows_rejected"] == 0
        assert first["rows_read"] == first["rows_kept"] + first["rows_rejected"]


def test_a_row_that_stops_the_tokenize_stage_on_error_fail_is_in_the_recipe_rejects(tmp_path: Path) -> None:
    recipe = tmp_path / "prep.yaml"
    recipe.write_text(f"sources:\n  - path: {FIXTURES / 'formats' / 'text.jsonl'}\n  - path: "
                      f"{FIXTURES / 'formats' / 'openai.jsonl'}\ntokenizer: mistral:tekken\ntemplate: chatml\n"
                      "allow_template_warnings: true\non_error: fail\nmax_len: 12\n")  # fmt: skip
    result = run_cli("--recipe", str(recipe), "--out", str(tmp_path / "o"), "-q")
    assert result.exit_code == 4, result.output
    (entry,) = [orjson.loads(line) for line in (tmp_path / "o" / "rejects.jsonl").read_bytes().splitlines()]
    assert entry["reason"] == "too_long" and entry["source"] in ("text", "openai")
    assert entry["location"] in result.output


@pytest.mark.parametrize(
    ("recipe_lines", "options", "message"),
    [
        ("shuffle_seed: 3\n", (), "prep.yaml:2: the recipe: 'shuffle_seed' shuffles packed rows: it needs 'pack'"),
        ("max_len: 10\n", (), "prep.yaml:2: the recipe: 'max_len' needs a 'tokenizer'"),
        ("overflow: split\n", (), "prep.yaml:2: the recipe: 'overflow' needs a 'tokenizer'"),
        ("", ("--max-len", "5"), "with the command-line options: options: 'max_len' needs a 'tokenizer'"),
        ("", ("--shuffle-seed", "1"), "'shuffle_seed' shuffles packed rows: it needs 'pack'"),
        ("", ("--engine", "ray"), "--engine: recipe runs use the local engine"),
        ("", ("--ray-address", "1.2.3.4:1"), "--ray-address: recipe runs use the local engine"),
        ("", ("--max-len", "5", "--overflow", "split"), "'max_len' needs a 'tokenizer'"),
    ],
)  # fmt: skip
def test_recipe_options_that_would_do_nothing_are_refused(
    tmp_path: Path, recipe_lines: str, options: tuple[str, ...], message: str
) -> None:
    recipe = tmp_path / "prep.yaml"
    recipe.write_text(f"sources: [{{path: {FIXTURES / 'formats' / 'openai.jsonl'}}}]\n{recipe_lines}")
    result = run_cli("--recipe", str(recipe), "--out", str(tmp_path / "o"), "-q", *options)
    assert result.exit_code in (2, 10), result.output
    assert message in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("rows: 1000000000000", "prep.yaml:2: sources[0].rows: Input should be less than or equal to 100000000"),
        ("weight: .inf", "prep.yaml:2: sources[0].weight: Input should be a finite number"),
        ("weight: 1.0e+12", "prep.yaml: source openai: weight 1000000000000.0 asks for 3,000,000,000,000 of its 3 rows, more "
                            "than the 100,000,000 one source may give"),
    ],
)  # fmt: skip
def test_a_source_asking_for_more_rows_than_a_source_may_give_is_a_recipe_error(
    tmp_path: Path, line: str, message: str
) -> None:
    recipe = tmp_path / "prep.yaml"
    recipe.write_text(f"sources:\n  - {{path: {FIXTURES / 'formats' / 'openai.jsonl'}, {line}}}\n")
    result = run_cli("--recipe", str(recipe), "--out", str(tmp_path / "o"), "-q")
    assert result.exit_code == 10, result.output
    assert result.output.strip().endswith(message)


def test_a_recipe_without_out_needs_the_option(tmp_path: Path) -> None:
    recipe = tmp_path / "prep.yaml"
    recipe.write_text(f"sources:\n  - path: {FIXTURES / 'formats' / 'text.jsonl'}\n")
    result = run_cli("--recipe", str(recipe))
    assert result.exit_code == 2 and "pass --out" in result.output


def test_a_packed_run_reproduces_from_its_manifest_and_counts_unpackable_rows(tmp_path: Path) -> None:
    first = tmp_path / "first"
    assert (
        run_cli("--recipe", str(MIX), "--out", str(first), "-q", "--pack", "512", "--shuffle-seed", "1").exit_code == 0
    )
    manifest = load(first)
    assert {s["stage"] for s in manifest["splits"].values()} == {"packed"}
    assert verify_output(first)["stage"] == "recipe"
    kto = by_source(manifest)["kto"]
    assert kto["rejected_by_reason"] == {"not_packable": 2} and kto["rows_kept"] == 0
    recorded = tmp_path / "recorded.yaml"
    recorded.write_text(yaml.safe_dump(manifest["recipe"]))
    assert run_cli("--recipe", str(recorded), "--out", str(tmp_path / "again"), "-q").exit_code == 0
    assert shard_bytes(tmp_path / "again") == shard_bytes(first)
    examples = [e for split in manifest["_rows"].values() for r in split for e in r["example_ids"]]
    assert len(examples) == len(set(examples)) == sum(s["examples"] for s in manifest["splits"].values())


@pytest.mark.parametrize("pack", [None, 512])
def test_progress_follows_each_stage_to_its_total(tmp_path: Path, pack: int | None) -> None:
    """Each stage of a recipe run is a phase whose progress adds up to its total: each source's bytes read and its
    normalized rows written, the rows selection reads, each split's rows tokenized and its shards written."""
    import threading

    from dsprep.recipe.load import load_recipe
    from dsprep.recipe.run import run_recipe

    phases: list[dict[str, Any]] = []
    lock = threading.Lock()  # the shards' steps are reported from the writing threads

    def start(description: str, total: int, *, counted: bool = False) -> Any:
        phase = {"description": description, "total": total, "counted": counted, "done": 0}
        phases.append(phase)

        def advance(n: int) -> None:
            with lock:
                phase["done"] += n

        return advance

    recipe = load_recipe(MIX).model_copy(update={"pack": pack})
    manifest = run_recipe(recipe, out=tmp_path / "o", workers=2, progress=start)
    labels = [s.name for s in recipe.sources]
    assert [p["description"] for p in phases] == [
        *(s for label in labels for s in (f"reading {label}", f"writing {label}'s normalized rows")),
        "selecting", "tokenizing train", "writing train shards", "tokenizing eval", "writing eval shards",
    ]  # fmt: skip
    assert all(p["done"] == p["total"] > 0 for p in phases), phases
    by_name = {p["description"]: p for p in phases}
    for source in manifest["sources"]:
        assert by_name[f"reading {source['name']}"]["total"] == sum(i["bytes"] for i in source["inputs"])
        assert not by_name[f"reading {source['name']}"]["counted"]
    normalized = sum(i["rows_kept"] for s in manifest["sources"] for i in s["inputs"])
    assert by_name["selecting"]["total"] == normalized
    for split in ("train", "eval"):
        tokenized = sum(s[split]["examples"] + s[split]["rejected"] for s in manifest["sources"])
        assert by_name[f"tokenizing {split}"]["total"] == tokenized
        assert by_name[f"writing {split} shards"]["counted"]  # its steps: tests/test_assemble.py


def test_a_terminal_sees_the_stages_of_a_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rich.console

    monkeypatch.setattr(rich.console.Console, "is_terminal", property(lambda _: True))
    result = run_cli("--recipe", str(MIX), "--out", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    for stage in ("reading alpaca", "selecting", "tokenizing train", "writing train shards", "writing eval shards"):
        assert stage in result.output
    last = result.output.split("writing eval shards")[-1]
    done = re.search(r"(?<![\d.])(\d+)/(\d+)(?![\d.])", last)
    assert done is not None and done[1] == done[2], last


def test_a_recipe_whose_train_split_keeps_no_row_warns(tmp_path: Path) -> None:
    """Every row over max_len: the run completes (max_rejected is the gate) and says train is empty."""
    recipe = tmp_path / "prep.yaml"
    recipe.write_text(f"sources:\n  - path: {FIXTURES / 'formats' / 'openai.jsonl'}\ntokenizer: mistral:tekken\n"
                      "template: chatml\nmax_len: 4\n")  # fmt: skip
    out = tmp_path / "o"
    result = run_cli("--recipe", str(recipe), "--out", str(out), "-q")
    assert result.exit_code == 0, result.output
    assert result.stderr == f"warning: the train split kept no row; see {out / 'rejects.jsonl'} for each row's reason\n"
    assert load(out)["splits"]["train"]["examples"] == 0
    fine = run_cli("--recipe", str(MIX), "--out", str(tmp_path / "mix"), "-q")
    assert fine.exit_code == 0 and fine.stderr == ""


def test_two_sources_reading_the_same_rows_give_them_distinct_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without dedup, two sources may read the same file: each row is kept twice, so the second source's copies get
    ids of their own (as repeated copies do), and the recorded output folder is absolute though given relative."""
    data = FIXTURES / "formats" / "alpaca.jsonl"
    recipe = tmp_path / "twice.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "sources": [{"path": str(data), "name": "a", "rows": 3}, {"path": str(data), "name": "b", "rows": 3}],
                "tokenizer": "mistral:tekken",
                "template": "chatml",
            }
        )
    )
    monkeypatch.chdir(tmp_path)
    result = run_cli("--recipe", str(recipe), "--out", "out", "-q", "--workers", "1")
    assert result.exit_code == 0, result.output
    manifest = load(tmp_path / "out")
    ids = [r["id"] for r in manifest["_rows"]["train"]]
    assert len(ids) == 6 and len(set(ids)) == 6
    assert sorted(i for i in ids if i.endswith("-s1")) == sorted(i + "-s1" for i in ids if not i.endswith("-s1"))
    assert manifest["recipe"]["out"] == str(tmp_path / "out")
