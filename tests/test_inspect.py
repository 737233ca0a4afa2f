"""`dsprep inspect`: findings on the real sample files, shard verification, the JSON schema and --fail-on gates."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dsprep.config import ConvertConfig
from dsprep.pipeline import convert
from dsprep.report.checks import conversation_findings, text_findings
from dsprep.report.cli import inspect_command
from dsprep.report.jsonout import load_schema
from dsprep.report.raw import RawInspection, location, overlaps
from dsprep.shards import file_sha256
from dsprep.sources import CONTAINERS, InputFile
from dsprep.tokenizers import load_tokenizer
from paths import FIXTURES, SHARED_DATA

DATA_FILES = sorted(
    p for p in SHARED_DATA.rglob("*") if p.is_file() and any(s in CONTAINERS for s in p.suffixes)
) if SHARED_DATA.is_dir() else []  # fmt: skip


def run(*args: Any, tmp: Path | None = None) -> tuple[int, str, dict[str, Any] | None]:
    """Invoke `inspect` with --json into `tmp`; returns (exit code, output, report)."""
    extra = ["--json", str(tmp / "r.json")] if tmp else []
    result = CliRunner().invoke(inspect_command, [*map(str, args), *extra])
    report = json.loads((tmp / "r.json").read_text()) if tmp and (tmp / "r.json").exists() else None
    return result.exit_code, result.output, report


def one(report: dict[str, Any]) -> dict[str, Any]:
    [d] = report["inputs"]
    return d


@pytest.mark.shared_data
@pytest.mark.parametrize("path", DATA_FILES, ids=lambda p: p.name)
def test_every_shared_file_inspects_and_validates(shared_data: Path, path: Path, tmp_path: Path) -> None:
    code, output, report = run(path, "--quiet", tmp=tmp_path)
    assert code == 0, output
    jsonschema.validate(report, load_schema())
    d = one(report)
    assert d["rows"]["read"] == d["rows"]["kept"] + d["rows"]["rejected"]


@pytest.mark.shared_data
def test_cookbook_toy_file(shared_data: Path, tmp_path: Path) -> None:
    code, output, report = run(shared_data / "openai/openai-cookbook__toy_chat_fine_tuning.jsonl", tmp=tmp_path)
    assert code == 0, output
    d = one(report)
    assert d["format"]["name"] == "openai" and d["format"]["confidence"] == 1.0
    assert d["findings"]["no_user_turn"]["count"] == 1
    assert d["findings"]["no_user_turn"]["examples"][0]["location"].endswith("toy_chat_fine_tuning.jsonl:4")
    longest = d["chars"]["longest_message"]
    assert (longest["chars"], longest["role"]) == (26000, "assistant")
    assert longest["location"].endswith("toy_chat_fine_tuning.jsonl:5")


@pytest.mark.shared_data
def test_glaive_zh_observations_without_call(shared_data: Path, tmp_path: Path) -> None:
    d = one(run(shared_data / "multilingual/llamafactory__glaive_toolcall_zh_demo.json", tmp=tmp_path)[2])
    found = d["findings"]["tool_result_without_call"]
    assert found["count"] == 2
    assert [e["location"].rsplit("[", 1)[1] for e in found["examples"]] == ["197]", "293]"]
    assert d["duplicates"]["rows"] == 43


@pytest.mark.shared_data
def test_wwdc25_duplicates_and_train_valid_overlap(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "prompt_completion"
    code, _, report = run(
        folder / "mlx-examples__wwdc25_train.jsonl", folder / "mlx-examples__wwdc25_valid.jsonl", tmp=tmp_path
    )
    assert code == 0
    train, _valid = report["inputs"]
    assert train["duplicates"]["rows"] == 437
    [overlap] = report["overlaps"]
    assert overlap["rows"] == 16 and overlap["b"].endswith("wwdc25_valid.jsonl")
    assert report["totals"]["overlap_rows"] == 16


def _pairwise_overlaps(inspections: list[RawInspection]) -> list[dict[str, Any]]:
    """The overlaps by their definition: every pair (a before b), b's rows whose hash a holds."""
    out = []
    for b_index, b in enumerate(inspections):
        for a in inspections[:b_index]:
            held = set(a.hashes)
            hit = [i for i, h in enumerate(b.hashes) if h in held]
            if hit:
                examples = [{"location": location(b.file, b.rows[i]), "detail": f"also in {a.file.display}"}
                            for i in hit[:5]]  # fmt: skip
                out.append({"a": a.file.display, "b": b.file.display, "rows": len(hit), "examples": examples})
    return out


def test_overlaps_between_many_inputs_are_every_pairs(tmp_path: Path) -> None:
    rng = random.Random(11)
    inspections = []
    for n in range(300):
        ins = RawInspection(InputFile(tmp_path / f"{n}.jsonl", f"in/{n}.jsonl", "jsonl"), {})
        for row in range(rng.choice((0, 1, 2, 5, 40))):
            ins.hashes.append(rng.choice((rng.getrandbits(64), rng.randrange(60), 2**64 - 1 - rng.randrange(3))))
            ins.rows.append(row * 2 + 1)
        inspections.append(ins)
    expected = _pairwise_overlaps(inspections)
    assert len(expected) > 1000 and max(o["rows"] for o in expected) > 5
    assert overlaps(inspections) == expected
    assert overlaps(inspections[:1]) == [] and overlaps([]) == []


def test_thousands_of_small_inputs_report_their_overlaps(tmp_path: Path) -> None:
    folder = tmp_path / "chats"
    folder.mkdir()
    chat = '{{"messages": [{{"role": "user", "content": "q{0}"}}, {{"role": "assistant", "content": "a{0}"}}]}}\n'
    for n in range(3000):  # one conversation each; the 2,998th repeats the 2nd's, the last the first's and its own
        text = chat.format(n) if n not in (2998, 2999) else chat.format(1 if n == 2998 else 0) + chat.format(n)
        (folder / f"{n:04d}.jsonl").write_text(text)
    code, _, report = run(folder, "--workers", "1", tmp=tmp_path)
    assert code == 0 and report["totals"]["rows_read"] == 3002
    assert [(o["a"][-10:], o["b"][-10:], o["rows"]) for o in report["overlaps"]] == [
        ("0001.jsonl", "2998.jsonl", 1),
        ("0000.jsonl", "2999.jsonl", 1),
    ]
    assert report["overlaps"][1]["examples"][0]["location"].endswith("2999.jsonl:1")


@pytest.mark.shared_data
def test_axolotl_missing_turn(shared_data: Path, tmp_path: Path) -> None:
    d = one(run(shared_data / "sharegpt/axolotl__conversation.missingturns.json", tmp=tmp_path)[2])
    assert d["findings"]["empty_turn"]["examples"][0]["detail"] == "turn 1 (assistant) is empty"
    assert d["rejected_by_reason"]["empty_content"]["count"] == 1


@pytest.mark.shared_data
def test_placeholders_duplicates_and_undetectable_format(shared_data: Path, tmp_path: Path) -> None:
    d = one(run(shared_data / "alpaca/llamafactory__identity.json", tmp=tmp_path)[2])
    assert d["findings"]["template_placeholders"]["count"] == 85
    d = one(run(shared_data / "sharegpt/llamafactory__glaive_toolcall_en_demo.json", tmp=tmp_path)[2])
    assert d["duplicates"]["rows"] == 35
    d = one(run(shared_data / "preference/torchtune__stack_exchange_paired_tiny.json", tmp=tmp_path)[2])
    assert d["format"]["name"] is None and "no known format" in d["format"]["error"]
    assert 'chosen = "response_j"' in d["format"]["spec"]


def test_conversation_and_text_checks() -> None:
    def msg(role: str, content: str | None, **kw: Any) -> dict[str, Any]:
        return {"role": role, "content": content, **kw}

    tools = json.dumps([{"type": "function", "function": {"name": "get_weather"}}])
    call = {"name": "get_time", "arguments": "{not json"}
    messages = [msg("user", "hi"), msg("system", "late"), msg("assistant", None, tool_calls=[call]),
                msg("tool", "12:00"), msg("tool", "12:01"), msg("user", " "), msg("user", "?")]  # fmt: skip
    found = dict(conversation_findings(messages, tools))
    assert set(found) == {"ends_on_user", "consecutive_same_role", "system_not_first", "empty_turn",
                          "tool_arguments_not_json", "unknown_tool"}  # fmt: skip
    assert found["consecutive_same_role"] == "turns 5 and 6 are both user"
    assert dict(conversation_findings([msg("user", "a"), msg("tool", "b")]))["tool_result_without_call"]
    names = {name for name, _ in text_findings("a\x00b\x0cc\ufffd {{x}")}
    assert names == {"nul_characters", "control_characters", "replacement_characters", "unbalanced_braces"}


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "o"
    inputs = tuple(str(FIXTURES / "formats" / f) for f in ("openai.jsonl", "sharegpt.jsonl", "alpaca.jsonl"))
    convert(ConvertConfig(inputs=inputs, out=out, tokenizer="mistral:tekken", template="chatml", pack=512))
    return out


@pytest.mark.parametrize("files", [("openai.jsonl", "kto.jsonl"), ("preference.jsonl",)], ids=["kto", "preference"])
def test_tokenized_shards_of_every_kind_count_their_trained_tokens(tmp_path: Path, files: tuple[str, ...]) -> None:
    """Preference and KTO rows have no labels but train their completions (`num_trained`): a shard folder's
    statistics and `--fail-on untrained_rows` count them as the raw inputs' inspection does."""
    out = tmp_path / "o"
    inputs = tuple(str(FIXTURES / "formats" / f) for f in files)
    convert(ConvertConfig(inputs=inputs, out=out, tokenizer="mistral:tekken", template="chatml"))
    table = pq.read_table(out / "part-00000.parquet")
    assert table.column("kind").to_pylist()[-1] in ("kto", "preference")
    code, output, report = run(out, "--fail-on", "untrained_rows>0", tmp=tmp_path)
    assert code == 0, output
    stats = report["shards"][0]["token_stats"]
    assert stats["trained_tokens"] == sum(table.column("num_trained").to_pylist()) > 0
    assert stats["untrained_rows"] == 0
    code, output, raw = run(*inputs, "--tokenizer", "mistral:tekken", "--template", "chatml", tmp=tmp_path)
    assert code == 0, output
    assert raw["tokens"]["untrained_rows"] == 0


def test_text_from_the_data_is_shown_as_text_not_terminal_markup(tmp_path: Path) -> None:
    """Roles, contents, reject details and file names holding ``[/]`` or ``[bold]`` print as they are, and the report
    files are written."""
    src = tmp_path / "chat[dim].jsonl"
    src.write_text(
        json.dumps({"messages": [{"role": "user", "content": "[bold]hi[/]"}, {"role": "assistant", "content": "[/]"}]})
        + "\n"
        + json.dumps({"messages": [{"role": "[/]", "content": "hi"}, {"role": "assistant", "content": "x"}]})
        + "\n"
    )
    code, output, report = run(src, tmp=tmp_path)
    assert code == 0, output
    assert report is not None and report["totals"]["rows_rejected"] == 1
    assert "chat[dim].jsonl" in output and "[/]" in output


def test_shard_statistics_and_examples_follow_every_shard_and_row_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Token statistics of an output read row group by row group equal the shards' own columns, and each example
    names the shard and row it was taken from, in any shard."""
    import dsprep.shards

    monkeypatch.setattr(dsprep.shards, "FLUSH_ROWS", 2)  # row groups of 2 rows, two or three of them per shard
    out = tmp_path / "o"
    inputs = tuple(str(FIXTURES / "formats" / f) for f in ("openai.jsonl", "sharegpt.jsonl", "alpaca.jsonl"))
    config = ConvertConfig(inputs=inputs, out=out, tokenizer="mistral:tekken", template="chatml", shard_bytes=4000,
                           workers=1)  # fmt: skip
    convert(config)
    shards = sorted(out.glob("part-*.parquet"))
    tables = {p.name: pq.read_table(p) for p in shards}
    assert len(shards) >= 2 and all(pq.read_metadata(p).num_row_groups >= 2 for p in shards)
    rows = sum(t.num_rows for t in tables.values())
    code, output, report = run(out, "--show", str(rows), tmp=tmp_path)
    assert code == 0, output
    stats = report["shards"][0]["token_stats"]
    assert stats["tokens"] == sum(sum(t.column("num_tokens").to_pylist()) for t in tables.values())
    assert stats["trained_tokens"] == sum(sum(t.column("num_trained").to_pylist()) for t in tables.values())
    assert len(report["examples"]) == rows
    tok = load_tokenizer("mistral:tekken").tokenizer
    for example in report["examples"]:
        name, index = example["location"].rstrip("]").split("[")
        row = tables[name].slice(int(index), 1).to_pylist()[0]
        shown = min(row["num_tokens"], 400)
        assert example["tokens"] == row["num_tokens"] and example["shown_tokens"] == shown
        assert "".join(text for text, _ in example["pieces"]) == tok.decode(row["input_ids"][:shown])
    assert {e["location"] for e in report["examples"]} == {f"{n}[{i}]" for n, t in tables.items()
                                                          for i in range(t.num_rows)}  # fmt: skip


@pytest.fixture
def copy(packed: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(packed, tmp_path / "copy"))


def test_shards_report(packed: Path, tmp_path: Path) -> None:
    code, output, report = run(packed, "--tokenizer", "mistral:tekken", "--show", "1", tmp=tmp_path)
    assert code == 0, output
    jsonschema.validate(report, load_schema())
    [s] = report["shards"]
    assert s["stage"] == "packed" and s["verified"] is True
    assert s["token_stats"]["untrained_rows"] == 0 and 0 < s["token_stats"]["trained_share"] < 1
    assert any(trained for _, trained in report["examples"][0]["pieces"])


def _rewrite(folder: Path, change) -> None:
    path = folder / "part-00000.parquet"
    rows = pq.read_table(path).to_pylist()
    change(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(path)), path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = file_sha256(path)  # a consistent checksum: the invariant check must catch it
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _flip_byte(folder: Path) -> None:
    path = folder / "part-00000.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _shift_positions(rows: list[dict[str, Any]]) -> None:
    rows[0]["position_ids"][1] += 1


def _boundary_label(rows: list[dict[str, Any]]) -> None:
    row = next(r for r in rows if len(r["seq_lens"]) > 1)
    row["labels"][row["seq_lens"][0]] = row["input_ids"][row["seq_lens"][0]]


def _fingerprint(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["tokenizer"]["fingerprint"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_flip_byte, "checksum mismatch"),
        (lambda f: _rewrite(f, _shift_positions), "position_ids do not restart"),
        (lambda f: _rewrite(f, _boundary_label), "first label is not -100"),
        (_fingerprint, "tokenizer mismatch"),
    ],
    ids=["flipped_byte", "position_ids", "boundary_label", "fingerprint"],
)
def test_shards_corruption_is_an_error(copy: Path, corrupt, message: str) -> None:
    corrupt(copy)
    code, output, _ = run(copy, "--tokenizer", "mistral:tekken")
    assert code == 8
    assert output.startswith("error: ") and message in output


@pytest.mark.parametrize(
    ("rules", "code"),
    [("empty_content>0", 2), ("duplicates>0.05", 0), ("findings>0", 11), ("no_user_turn>0,rejected>=1%", 11),
     ("rejected>0.5", 0), ("untrained_rows>0", 2), ("nonsense", 2)],
)  # fmt: skip
def test_fail_on_exit_codes(tmp_path: Path, rules: str, code: int) -> None:
    src = tmp_path / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            {"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "no user"}]},
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]}]  # fmt: skip
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got, output, _ = run(src, "--quiet", "--fail-on", rules)
    assert got == code, output
    if code == 11:
        assert "error: gate failed:" in output


@pytest.fixture(scope="module")
def all_rejected(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output of the alpaca fixture packed to 5 tokens: every row too long, 3 read = 0 kept + 3 rejected."""
    out = tmp_path_factory.mktemp("all_rejected") / "o"
    inputs = (str(FIXTURES / "formats" / "alpaca.jsonl"),)
    convert(ConvertConfig(inputs=inputs, out=out, tokenizer="mistral:tekken", template="chatml", pack=5))
    return out


def test_an_output_folders_rejects_count_in_the_totals_and_the_gate(
    all_rejected: Path, packed: Path, tmp_path: Path
) -> None:
    """The rows a convert run read, kept and rejected (its manifest's inputs) are the report's totals and what the
    gate's `rejected` metrics measure, as for raw inputs: an output that rejected every row fails the gate."""
    code, output, report = run(all_rejected, "--fail-on", "rejected>1%,rejected_rows>0", tmp=tmp_path)
    assert code == 11, output
    jsonschema.validate(report, load_schema())
    assert report["totals"] == {"inputs": 1, "rows_read": 3, "rows_kept": 0, "rows_rejected": 3, "duplicate_rows": 0,
                                "overlap_rows": 0, "shard_folders": 1}  # fmt: skip
    assert [(r["metric"], r["value"]) for r in report["gate"]["rules"]] == [("rejected", 1.0), ("rejected_rows", 3)]
    assert "total: 1 inputs, read 3 = kept 0 + rejected 3;" in output
    code, output, report = run(packed, "--fail-on", "rejected_rows>0", tmp=tmp_path)
    assert code == 0, output
    assert report["totals"]["inputs"] == 3 and report["totals"]["rows_read"] == report["totals"]["rows_kept"] == 9


@pytest.fixture(scope="module")
def recipe_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The formats_mix recipe's output: train/ and eval/ split folders under a top-level manifest."""
    from dsprep.cli import main

    out = tmp_path_factory.mktemp("recipe") / "o"
    result = CliRunner().invoke(main, ["convert", "--recipe", str(FIXTURES / "recipes" / "formats_mix.yaml"),
                                       "--out", str(out), "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_totals_of_raw_inputs_and_output_folders_add_up_once(
    recipe_output: Path, all_rejected: Path, tmp_path: Path
) -> None:
    """A recipe output counts its sources once (its top-level manifest: 5 files, 13 rows read = 12 kept + 1 not
    sampled), not its splits' repeated or shared rows (their manifests say 15 read); raw inputs and other output
    folders add their own."""
    raw = FIXTURES / "formats" / "openai.jsonl"
    code, output, report = run(recipe_output, raw, all_rejected, "--fail-on", "rejected_rows>3", tmp=tmp_path)
    assert code == 11, output
    jsonschema.validate(report, load_schema())
    assert sorted(Path(s["path"]).name for s in report["shards"]) == ["eval", "o", "train"]
    assert report["totals"] == {"inputs": 5 + 1 + 1, "rows_read": 13 + 3 + 3, "rows_kept": 12 + 3 + 0,
                                "rows_rejected": 1 + 0 + 3, "duplicate_rows": 0, "overlap_rows": 0,
                                "shard_folders": 3}  # fmt: skip
    assert report["gate"]["rules"][0]["value"] == 4
    assert "total: 7 inputs, read 19 = kept 15 + rejected 4;" in output


def test_tokens_json_validates(tmp_path: Path) -> None:
    src = FIXTURES / "formats" / "openai.jsonl"
    args = (
        src,
        "--tokenizer",
        "mistral:tekken",
        "--template",
        "chatml",
        "--max-len",
        "64",
        "--pack",
        "128",
        "--show",
        "2",
    )
    code, output, report = run(*args, "--fail-on", "untrained_rows>0,packing_efficiency<0.01", tmp=tmp_path)
    assert code == 0, output
    jsonschema.validate(report, load_schema())
    tokens = report["tokens"]
    assert tokens["packing"]["max_len"] == 128 and tokens["packing"]["rows"] >= tokens["packing"]["lower_bound"]
    assert tokens["overflow"]["rows_over"] == sum(
        tokens["lengths"]["histogram"]["counts"][i]
        for i, e in enumerate(tokens["lengths"]["histogram"]["edges"][:-1])
        if e > 64
    )
    assert len(report["examples"]) == 2 and report["gate"]["passed"] is True


def test_the_raw_inputs_bytes_are_reported_as_they_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`build_report` is told the raw inputs' size once and then each byte read, after detection's sample; a
    terminal shows it as the `inspecting` line."""
    import rich.console

    from dsprep.report.build import InspectOptions, build_report

    inputs = [FIXTURES / "formats" / "openai.jsonl", FIXTURES / "formats" / "alpaca.jsonl"]
    size = sum(p.stat().st_size for p in inputs)
    told: list[int] = []
    read: list[int] = []

    def start(total: int) -> Any:
        told.append(total)
        return read.append

    report = build_report([str(p) for p in inputs], InspectOptions(), on_start=start)
    assert told == [size] and sum(read) == size and len(read) >= len(inputs)
    assert report["totals"]["rows_read"] > 0
    monkeypatch.setattr(rich.console.Console, "is_terminal", property(lambda _: True))
    code, output, _ = run(*inputs)
    assert code == 0 and "inspecting" in output and f"{size / 1000:.1f}/{size / 1000:.1f} kB" in output


def mixed_rows(path: Path, n: int) -> None:
    """`n` OpenAI-chat lines whose faults, findings, duplicates and longest message fall in different jobs."""
    lines = []
    for i in range(n):
        answer = f"answer {i} " + ("word " * 400 if i == 700 else "") + ("{{name}}" if i % 53 == 0 else "")
        row = {"messages": [{"role": "user", "content": f"question {i}"},
                            {"role": "assistant", "content": "" if i % 89 == 0 else answer}]}  # fmt: skip
        lines.append("{not json" if i % 97 == 0 else json.dumps(row))
    lines[-20:] = lines[1:21]  # duplicates of the first job's rows in the last job
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("overflow", ["drop-turns", "truncate-right", None])
def test_reports_are_the_same_for_any_number_of_workers(
    shared_data: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, overflow: str | None
) -> None:
    """With workers, rows are checked (and encoded) in other processes, job by job, and the outcomes added in order:
    the report is the same, rejects, findings, duplicates, rows over the limit, encode errors and shown examples
    included. `overflow` None: no tokenizer (raw checks only)."""
    import dsprep.report.build
    import dsprep.report.scan
    from dsprep.report.build import InspectOptions, build_report

    pools: list[int] = []
    real_pool = dsprep.report.scan.worker_pool

    def counted_pool(workers: int, spec: Any) -> Any:
        pools.append(workers)
        return real_pool(workers, spec)

    monkeypatch.setattr(dsprep.report.build, "POOL_MIN_BYTES", 0)  # the inputs are small: pool them anyway
    monkeypatch.setattr(dsprep.report.build, "POOL_MIN_BYTES_UNMEASURED", 0)
    monkeypatch.setattr(dsprep.report.scan, "worker_pool", counted_pool)
    groups: list[list[int]] = []  # the inputs of each round trip to a worker
    together = dsprep.report.scan._together

    def recorded(jobs: Any) -> Any:
        for group in together(jobs):
            groups.append([job.input_index for job in group])
            yield group

    monkeypatch.setattr(dsprep.report.scan, "_together", recorded)
    mixed_rows(tmp_path / "mixed.jsonl", 1100)
    inputs = [str(p) for p in (
        shared_data / "alpaca" / "llamafactory__alpaca_en_demo.json",
        shared_data / "sharegpt" / "llamafactory__glaive_toolcall_en_demo.json",
        shared_data / "openai" / "llamafactory__reason_tool_use_demo_50.jsonl",
        FIXTURES / "formats",
        tmp_path / "mixed.jsonl",
        tmp_path / "unanswered.jsonl",
    )]  # fmt: skip
    question = {"messages": [{"role": "user", "content": "a question nobody answers"}]}
    (tmp_path / "unanswered.jsonl").write_text(json.dumps(question) + "\n")  # no trained token: an encode error
    options: dict[str, Any] = {"show": 3}
    if overflow is not None:
        options.update(tokenizer="mistral:tekken", template="chatml", max_len=300, overflow=overflow, pack=512)
    one = build_report(inputs, InspectOptions(**options, workers=1))
    assert pools == []
    two = build_report(inputs, InspectOptions(**options, workers=2))
    assert pools == [2]
    assert one == two
    assert max(len(set(g)) for g in groups) > 3  # the small inputs' jobs went to the workers together
    [mixed] = [i for i in one["inputs"] if i["path"].endswith("mixed.jsonl")]
    too_long = int(overflow == "drop-turns")  # row 700 (over 300 tokens, one turn) is rejected as convert would
    rejected = 12 + 13 - 1 + too_long  # i = 0 both ways
    assert mixed["rows"] == {"read": 1100, "kept": 1100 - rejected, "rejected": rejected}
    assert mixed["rejected_by_reason"].get("too_long", {}).get("count", 0) == too_long
    broken = mixed["rejected_by_reason"]["invalid_json"]
    assert broken["count"] == 12
    assert [e["location"].rsplit(":", 1)[1] for e in broken["examples"]] == ["1", "98", "195", "292", "389"]
    assert mixed["findings"]["template_placeholders"]["count"] > 5
    assert mixed["findings"]["empty_turn"]["count"] == 12  # the rejected ones, read leniently
    assert mixed["duplicates"]["rows"] == 20 + 11  # and 11 repeats of the same broken line
    assert mixed["chars"]["longest_message"]["location"].endswith("mixed.jsonl:701")
    if overflow is None:
        assert one["tokens"] is None
        return
    tokens = one["tokens"]
    assert tokens["rows_encoded"] > 1000 and tokens["encode_errors"] and len(one["examples"]) == 3
    assert tokens["overflow"]["rows_over"] > 0
    assert tokens["overflow"]["rows_dropped" if overflow == "drop-turns" else "tokens_cut"] > 0


def test_examples_of_preference_and_kto_rows_are_shown(tmp_path: Path) -> None:
    """--show renders pair rows as prompt then chosen (or completion) side; a pair's ids are arrays."""
    inputs = (FIXTURES / "formats" / "preference.jsonl", FIXTURES / "formats" / "kto.jsonl")
    code, output, report = run(*inputs, "-t", "mistral:tekken", "--template", "chatml", "--show", "8", tmp=tmp_path)
    assert code == 0, output
    assert report is not None
    kinds = {e["kind"] for e in report["examples"]}
    assert kinds == {"preference", "kto"}
    for example in report["examples"]:
        assert example["pieces"] and any(trained for _, trained in example["pieces"])


def test_a_failure_while_inspecting_is_not_blamed_on_fail_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import dsprep.report.build
    from dsprep.cli import main

    def broken(*_: Any, **__: Any) -> None:
        raise ValueError("boom")

    monkeypatch.setattr(dsprep.report.build, "build_report", broken)
    result = CliRunner().invoke(main, ["inspect", str(FIXTURES / "formats" / "openai.jsonl")])
    assert result.exit_code == 1 and "internal error: ValueError: boom" in result.output
    assert "--fail-on" not in result.output
