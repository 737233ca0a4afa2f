"""The output cache: an identical rerun is a hit (no row processed, same bytes); any changed component is a miss
that names it; a result made with another tokenizer is never reused; beyond its size limit the least recently used
entries go, counting only the bytes the cache alone holds."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

import dsprep.workers
from dsprep.cache import OutputCache, size_text
from dsprep.config import ConvertConfig
from dsprep.pipeline import ConvertResult, convert
from dsprep.templates import load_template
from dsprep.tokenizers import tokenizer_folder
from paths import FIXTURES


@pytest.fixture
def inputs(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "inputs"
    shutil.copytree(FIXTURES / "formats", folder)
    return [folder / "openai.jsonl", folder / "alpaca.jsonl", folder / "text.jsonl"]


class Runner:
    def __init__(self, root: Path, inputs: list[Path]) -> None:
        self.root = root
        self.inputs = inputs
        self.runs = 0
        self.explained: list[str] = []
        self.notes: list[str] = []

    def __call__(self, **options: Any) -> tuple[ConvertResult, Path]:
        out = self.root / f"out{self.runs}"
        self.runs += 1
        self.explained = []
        self.notes = []
        options = {"tokenizer": "mistral:tekken", "template": "chatml", "workers": 1, "cache": True, **options}
        config = ConvertConfig(inputs=tuple(str(i) for i in self.inputs), out=out, **options)
        return convert(config, explain=self.explained.append, on_note=self.notes.append), out

    @property
    def verdict(self) -> str:
        return next(line for line in self.explained if line.startswith("cache:"))


@pytest.fixture
def run(tmp_path: Path, inputs: list[Path]) -> Runner:
    return Runner(tmp_path, inputs)


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_an_identical_rerun_is_a_hit_with_the_same_bytes(run: Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    first, out1 = run()
    assert not first.cached and run.verdict.startswith("cache: miss, no earlier entry")

    def refuse(*_: object) -> None:
        raise AssertionError("a cache hit processed a row")

    monkeypatch.setattr(dsprep.workers, "process", refuse)
    second, out2 = run()
    assert second.cached and run.verdict.startswith("cache: hit")
    assert _files(out1) == _files(out2)
    assert second.manifest == first.manifest and second.rows_read == first.rows_read > 0


def test_a_changed_input_is_a_miss_naming_it(run: Runner, inputs: list[Path]) -> None:
    run()
    with open(inputs[1], "a") as fh:
        fh.write('{"instruction": "Say hi.", "output": "Hi."}\n')
    result, _ = run()
    assert not result.cached
    assert run.verdict == f"cache: miss, changed since the newest entry: input {inputs[1]}"


def test_a_changed_option_is_a_miss_naming_it(run: Runner) -> None:
    run()
    result, _ = run(max_len=3000)
    assert not result.cached
    assert run.verdict == "cache: miss, changed since the newest entry: option max_len (None -> 3000)"


def test_a_changed_template_file_is_a_miss_naming_it(run: Runner, tmp_path: Path) -> None:
    template = tmp_path / "mine.jinja"
    template.write_text(load_template("chatml").text)
    run(template=str(template))
    template.write_text(load_template("chatml").text + "{#- edited -#}")
    result, _ = run(template=str(template))
    assert not result.cached
    assert run.verdict == "cache: miss, changed since the newest entry: template"


def test_a_changed_tokenizer_file_is_a_miss_naming_it(run: Runner, tmp_path: Path) -> None:
    folder = tmp_path / "tok"
    shutil.copytree(tokenizer_folder("mistral:tekken"), folder)
    run(tokenizer=str(folder))
    config = folder / "tokenizer_config.json"
    config.write_text(config.read_text() + "\n")
    result, _ = run(tokenizer=str(folder))
    assert not result.cached
    assert run.verdict == "cache: miss, changed since the newest entry: tokenizer"


def test_another_tokenizer_never_reuses_a_result(run: Runner) -> None:
    first, _ = run()
    second, _ = run(tokenizer="mistral:v3", template="tokenizer")
    assert not second.cached
    assert "tokenizer" in run.verdict.split(": ")[-1].split("; ")
    assert second.manifest["tokenizer"]["fingerprint"] != first.manifest["tokenizer"]["fingerprint"]


def test_an_entry_whose_files_changed_is_dropped_not_served(run: Runner) -> None:
    _, out1 = run()
    (out1 / "rejects.jsonl").write_bytes(b"edited\n")  # a hard link into the cache entry
    result, out2 = run()
    assert not result.cached
    assert (out2 / "rejects.jsonl").read_bytes() == b""


def test_no_cache_stores_nothing(run: Runner, output_cache: Path) -> None:
    run(cache=False)
    assert run.verdict == "cache: off (--no-cache)"
    assert not output_cache.exists()
    result, _ = run()
    assert not result.cached and output_cache.is_dir()


def _entries(folder: Path) -> dict[int | None, int]:
    """The cache's entries by their max_len option, with the bytes of output files each holds alone (one link)."""
    entries = {}
    for entry in folder.iterdir():
        if (entry / "cache.json").is_file():
            meta = orjson.loads((entry / "cache.json").read_bytes())
            files = [entry / name for name in meta["files"]]
            own = sum(p.stat().st_size for p in files if p.stat().st_nlink == 1)
            entries[meta["components"]["options"]["max_len"]] = own
    return entries


def test_beyond_its_limit_the_least_recently_used_entries_go(run: Runner, tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    _, out_a = run(cache_dir=folder, max_len=None)
    _, out_b = run(cache_dir=folder, max_len=3000)
    shutil.rmtree(out_a)
    shutil.rmtree(out_b)  # now only the cache holds their files
    hit, out_hit = run(cache_dir=folder, max_len=None)  # a hit: entry A is now the more recently used
    assert hit.cached
    shutil.rmtree(out_hit)
    sizes = _entries(folder)
    assert set(sizes) == {None, 3000} and all(sizes.values())
    _, out_c = run(cache_dir=folder, max_len=2000, cache_max_bytes=sizes[None] + sizes[3000] - 1)
    assert set(_entries(folder)) == {None, 2000}  # B went: the least recently used; C is kept, A fits beside it
    limit = size_text(sizes[None] + sizes[3000] - 1)
    assert run.notes == [
        f"cache: evicted the 1 least recently used entry ({size_text(sizes[3000])}) to stay under {limit}"
    ]
    assert (out_c / "manifest.json").is_file()


def test_files_an_output_still_holds_count_as_nothing(run: Runner, tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    _, out_a = run(cache_dir=folder, max_len=None)
    run(cache_dir=folder, max_len=3000)
    run(cache_dir=folder, max_len=2000, cache_max_bytes=1)
    assert set(_entries(folder)) == {None, 3000, 2000} and not run.notes  # every entry's files are in an output too
    shutil.rmtree(out_a)
    run(cache_dir=folder, max_len=1000, cache_max_bytes=1)
    assert set(_entries(folder)) == {3000, 2000, 1000}  # only A held bytes of its own
    assert run.notes and run.notes[0].startswith("cache: evicted the 1 least recently used entry")


def test_sizes_read_in_binary_units() -> None:
    assert [size_text(n) for n in (0, 1023, 1024, 3 << 20, 50 << 30, 5 << 40)] == [
        "0 B", "1023 B", "1.0 KiB", "3.0 MiB", "50.0 GiB", "5120.0 GiB",
    ]  # fmt: skip


def test_a_cache_folder_that_cannot_be_made_costs_only_the_cache(run: Runner, tmp_path: Path) -> None:
    """The output is complete before the cache takes it: a cache folder that cannot be made (here under a file) is
    a note, not a failed run, and leaves no partial entry behind."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    result, out = run(cache_dir=blocker / "cache")
    assert not result.cached and (out / "manifest.json").is_file() and result.rows_kept > 0
    assert [n for n in run.notes if n.startswith("cache: could not keep this output in")] == run.notes
    assert f"{blocker / 'cache'} (Not a directory)" in run.notes[0]
    again, out2 = run(cache_dir=blocker / "cache")
    assert not again.cached and _files(out2) == _files(out)


@pytest.mark.parametrize(
    "meta",
    [
        {},
        {"files": {}},
        {"key": "x", "created": 1},
        [],
        {"files": {"manifest.json": [1, 2]}, "created": 1, "components": {"inputs": "x"}},
        {"files": {"../manifest.json": [1, 2], "manifest.json": [1, 2]}, "created": 1, "components": {"inputs": []}},
    ],
    ids=["empty", "no-files", "no-components", "not-an-object", "inputs-not-a-list", "a-path-outside"],
)
def test_an_entry_of_another_shape_is_a_quiet_miss(run: Runner, output_cache: Path, meta: Any) -> None:
    """A ``cache.json`` of another shape (another layout, edited by hand), for this run's key or any other, is never
    served and never stops a run: not the lookup, not --explain-cache, not the check for entries of the same
    inputs that a multi-worker run makes."""
    _, out1 = run()
    entry = next(output_cache.glob("*/cache.json")).parent
    (entry / "cache.json").write_bytes(orjson.dumps(meta))
    (output_cache / "other").mkdir()
    (output_cache / "other" / "cache.json").write_bytes(orjson.dumps(meta))
    assert not OutputCache(output_cache).may_hold([str(i) for i in run.inputs])
    again, out2 = run()
    assert not again.cached and run.verdict.startswith("cache: miss")
    assert _files(out2) == _files(out1)
    third, _ = run()
    assert third.cached  # the malformed entry made way for this run's
