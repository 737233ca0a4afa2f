"""TorchTune 0.6.1 on CPU: the stock SFT recipes train on dsprep packed shards through `train_entry/torchtune_*.yaml`.

Shards come from `dsprep convert` on a real sample file, for a tiny random Llama with the mistral:v3 tokenizer built
locally. `tune run` trains 3 steps with each config. In-process, the full-finetune recipe is driven with a forward
pre-hook on its model: the block mask `padded_collate_packed` built and the `input_pos` it passed must match the
shards' `seq_lens` (positions restart at 0 at every example). The first batch, run in float64, must give every
example the per-token losses it has alone, both through the HF model (`isolation.example_loss_deltas`) and through
torchtune's own model loaded with the same weights.

torchtune 0.6.1 keeps labels unshifted in its packed samples and shifts them in the recipe's `_loss_step`; the
tests apply that same shift to get the targets the model trains on.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

from dsprep.config import ConvertConfig
from dsprep.errors import ConfigError, DsprepError, VerifyError
from dsprep.integrations import torchtune as dsprep_tt
from dsprep.pipeline import convert
from isolation import example_loss_deltas, float64_model
from paths import REPO, SHARED_DATA

torchtune = pytest.importorskip(
    "torchtune", reason="the TorchTune tests need the TorchTune environment: pip install 'dsprep[torchtune]'"
)
torch = pytest.importorskip("torch")
try:
    import torchtune.training  # what the recipes import; it needs a torchao that has int4_weight_only
except ImportError as exc:
    pytest.fail(f"torchtune 0.6.1's recipes cannot be imported ({exc}); it needs torchao<=0.15.0", pytrace=False)

from omegaconf import OmegaConf  # noqa: E402  (torchtune's dependency)
from torchtune import config as tt_config  # noqa: E402
from torchtune import training  # noqa: E402
from torchtune.datasets import ConcatDataset, PackedDataset  # noqa: E402

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning"),  # torchdata 0.11 on torch 2.13
]
CONFIGS = {"full_finetune_single_device": "torchtune_sft.yaml", "lora_finetune_single_device": "torchtune_lora.yaml"}
SOURCE = "sharegpt/fastchat__dummy_conversation.json"
STEPS = 3
IGNORE = -100


def _cfg(name: str, **values: Any) -> Any:
    """A train_entry config with command-line style overrides applied, as `tune run` would see it."""
    overrides = {"device": "cpu", "dtype": "fp32", "max_steps_per_epoch": STEPS, **values}
    return OmegaConf.merge(
        OmegaConf.load(REPO / "train_entry" / name), OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items()])
    )


def _recipe_module(name: str) -> ModuleType:
    """A stock recipe module, loaded from its file as `tune run` does (torchtune's `recipes` is no package)."""
    path = Path(torchtune.__file__).resolve().parents[1] / "recipes" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"torchtune_recipe_{name}", path)
    assert spec and spec.loader, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shard_rows(folder: Path) -> list[dict[str, Any]]:
    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    return [r for s in manifest["shards"] for r in pq.read_table(folder / s["file"]).to_pylist()]


def _expected(row: dict[str, Any], size: int) -> tuple[Any, Any]:
    """torchtune's input_pos and block-causal mask for a shard row padded to `size` (padding is its own block)."""
    n = len(row["input_ids"])
    lens = [*row["seq_lens"], *([size - n] if size > n else [])]
    pos = np.concatenate([np.arange(length) for length in row["seq_lens"]])
    tail = np.clip(np.arange(pos[-1] + 1, pos[-1] + 1 + size - n), 0, size - 1)
    docs = np.repeat(np.arange(len(lens)), lens)
    mask = (docs[:, None] == docs[None, :]) & np.tri(size, dtype=bool)
    return torch.from_numpy(np.concatenate([pos, tail])), torch.from_numpy(mask)


def _recipe_targets(labels: Any) -> Any:
    """What the recipes' `_loss_step` trains on: labels shifted left by one, the last one ignored."""
    return torch.hstack([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE)])


def _token_losses(logits: Any, targets: Any) -> Any:
    losses = torch.nn.functional.cross_entropy(logits.double(), targets.clamp(min=0), reduction="none")
    return torch.where(targets == IGNORE, torch.full_like(losses, float("nan")), losses)


@pytest.fixture(scope="module")
def tekken_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Packed shards of the same file tokenized with mistral:tekken, which the tiny model does not use."""
    if not (SHARED_DATA / "SOURCES.md").is_file():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    out = tmp_path_factory.mktemp("tekken") / "packed"
    convert(
        ConvertConfig(
            inputs=(str(SHARED_DATA / SOURCE),), out=out, tokenizer="mistral:tekken", template="chatml", pack=256
        )
    )
    return out


class RecipeRun:
    """The full-finetune recipe run in-process: every model call's inputs, and every batch and loss."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.batches: list[dict[str, Any]] = []
        self.losses: list[float] = []
        self.cfg: Any = None
        self.rows: list[dict[str, Any]] = []


@pytest.fixture(scope="module")
def recipe_run(packed_shards: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> RecipeRun:
    run = RecipeRun()
    out = tmp_path_factory.mktemp("tt-inprocess")
    run.cfg = _cfg("torchtune_sft.yaml", model_dir=tiny_model_dir, shards=packed_shards, output_dir=out, shuffle=False)
    run.rows = _shard_rows(packed_shards)
    recipe = _recipe_module("full_finetune_single_device").FullFinetuneRecipeSingleDevice(cfg=run.cfg)
    recipe.setup(cfg=run.cfg)
    size = recipe._dataloader.dataset.max_seq_len
    batch_size = run.cfg.batch_size

    def check_positions(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        step = len(run.calls)
        tokens, mask, input_pos = kwargs["tokens"], kwargs["mask"], kwargs["input_pos"]
        assert isinstance(mask, torch.Tensor), "on CPU padded_collate_packed builds a dense block-causal mask"
        for b in range(tokens.shape[0]):
            row = run.rows[step * batch_size + b]  # shuffle=False: batches follow the shard rows in order
            want_pos, want_mask = _expected(row, size)
            starts = np.cumsum([0, *row["seq_lens"][:-1]])
            assert (input_pos[b, starts] == 0).all(), f"step {step} row {b}: positions do not restart at {starts}"
            assert torch.equal(input_pos[b], want_pos), f"step {step} row {b}: input_pos differs from the shard's"
            assert torch.equal(mask[b], want_mask), f"step {step} row {b}: block mask differs from seq_lens"
            assert torch.equal(tokens[b, : len(row["input_ids"])], torch.tensor(row["input_ids"]))
        run.calls.append({"tokens": tokens.clone(), "mask": mask.clone(), "input_pos": input_pos.clone()})

    loss_step = recipe._loss_step

    def record_loss_step(batch: dict[str, Any]) -> Any:
        run.batches.append({k: v.clone() for k, v in batch.items()})
        loss = loss_step(batch)
        run.losses.append(float(loss.detach()))
        return loss

    recipe._loss_step = record_loss_step
    handle = recipe._model.register_forward_pre_hook(check_positions, with_kwargs=True)
    recipe.train()
    handle.remove()
    recipe.cleanup()
    return run


@pytest.mark.torchtune
@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(CONFIGS))
def test_tune_run_trains_on_packed_shards(
    recipe: str, packed_shards: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    tune = Path(sys.executable).with_name("tune")
    command = [str(tune) if tune.is_file() else str(shutil.which("tune")), "run", recipe, "--config"]
    overrides = [f"model_dir={tiny_model_dir}", f"shards={packed_shards}", f"output_dir={tmp_path / 'out'}"]
    overrides += ["device=cpu", "dtype=fp32", f"max_steps_per_epoch={STEPS}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [*command, str(REPO / "train_entry" / CONFIGS[recipe]), *overrides],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, f"tune run failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    (log,) = (tmp_path / "out" / "logs").glob("log_*.txt")
    losses = [float(m) for m in re.findall(r"^Step \d+ \| loss:(\S+)", log.read_text(), flags=re.M)]
    assert len(losses) == STEPS, log.read_text()
    assert all(math.isfinite(x) for x in losses), losses
    assert (tmp_path / "out" / "epoch_0" / "model-00001-of-00001.safetensors").is_file()


@pytest.mark.torchtune
@pytest.mark.slow
@pytest.mark.parametrize(("shards", "overrides", "code", "message"), [
    ("unpacked_shards", [], VerifyError.exit_code,
     "{shards}: holds tokenized shards, not packed ones; re-run dsprep convert with --pack L"),
    ("packed_shards", ["model.max_seq_len=128"], ConfigError.exit_code,
     "the samples are 256 tokens long (the shards' packing length or dataset.max_seq_len) but the model's "
     "max_seq_len is 128: re-run dsprep convert with --pack 128 or lower"),
])  # fmt: skip
def test_tune_run_refusals_are_one_line_and_the_exit_code(
    shards: str, overrides: list[str], code: int, message: str, tiny_model_dir: Path, tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    folder = request.getfixturevalue(shards)
    tune = Path(sys.executable).with_name("tune")
    command = [str(tune) if tune.is_file() else str(shutil.which("tune")), "run", "full_finetune_single_device"]
    config = ["--config", str(REPO / "train_entry" / "torchtune_sft.yaml")]
    values = [f"model_dir={tiny_model_dir}", f"shards={folder}", f"output_dir={tmp_path / 'out'}", "device=cpu",
              "dtype=fp32", *overrides]  # fmt: skip
    done = subprocess.run(
        [*command, *config, *values], capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == code, done.stderr[-4000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == f"error: {message.format(shards=folder)}"


@pytest.mark.torchtune
def test_recipe_batches_keep_examples_apart(recipe_run: RecipeRun) -> None:
    # the forward pre-hook checked mask and input_pos of every model call against the shards' seq_lens
    assert len(recipe_run.calls) == STEPS
    assert len(recipe_run.losses) == STEPS
    assert all(math.isfinite(x) for x in recipe_run.losses), recipe_run.losses
    first = recipe_run.batches[0]
    assert set(first) == {"tokens", "labels", "input_pos", "mask"}
    assert torch.equal(first["input_pos"], recipe_run.calls[0]["input_pos"])


@pytest.mark.torchtune
def test_recipe_targets_are_shifted_within_each_example(recipe_run: RecipeRun) -> None:
    batch = recipe_run.batches[0]
    tokens, labels = batch["tokens"], batch["labels"]
    targets = _recipe_targets(labels)
    for b in range(tokens.shape[0]):
        row = recipe_run.rows[b]
        ends = np.cumsum(row["seq_lens"]) - 1
        assert (targets[b, ends] == IGNORE).all(), "an example's last token is trained to predict the next example"
        trained = targets[b, :-1] != IGNORE
        assert torch.equal(targets[b, :-1][trained], tokens[b, 1:][trained])
        assert torch.equal(labels[b, : len(row["labels"])], torch.tensor(row["labels"]))


@pytest.mark.torchtune
def test_first_batch_losses_match_examples_alone_hf_float64(recipe_run: RecipeRun, tiny_model_dir: Path) -> None:
    batch = recipe_run.batches[0]
    targets = _recipe_targets(batch["labels"])
    # back to dsprep's layout: label[t] = target[t-1], and -100 at each example's first token (input_pos == 0)
    unshifted = torch.hstack([torch.full_like(targets[:, :1], IGNORE), targets[:, :-1]])
    unshifted[batch["input_pos"] == 0] = IGNORE
    assert torch.equal(unshifted, batch["labels"])
    worst, examples = example_loss_deltas(
        float64_model(tiny_model_dir), batch["tokens"], unshifted, position_ids=batch["input_pos"]
    )
    assert examples >= 2
    assert worst <= 1e-9, worst


@pytest.mark.torchtune
@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight:UserWarning")  # its fp32 RMSNorm
def test_first_batch_losses_match_examples_alone_torchtune_float64(
    recipe_run: RecipeRun, tiny_model_dir: Path, tmp_path: Path
) -> None:
    cfg = recipe_run.cfg
    with training.set_default_dtype(torch.float64):
        model = tt_config.instantiate(cfg.model)
    checkpointer = tt_config.instantiate(cfg.checkpointer, output_dir=str(tmp_path))
    model.load_state_dict(checkpointer.load_checkpoint()[training.MODEL_KEY])  # the tiny model's initial weights
    model.eval()
    hf = float64_model(tiny_model_dir)
    batch = recipe_run.batches[0]
    tokens, targets = batch["tokens"], _recipe_targets(batch["labels"])
    worst = cross = 0.0
    examples = 0
    with torch.no_grad():
        packed = model(tokens, mask=batch["mask"], input_pos=batch["input_pos"])
        for b in range(tokens.shape[0]):
            starts = np.cumsum([0, *recipe_run.rows[b]["seq_lens"]])
            for a, z in itertools.pairwise(starts):
                if (targets[b, a:z] == IGNORE).all():
                    continue
                examples += 1
                inside = _token_losses(packed[b, a:z], targets[b, a:z])
                alone = _token_losses(model(tokens[b, a:z][None])[0], targets[b, a:z])
                keep = ~torch.isnan(alone)
                assert torch.equal(keep, ~torch.isnan(inside))
                worst = max(worst, float((inside[keep] - alone[keep]).abs().max()))
                hf_alone = _token_losses(hf(input_ids=tokens[b, a:z][None], use_cache=False).logits[0], targets[b, a:z])
                cross = max(cross, float((hf_alone[keep] - alone[keep]).abs().max()))
    assert examples >= 2
    assert worst <= 1e-9, worst
    assert cross <= 1e-6, f"torchtune and HF disagree on the same weights by {cross}"  # fp32 RoPE, RMSNorm


@pytest.mark.torchtune
def test_samples_have_packed_dataset_layout(packed_shards: Path, tiny_model_dir: Path) -> None:
    ds = dsprep_tt.packed_shards(source=packed_shards, tokenizer_dir=tiny_model_dir)
    rows = _shard_rows(packed_shards)
    assert len(ds) == len(rows)
    assert ds.max_seq_len == 256
    for i, row in enumerate(rows):
        starts = np.cumsum([0, *row["seq_lens"]])
        examples = [
            {"tokens": row["input_ids"][a:z], "labels": row["labels"][a:z]} for a, z in itertools.pairwise(starts)
        ]
        ours = ds[i]
        theirs = PackedDataset(examples, max_seq_len=256, padding_idx=ds.padding_idx)
        assert len(theirs) == 1
        for key in ("tokens", "labels", "input_pos", "seq_lens"):
            assert ours[key].dtype == torch.long
            assert torch.equal(ours[key], theirs[0][key]), f"row {i}: {key} differs from torchtune's PackedDataset"
    assert torch.equal(ds[-1]["tokens"], ds[len(ds) - 1]["tokens"])
    with pytest.raises(IndexError):
        ds[len(ds)]


@pytest.mark.torchtune
def test_config_refuses_shards_of_another_tokenizer(
    tekken_shards: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _cfg("torchtune_sft.yaml", model_dir=tiny_model_dir, shards=tekken_shards, output_dir=tmp_path)
    recipe_tokenizer = tt_config.instantiate(cfg.tokenizer)
    with pytest.raises(SystemExit) as stop:  # the config's component: one line and the exit code, no traceback
        tt_config.instantiate(cfg.dataset, recipe_tokenizer)
    assert stop.value.code == VerifyError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("error: tokenizer mismatch: the shards were tokenized with 'mistral:tekken'")
    assert err.count("\n") == 1
    with pytest.raises(VerifyError, match=r"tokenizer mismatch: the shards were tokenized with 'mistral:tekken'"):
        dsprep_tt.build_packed_shards(recipe_tokenizer, source=tekken_shards, tokenizer_dir=tiny_model_dir)


@pytest.mark.torchtune
def test_builder_refusals(packed_shards: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(DsprepError, match=r"dataset.packed: True"):
        dsprep_tt.build_packed_shards(source=packed_shards, tokenizer_dir=tiny_model_dir, packed=False)
    with pytest.raises(DsprepError, match=r"max_seq_len=128 is shorter than the longest packed row"):
        dsprep_tt.build_packed_shards(source=packed_shards, tokenizer_dir=tiny_model_dir, max_seq_len=128)

    class OtherTokenizer:
        bos_id, eos_id, vocab_size, pad_id = 1, 2, 131072, 0

    with pytest.raises(DsprepError, match=r"vocab_size=131072"):
        dsprep_tt.build_packed_shards(OtherTokenizer(), source=packed_shards, tokenizer_dir=tiny_model_dir)
    ds = dsprep_tt.packed_shards(source=[packed_shards, packed_shards], tokenizer_dir=tiny_model_dir, max_seq_len=300)
    assert len(ds) == 2 * len(_shard_rows(packed_shards))
    assert ds[0]["tokens"].shape == (300,)
    assert ConcatDataset([ds, ds]).packed  # a list of dataset entries still gets padded_collate_packed


@pytest.mark.torchtune
@pytest.mark.parametrize("name", sorted(CONFIGS.values()))
def test_config_refuses_samples_longer_than_the_model(
    name: str, packed_shards: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _cfg(name, model_dir=tiny_model_dir, shards=packed_shards, output_dir=tmp_path, **{"model.max_seq_len": 128})
    with pytest.raises(SystemExit) as stop:
        tt_config.instantiate(cfg.dataset, tt_config.instantiate(cfg.tokenizer))
    assert stop.value.code == ConfigError.exit_code
    assert re.fullmatch(r"error: the samples are 256 tokens long .* max_seq_len is 128: re-run dsprep .*\n",
                        capsys.readouterr().err)  # fmt: skip
    cfg = _cfg(name, model_dir=tiny_model_dir, shards=packed_shards, output_dir=tmp_path, **{"model.max_seq_len": 256})
    assert tt_config.instantiate(cfg.dataset, tt_config.instantiate(cfg.tokenizer)).max_seq_len == 256


@pytest.mark.torchtune
def test_readme_packs_within_the_configs_max_seq_len() -> None:
    section = (REPO / "README.md").read_text(encoding="utf-8").split("### TorchTune", 1)[1].split("\n## ", 1)[0]
    (pack,) = {int(n) for n in re.findall(r"dsprep convert .*--pack (\d+)", section)}
    for name in CONFIGS.values():
        header = (REPO / "train_entry" / name).read_text(encoding="utf-8")
        (header_pack,) = {int(n) for n in re.findall(r"dsprep convert .*--pack (\d+)", header)}
        model_len = OmegaConf.load(REPO / "train_entry" / name).model.max_seq_len
        assert pack <= model_len and header_pack <= model_len, (name, pack, header_pack, model_len)


@pytest.mark.torchtune
def test_untokenized_shards_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    if not (SHARED_DATA / "SOURCES.md").is_file():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    shards = tmp_path / "normalized"
    convert(ConvertConfig(inputs=(str(SHARED_DATA / SOURCE),), out=shards))
    with pytest.raises(VerifyError, match=r"normalized shards hold no tokens; re-run dsprep convert with --tokenizer"):
        dsprep_tt.build_packed_shards(source=shards, tokenizer_dir=tiny_model_dir)
