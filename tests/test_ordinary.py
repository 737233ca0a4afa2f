"""The engines under the fast encoder (`dsprep.ordinary`): fastokens and tiktoken give the same ids, fastokens also
where tiktoken's regex gives up, and the rank file fastokens is built from is kept and reused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dsprep.ordinary import OrdinaryEncoder
from dsprep.tokenizers import load_tokenizer

TEXTS = [
    "",
    "hello world",
    "  \n\n\t x",
    "日本語のテキスト",
    "e\u0301 🦩 👩‍👩‍👧",
    "<s>[INST] stays text </s>",
    "7" * 50,
]


@pytest.fixture(scope="module")
def tekken() -> Any:
    return load_tokenizer("mistral:tekken")


def _engines(tekken: Any, tmp_path: Path) -> tuple[OrdinaryEncoder, OrdinaryEncoder]:
    vocab = tekken.fast.ordinary.vocab
    fast = OrdinaryEncoder(vocab, tmp_path / "ranks.tiktoken", "tekken")
    assert fast.wait() == "fastokens"
    slow = OrdinaryEncoder(vocab, None, "tekken")
    slow.wait()
    slow.fast = None
    return fast, slow


def test_both_engines_give_the_tokenizers_ids(tekken: Any, tmp_path: Path) -> None:
    fast, slow = _engines(tekken, tmp_path)
    assert (fast.engine, slow.engine) == ("fastokens", "tiktoken")
    for text in TEXTS:
        expected = tekken.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        got_fast, got_slow = fast.encode(text), slow.encode(text)
        assert got_fast.dtype == np.int32 and got_slow.dtype == np.int32
        assert got_fast.tolist() == got_slow.tolist() == expected, text
        got_fast[:1] = 0  # the arrays are the caller's own (writable, not the engine's buffer)


def test_a_million_spaces(tekken: Any, tmp_path: Path) -> None:
    """fastokens encodes the run tiktoken's regex gives up on (tiktoken raises ValueError: the encoder then falls back
    to the Hugging Face tokenizer, `dsprep.encode`), with the Hugging Face tokenizer's ids."""
    fast, slow = _engines(tekken, tmp_path)
    text = "x" + " " * 1_000_000 + "y"
    assert fast.encode(text).tolist() == tekken.tokenizer(text, add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match="Regex error"):
        slow.encode(text)


def test_lone_surrogates_are_encoded_as_replacement_characters(tekken: Any, tmp_path: Path) -> None:
    fast, slow = _engines(tekken, tmp_path)
    for text in ["a\ud800b", "\udfff", "ok \ud83d end"]:
        replaced = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        assert "\ufffd" in replaced
        assert fast.encode(text).tolist() == slow.encode(text).tolist() == fast.encode(replaced).tolist()


def test_the_rank_file_is_kept_and_reused(tekken: Any, tmp_path: Path) -> None:
    vocab = tekken.fast.ordinary.vocab
    kept = tmp_path / "cache" / "ranks.tiktoken"
    assert OrdinaryEncoder(vocab, kept).wait() == "fastokens"
    first = kept.stat().st_mtime_ns
    assert kept.read_bytes().count(b"\n") == len(vocab.tokens)
    probes = list(kept.parent.glob("ranks.tiktoken.probe-*"))
    assert len(probes) == 1  # tiktoken's ids of the probe, kept: later builds check fastokens without building it
    again = OrdinaryEncoder(vocab, kept)
    assert again.wait() == "fastokens"
    assert "tiktoken" not in again.__dict__
    assert kept.stat().st_mtime_ns == first
    assert not list(kept.parent.glob("*.tmp"))


def test_an_unwritable_rank_file_place_still_gets_fastokens(tekken: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    encoder = OrdinaryEncoder(tekken.fast.ordinary.vocab, blocker / "ranks.tiktoken")
    assert encoder.wait() == "fastokens"
    assert encoder.encode("hello").tolist() == tekken.tokenizer("hello", add_special_tokens=False)["input_ids"]


def test_texts_encoded_before_fastokens_is_built_go_through_tiktoken(
    tekken: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run does not wait for fastokens: until its thread is done, tiktoken encodes, with the same ids."""
    from dsprep import ordinary

    built = threading.Event()
    real = ordinary._fastokens
    monkeypatch.setattr(ordinary, "_fastokens", lambda vocab, kept: built.wait(60) and real(vocab, kept))
    encoder = OrdinaryEncoder(tekken.fast.ordinary.vocab, tmp_path / "ranks.tiktoken")
    text = "an early text, 日本語 and 🦩"
    early = encoder.encode(text)
    assert encoder.engine == "tiktoken"
    built.set()
    assert encoder.wait() == "fastokens"
    assert early.tolist() == encoder.encode(text).tolist()


def test_fastokens_is_not_used_where_it_encodes_the_probe_differently(
    tekken: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dsprep import ordinary

    real = ordinary.OrdinaryEncoder._fast_ids
    monkeypatch.setattr(ordinary.OrdinaryEncoder, "_fast_ids", lambda self, fast, text: real(self, fast, text)[1:])
    assert OrdinaryEncoder(tekken.fast.ordinary.vocab, tmp_path / "ranks.tiktoken").wait() == "tiktoken"


def test_without_fastokens_the_engine_is_tiktoken(tekken: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastokens", None)
    encoder = OrdinaryEncoder(tekken.fast.ordinary.vocab, tmp_path / "ranks.tiktoken")
    assert encoder.wait() == "tiktoken"
    assert not (tmp_path / "ranks.tiktoken").exists()
    assert (
        encoder.encode("hello world").tolist() == tekken.tokenizer("hello world", add_special_tokens=False)["input_ids"]
    )


def test_a_run_chooses_its_engine_by_its_input_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Below `FASTOKENS_MIN_BYTES` a run encodes with tiktoken (fastokens' build would cost more than it saves), above
    with fastokens; a choice already in the environment stands, and the run's choice is undone after it."""
    from dsprep.server import ENGINE_ENV, FASTOKENS_MIN_BYTES, engine_for, wants_fastokens

    monkeypatch.delenv(ENGINE_ENV, raising=False)
    assert wants_fastokens()
    with engine_for(FASTOKENS_MIN_BYTES - 1):
        assert not wants_fastokens()
    with engine_for(FASTOKENS_MIN_BYTES):
        assert wants_fastokens()
    assert ENGINE_ENV not in os.environ
    monkeypatch.setenv(ENGINE_ENV, "tiktoken")
    with engine_for(FASTOKENS_MIN_BYTES * 10):
        assert not wants_fastokens()
    assert os.environ[ENGINE_ENV] == "tiktoken"


def test_encoding_starts_fastokens_only_where_the_run_wants_it(
    tekken: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dsprep.server import ENGINE_ENV

    monkeypatch.setenv(ENGINE_ENV, "tiktoken")
    small = OrdinaryEncoder(tekken.fast.ordinary.vocab, tmp_path / "ranks.tiktoken")
    small.encode("hello")
    assert small._building is None and small.engine == "tiktoken"
    monkeypatch.setenv(ENGINE_ENV, "fastokens")
    large = OrdinaryEncoder(tekken.fast.ordinary.vocab, tmp_path / "ranks.tiktoken")
    large.encode("hello")
    assert large._building is not None
    assert large.wait() == "fastokens"


@pytest.mark.parametrize("engine", ["fastokens", "tiktoken"])
def test_the_fork_server_forks_with_its_engine_built_and_no_other_thread(engine: str) -> None:
    """The server builds fastokens on a thread beside its imports, and joins it before it could fork a worker."""
    probe = f"""
import os, threading
os.environ["DSPREP_FORKSERVER_ENCODER"] = '{{"tokenizer": "mistral:tekken", "template": "chatml", "train_on": "assistant", "max_len": null, "overflow": "drop"}}'
os.environ["DSPREP_ENCODER_ENGINE"] = "{engine}"
import dsprep.forkserver
from dsprep.tokenizers import load_tokenizer
building = [t.name for t in threading.enumerate() if t.name in ("dsprep-engine", "dsprep-fastokens")]
print(len(building), load_tokenizer("mistral:tekken").fast.ordinary.engine)
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", engine]


@pytest.mark.shared_data
def test_shards_are_the_same_bytes_whichever_engine_encodes(tmp_path: Path, shared_data: Path) -> None:
    inputs = [
        shared_data / "sharegpt" / "llamafactory__glaive_toolcall_en_demo.json",
        shared_data / "multilingual" / "llamafactory__glaive_toolcall_zh_demo.json",
        shared_data / "openai" / "llamafactory__reason_tool_use_demo_50.jsonl",
    ]
    outputs = []
    for engine, workers in (("fastokens", "2"), ("tiktoken", "1")):
        out = tmp_path / engine
        args = [sys.executable, "-m", "dsprep", "convert", *map(str, inputs), "-o", str(out), "-q", "--no-cache",
                "-t", "mistral:tekken", "--template", "chatml", "--pack", "2048", "--workers", workers]  # fmt: skip
        env = {**os.environ, "DSPREP_ENCODER_ENGINE": engine}
        done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outputs[0] == outputs[1]
    assert len(outputs[0]) > 2


def test_a_build_started_ahead_is_the_one_the_encoder_takes(tekken: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fork server starts building a built-in's engine from its kept rank file before anything else is loaded
    (`kept_ranks`, `engine_build.start`); the encoder then takes that build rather than making another."""
    from dsprep import engine_build
    from dsprep.tokenizers import kept_ranks

    tekken.fast.ordinary.wait()  # the rank file is kept by now
    kept = kept_ranks("mistral:tekken")
    assert kept is not None and kept[0].is_file() and kept[1] == tekken.fast.ordinary.vocab.pattern
    assert kept_ranks(str(tekken.folder)) is None  # a folder's engine is built when its encoder is
    assert engine_build.take(*kept) == (False, None)
    builds: list[Path] = []
    real = engine_build.build
    monkeypatch.setattr(engine_build, "build", lambda path, pattern: builds.append(path) or real(path, pattern))
    engine_build.start(*kept)
    encoder = OrdinaryEncoder(tekken.fast.ordinary.vocab, kept[0])
    assert encoder.wait() == "fastokens"
    assert builds == [kept[0]]  # one build: the one started ahead
    assert engine_build.take(*kept) == (False, None)
    assert encoder.encode("ahead").tolist() == tekken.tokenizer("ahead", add_special_tokens=False)["input_ids"]


def test_small_converts_and_inspects_never_build_fastokens(tmp_path: Path) -> None:
    """Below `FASTOKENS_MIN_BYTES` the library calls and the commands encode with tiktoken alone: no build thread
    is started (its 0.7 s would be waited for at exit: a small `dsprep inspect` took 1.9 s instead of 0.6 s)."""
    data = tmp_path / "chat.jsonl"
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}
    data.write_text((json.dumps(chat) + "\n") * 50)
    probe = f"""
import threading
from pathlib import Path
from dsprep.config import ConvertConfig
from dsprep.pipeline import convert
from dsprep.report.build import InspectOptions, build_report
from dsprep.tokenizers import load_tokenizer
convert(ConvertConfig(inputs=({str(data)!r},), out=Path({str(tmp_path / "out")!r}), tokenizer="mistral:tekken",
                      template="chatml", cache=False, workers=1))
build_report([{str(data)!r}], InspectOptions(tokenizer="mistral:tekken", template="chatml", workers=1))
ordinary = load_tokenizer("mistral:tekken").fast.ordinary
print(ordinary._started, ordinary.engine, [t.name for t in threading.enumerate() if "engine" in t.name or "fastokens" in t.name])
"""
    env = {k: v for k, v in os.environ.items() if k != "DSPREP_ENCODER_ENGINE"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "tiktoken", "[]"]
