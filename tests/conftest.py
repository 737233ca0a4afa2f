"""Shared test helpers: the real sample files in ../shared/data, and a convert-and-read helper."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from dsprep.config import ConvertConfig
from dsprep.pipeline import ConvertResult, convert
from paths import FIXTURES, REPO, SHARED_DATA

__all__ = ["FIXTURES", "REPO", "SHARED_DATA"]


@pytest.fixture(autouse=True)
def output_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets an empty output cache ($DSPREP_CACHE); the built tokenizers are shared, never rebuilt."""
    from dsprep.tokenizers import cache_dir

    built = cache_dir() / "tokenizers"
    built.mkdir(parents=True, exist_ok=True)
    root = tmp_path_factory.mktemp("dsprep-cache")
    (root / "tokenizers").symlink_to(built, target_is_directory=True)
    monkeypatch.setenv("DSPREP_CACHE", str(root))
    return root / "outputs"


@pytest.fixture
def shared_data() -> Path:
    """The folder of real public sample files; tests using it skip when it is absent."""
    if not (SHARED_DATA / "SOURCES.md").is_file():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (set DSPREP_SHARED_DATA to its folder)")
    return SHARED_DATA


class Converted:
    """A finished convert: the result, the normalized rows, the rejects and the manifest."""

    def __init__(self, result: ConvertResult, out: Path) -> None:
        self.result = result
        self.out = out
        self.manifest: dict[str, Any] = orjson.loads((out / "manifest.json").read_bytes())
        shards = sorted(out.glob("part-*.parquet"))
        self.rows: list[dict[str, Any]] = [r for s in shards for r in pq.read_table(s).to_pylist()]
        lines = (out / "rejects.jsonl").read_bytes().splitlines()
        self.rejects: list[dict[str, Any]] = [orjson.loads(line) for line in lines]


@pytest.fixture
def run_convert(tmp_path: Path):
    """Convert inputs into a fresh folder under tmp_path and load everything it wrote."""
    counter = iter(range(1000))

    def run(*inputs: str | Path, **options: Any) -> Converted:
        out = tmp_path / f"out{next(counter)}"
        config = ConvertConfig(inputs=tuple(str(i) for i in inputs), out=out, **options)
        return Converted(convert(config), out)

    return run


@pytest.fixture(params=["whole", "streamed"])
def json_reading(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Read .json files at once, or as files over the streaming threshold are: through ijson in 7-byte pieces (so
    that strings span pieces)."""
    from dsprep import sources

    if request.param == "streamed":
        monkeypatch.setattr(sources, "SMALL_JSON_BYTES", 16)
        monkeypatch.setattr(sources, "JSON_CHUNK_BYTES", 7)
    return str(request.param)
