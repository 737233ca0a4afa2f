"""TRL entry points on CPU: SFT on packed shards (padding-free, isolated examples) and DPO on preference shards.

Shards come from `dsprep convert` on real sample files, for a tiny random Llama with the mistral:v3 tokenizer built
locally. A forward pre-hook on the model sees every batch TRL's collator produced: `position_ids` must restart exactly
where the shard's examples start and no `attention_mask` may reach the model; the first batch, run through the same
model in float64, must give every example the per-token losses it has alone.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow.parquet as pq
import pytest

from dsprep.config import ConvertConfig
from dsprep.errors import ConfigError, InputError, TokenizerError, VerifyError
from dsprep.integrations.trl import DPO_NEEDS, SFT_NEEDS
from dsprep.pipeline import convert
from isolation import example_loss_deltas, float64_model
from paths import SHARED_DATA

trl = pytest.importorskip("trl", reason="the TRL tests need the TRL environment: pip install 'dsprep[trl]'")
torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.trl,
    pytest.mark.shared_data,
    # TRL 1.16 still sets `gradient_checkpointing`, which transformers 5.24 renamed; Trainer pins memory without a GPU
    pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.* is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true but no accelerator:UserWarning"),
]
REPO = Path(__file__).resolve().parents[2]
PREFERENCE = "preference/llamafactory__dpo_en_demo.json"
SFT_SOURCE = "sharegpt/fastchat__dummy_conversation.json"


def _entry(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "train_entry" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _convert(tmp: Path, source: str, tokenizer: str, **options: Any) -> Path:
    if not (SHARED_DATA / "SOURCES.md").is_file():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    convert(
        ConvertConfig(inputs=(str(SHARED_DATA / source),), out=tmp, tokenizer=tokenizer, template="chatml", **options)
    )
    return tmp


class Run:
    """One SFT run through `trl_sft.build`, with every model call's keyword arguments recorded."""

    def __init__(self, trainer: Any, calls: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
        self.trainer, self.calls, self.rows = trainer, calls, rows


@pytest.fixture(scope="module")
def sft_run(packed_shards: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    sft = _entry("trl_sft")
    out = tmp_path_factory.mktemp("sft")
    args = sft.parse_args(["--shards", str(packed_shards), "--model", str(tiny_model_dir), "--output-dir", str(out),
                           "--max-steps", "3", "--batch-size", "2", "--lr", "1e-3"])  # fmt: skip
    trainer = sft.build(args)
    calls: list[dict[str, Any]] = []

    def record(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.append({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})

    handle = trainer.model.register_forward_pre_hook(record, with_kwargs=True)
    trainer.train()
    handle.remove()
    rows = [r for p in sorted(packed_shards.glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]
    return Run(trainer, calls, rows)


def _expected(ids: list[int], rows: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """The shard rows a padding-free batch concatenated, found by content: their position_ids and labels."""
    positions: list[int] = []
    labels: list[int] = []
    while len(positions) < len(ids):
        at = len(positions)
        row = next((r for r in rows if ids[at : at + len(r["input_ids"])] == r["input_ids"]), None)
        assert row is not None, f"batch tokens from offset {at} are not a shard row"
        positions += [p for n in row["seq_lens"] for p in range(n)]
        labels += row["labels"]
    return positions, labels


def test_sft_trains_three_steps_with_a_finite_loss(sft_run: Run) -> None:
    assert sft_run.trainer.state.global_step == 3
    assert math.isfinite(sft_run.trainer.state.log_history[-1]["train_loss"])


def test_every_batch_restarts_positions_at_the_shard_boundaries_without_a_mask(sft_run: Run) -> None:
    assert len(sft_run.calls) == sft_run.trainer.state.global_step  # one forward per step, each one checked
    for call in sft_run.calls:
        assert call.get("attention_mask") is None, "an attention_mask reached the model for packed rows"
        ids, pos, labels = call["input_ids"], call["position_ids"], call["labels"]
        assert ids.shape[0] == 1 and pos.shape == ids.shape == labels.shape
        want_pos, want_labels = _expected(ids[0].tolist(), sft_run.rows)
        assert pos[0].tolist() == want_pos
        assert labels[0].tolist() == want_labels
        assert (pos[0] == 0).sum() >= 2, "a padding-free batch should hold several examples"


def test_first_batch_gives_each_example_its_alone_losses(sft_run: Run, tiny_model_dir: Path) -> None:
    first = sft_run.calls[0]
    worst, examples = example_loss_deltas(
        float64_model(tiny_model_dir), first["input_ids"], first["labels"], first["position_ids"]
    )
    assert examples >= 2
    assert worst <= 1e-9


def test_unpacked_shards_are_one_example_per_row(unpacked_shards: Path) -> None:
    from dsprep.integrations.trl import SFT_COLUMNS, sft_dataset

    ds = sft_dataset(sorted(unpacked_shards.glob("part-*.parquet")))
    assert tuple(ds.column_names) == SFT_COLUMNS
    assert all(r["seq_lengths"] == [len(r["input_ids"])] for r in ds)


def test_dpo_trains_two_steps_on_preference_shards(tiny_model_dir: Path, tmp_path: Path) -> None:
    shards = _convert(tmp_path / "prefs", PREFERENCE, str(tiny_model_dir), max_len=192)
    dpo = _entry("trl_dpo")
    args = dpo.parse_args(["--shards", str(shards), "--model", str(tiny_model_dir), "--output-dir",
                           str(tmp_path / "out"), "--max-steps", "2", "--batch-size", "2", "--max-length", "192"])  # fmt: skip
    trainer = dpo.build(args)
    assert set(trainer.train_dataset.column_names) == {"prompt_ids", "chosen_ids", "rejected_ids"}
    trainer.train()
    assert trainer.state.global_step == 2
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])


@pytest.mark.parametrize(("entry", "source", "options"), [("trl_sft", SFT_SOURCE, {"pack": 256}),
                                                          ("trl_dpo", PREFERENCE, {"max_len": 192})])  # fmt: skip
def test_entries_refuse_shards_of_another_tokenizer(
    entry: str, source: str, options: dict[str, Any], tiny_model_dir: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    shards = _convert(tmp_path / "tekken", source, "mistral:tekken", **options)
    argv = ["--shards", str(shards), "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "out")]
    assert _entry(entry).main(argv) != 0
    err = capsys.readouterr().err
    assert "tokenizer mismatch" in err and "mistral:tekken" in err and "re-run dsprep convert" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("entry", ["trl_sft", "trl_dpo"])
def test_entries_refuse_untokenized_shards(
    entry: str, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not (SHARED_DATA / "SOURCES.md").is_file():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    shards = tmp_path / "normalized"
    convert(ConvertConfig(inputs=(str(SHARED_DATA / PREFERENCE),), out=shards))  # no --tokenizer: no tokens
    argv = ["--shards", str(shards), "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "out")]
    assert _entry(entry).main(argv) == 8  # VerifyError
    err = capsys.readouterr().err
    assert err == (
        f"{entry}: {shards}: normalized shards hold no tokens; re-run dsprep convert with --tokenizer MODEL_DIR "
        "(and --pack L where the trainer needs packed rows)\n"
    )
    assert not (tmp_path / "out").exists()


def test_dpo_refuses_shards_without_preference_rows(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shards = _convert(tmp_path / "kto", "kto/llamafactory__kto_en_demo.json", str(tiny_model_dir), max_len=192)
    argv = ["--shards", str(shards), "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "out")]
    assert _entry("trl_dpo").main(argv) == VerifyError.exit_code
    err = capsys.readouterr().err
    assert err == f"trl_dpo: {shards} holds tokenized kto rows; {DPO_NEEDS}\n"


@pytest.mark.parametrize("entry", ["trl_sft", "trl_dpo"])
def test_entries_refuse_a_missing_model_folder(
    entry: str, packed_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-model"
    argv = ["--shards", str(packed_shards), "--model", str(missing), "--output-dir", str(tmp_path / "out")]
    assert _entry(entry).main(argv) == TokenizerError.exit_code
    err = capsys.readouterr().err
    assert err == f"{entry}: {missing}: not a model folder (pass a local folder holding the model and its tokenizer)\n"


@pytest.fixture(scope="module")
def preference_shards(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tokenized preference shards of a real sample file for the tiny model (prompts of 32 to ~190 tokens)."""
    return _convert(tmp_path_factory.mktemp("prefs") / "prefs", PREFERENCE, str(tiny_model_dir), max_len=192)


def test_dpo_leaves_out_pairs_whose_prompt_fills_max_length(
    preference_shards: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = [len(r["prompt_input_ids"]) for p in sorted(preference_shards.glob("part-*.parquet"))
               for r in pq.read_table(p, columns=["prompt_input_ids"]).to_pylist()]  # fmt: skip
    kept = sum(n < 64 for n in prompts)
    assert 0 < kept < len(prompts)  # the rule is TRL 1.16's: a prompt of max_length tokens leaves no completion
    dpo = _entry("trl_dpo")
    args = dpo.parse_args(["--shards", str(preference_shards), "--model", str(tiny_model_dir), "--output-dir",
                           str(tmp_path / "out"), "--max-steps", "1", "--max-length", "64"])  # fmt: skip
    trainer = dpo.build(args)
    assert sorted(map(len, trainer.train_dataset["prompt_ids"])) == sorted(n for n in prompts if n < 64)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dsprep:")]
    assert lines == [
        f"dsprep: {preference_shards}: left out {len(prompts) - kept} of {len(prompts)} preference pairs whose "
        "prompt alone fills max_length 64 (no completion token would remain)"
    ]


def test_dpo_trainer_applies_trls_filter_to_a_dataset_it_is_given(
    preference_shards: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import transformers

    from dsprep.integrations.trl import dpo_dataset, dpo_trainer

    dataset = dpo_dataset(sorted(preference_shards.glob("part-*.parquet")))  # no max_length: every pair
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tiny_model_dir))
    trainer = dpo_trainer(model=model, tokenizer=tokenizer, dataset=dataset, output_dir=tmp_path, max_length=64)
    assert 0 < len(trainer.train_dataset) < len(dataset)
    assert all(len(ids) < 64 for ids in trainer.train_dataset["prompt_ids"])
    left_out = len(dataset) - len(trainer.train_dataset)
    err = capsys.readouterr().err
    assert f"dsprep: the train dataset: left out {left_out} of {len(dataset)} preference pairs" in err


def test_dpo_refuses_a_max_length_that_leaves_no_pair(
    preference_shards: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--shards", str(preference_shards), "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "out"),
            "--max-length", "16"]  # fmt: skip
    assert _entry("trl_dpo").main(argv) == ConfigError.exit_code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"trl_dpo: {preference_shards}: max_length 16 (--max-length) leaves no completion token in ")
    assert err.endswith("raise it or leave it unset\n") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("missing", "message"), [
    (("config.json", "model.safetensors"), "no config.json, so no model to load (pass the folder holding the model itself)"),
    (("model.safetensors",), "config.json but no model weights (expected one of model.safetensors, "
                             "model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json)"),
])  # fmt: skip
@pytest.mark.parametrize("entry", ["trl_sft", "trl_dpo"])
def test_entries_refuse_a_model_folder_without_a_model(
    entry: str, missing: tuple[str, ...], message: str, packed_shards: Path, preference_shards: Path,
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    model = tmp_path / "my model"  # its tokenizer is the shards' one: only the model itself is missing
    shutil.copytree(tiny_model_dir, model)
    for name in missing:
        (model / name).unlink()
    shards = packed_shards if entry == "trl_sft" else preference_shards
    argv = ["--shards", str(shards), "--model", str(model), "--output-dir", str(tmp_path / "out")]
    assert _entry(entry).main(argv) == InputError.exit_code == 3
    assert capsys.readouterr().err == f"{entry}: {model}: {message}\n"


@pytest.fixture(scope="module")
def packed_preference_shards(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Preference data converted with --pack: every row rejected as not_packable, so the shards hold no row."""
    return _convert(tmp_path_factory.mktemp("prefpack") / "prefpack", PREFERENCE, str(tiny_model_dir), pack=256)


@pytest.mark.parametrize(("entry", "shards", "held", "needs"), [
    ("trl_dpo", "packed_shards", "packed SFT rows", DPO_NEEDS),
    ("trl_sft", "preference_shards", "tokenized preference rows", SFT_NEEDS),
    ("trl_dpo", "packed_preference_shards", "no rows (300 rejected as not_packable: see {shards}/rejects.jsonl)",
     DPO_NEEDS),
])  # fmt: skip
def test_entries_say_what_the_shards_hold_and_what_they_need(
    entry: str, shards: str, held: str, needs: str, tiny_model_dir: Path, tmp_path: Path,
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    folder = request.getfixturevalue(shards)
    argv = ["--shards", str(folder), "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "out")]
    assert _entry(entry).main(argv) == VerifyError.exit_code
    assert capsys.readouterr().err == f"{entry}: {folder} holds {held.format(shards=folder)}; {needs}\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("entry", ["trl_sft", "trl_dpo"])
def test_an_unsupported_trl_is_refused_before_the_model_loads(
    entry: str, packed_shards: Path, preference_shards: Path, tiny_model_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    import transformers

    def load(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model loaded before TRL was checked")

    monkeypatch.setattr(trl, "__version__", "1.15.0")  # computes its loss only on a GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", load)
    shards = packed_shards if entry == "trl_sft" else preference_shards
    argv = ["--shards", str(shards), "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "out")]
    assert _entry(entry).main(argv) == 9
    assert capsys.readouterr().err.startswith(f"{entry}: trl 1.15.0 computes the loss with a Triton kernel")
