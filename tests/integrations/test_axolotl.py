"""Axolotl 0.19.0 on CPU: `dsprep.integrations.axolotl` turns dsprep shards into the parquet and YAML it trains on.

Shards come from `dsprep convert` on a real sample file, for a tiny random Llama with the mistral:v3 tokenizer built
locally. Packed shards train as-is (`skip_prepare_dataset: true`, `sample_packing: false`): Axolotl's own training
(`axolotl.cli.train.do_train`) runs in-process with forward pre-hooks on the model, which must see, for every batch,
`position_ids` that restart exactly at the shard's example boundaries and no `attention_mask`; the first batch, run
in float64, must give every example the losses it has alone. `axolotl train cfg.yml --launcher python` runs once as
a subprocess. Unpacked shards train with Axolotl's own `sample_packing: true`.

Axolotl runs under hard timeouts: in-process a `faulthandler` watchdog ends the whole run with every thread's
traceback, a subprocess is killed with its process group. (`datasets` 4.8 saves a prepared dataset through a
*spawn* pool even with one process, so every child re-imports `__main__`: a harness script without an
`if __name__ == "__main__"` guard re-runs its training in the children and deadlocks. pytest's entry points have
the guard.)
"""

from __future__ import annotations

import contextlib
import faulthandler
import itertools
import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

axolotl = pytest.importorskip("axolotl", reason="needs the Axolotl environment (.venv-axolotl: see README, Axolotl)")

# Offline and quiet, before Axolotl's heavy modules (huggingface_hub reads HF_HUB_OFFLINE on import).
ENV = {"HF_HUB_OFFLINE": "1", "AXOLOTL_DO_NOT_TRACK": "1", "DO_NOT_TRACK": "1", "WANDB_MODE": "disabled"}
os.environ.update(ENV)

import torch  # noqa: E402
import yaml  # noqa: E402

from dsprep.config import ConvertConfig  # noqa: E402
from dsprep.errors import ConfigError, DsprepError, VerifyError  # noqa: E402
from dsprep.integrations import axolotl as dsprep_axolotl  # noqa: E402
from dsprep.pipeline import convert  # noqa: E402
from isolation import example_loss_deltas, float64_model  # noqa: E402
from paths import SHARED_DATA  # noqa: E402

pytestmark = [
    pytest.mark.shared_data,
    # Axolotl and its stack warn freely while importing and training; this suite judges outcomes, not their noise.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]
SOURCE = "sharegpt/fastchat__dummy_conversation.json"
STEPS = 3
IGNORE = -100
TRAIN_TIMEOUT = 300  # s, one in-process training (imports included)
CLI_TIMEOUT = 300  # s, one `axolotl train` subprocess
LOSS = re.compile(r"'loss': '([^']+)'")


def _rows(folder: Path, columns: list[str]) -> list[dict[str, Any]]:
    return [r for p in sorted(folder.glob("part-*.parquet")) for r in pq.read_table(p, columns=columns).to_pylist()]


def _prepare(shards: Path, model: Path, out: Path, **kwargs: Any) -> dsprep_axolotl.AxolotlRun:
    overrides = {"max_steps": STEPS, "micro_batch_size": 2, "learning_rate": 1e-3, "lora_r": 8, "lora_alpha": 16}
    return dsprep_axolotl.prepare(shards, model, out / "axolotl.yaml", overrides=overrides, **kwargs)


@contextlib.contextmanager
def _watchdog(seconds: int) -> Iterator[None]:
    """A hard timeout: past `seconds`, print every thread's traceback and end the process."""
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


class Seen:
    """What the hooks saw: the trainer's model inputs (with labels) and the decoder's, per forward; the logs."""

    def __init__(self) -> None:
        self.batches: list[dict[str, torch.Tensor]] = []
        self.decoder: list[dict[str, Any]] = []
        self.logs: list[dict[str, Any]] = []

    @property
    def losses(self) -> list[float]:
        return [float(entry["loss"]) for entry in self.logs if "loss" in entry]


def _train(config: Path, monkeypatch: pytest.MonkeyPatch) -> Seen:
    """Axolotl's own `do_train` (as `axolotl train` runs it) in-process, with pre-hooks on the model it trains."""
    import axolotl.train as axolotl_train
    from axolotl.cli.args import TrainerCliArgs
    from axolotl.cli.config import load_cfg
    from axolotl.cli.train import do_train

    seen = Seen()
    original = axolotl_train.execute_training

    def outer(module: Any, args: tuple, kwargs: dict[str, Any]) -> None:  # what the Trainer passes the PEFT model
        seen.batches.append({k: v.detach().clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)})

    def inner(module: Any, args: tuple, kwargs: dict[str, Any]) -> None:  # what reaches the decoder (LlamaModel)
        assert not args, "the decoder was called with positional inputs"
        seen.decoder.append({k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})

    def execute_training(cfg: Any, trainer: Any, resume_from_checkpoint: str | None) -> None:
        decoder = trainer.model.get_base_model().model
        hooks = [
            trainer.model.register_forward_pre_hook(outer, with_kwargs=True),
            decoder.register_forward_pre_hook(inner, with_kwargs=True),
        ]
        try:
            original(cfg, trainer, resume_from_checkpoint)
        finally:
            for hook in hooks:
                hook.remove()
        seen.logs = list(trainer.state.log_history)

    monkeypatch.setattr(axolotl_train, "execute_training", execute_training)
    sigint = signal.getsignal(signal.SIGINT)  # Axolotl installs a save-and-exit SIGINT handler
    try:
        with _watchdog(TRAIN_TIMEOUT):
            do_train(load_cfg(str(config)), TrainerCliArgs())
    finally:
        signal.signal(signal.SIGINT, sigint)
    return seen


def _check_training(seen: Seen) -> None:
    assert len(seen.batches) == len(seen.decoder) >= STEPS
    assert len(seen.losses) >= STEPS and all(math.isfinite(x) for x in seen.losses), seen.logs
    for batch, call in zip(seen.batches, seen.decoder, strict=True):
        assert "attention_mask" not in batch, "the collator built an attention_mask: packed examples would leak"
        assert call.get("attention_mask") is None, "an attention_mask reached the model: packed examples would leak"
        assert call.get("past_key_values") is None, "a KV cache switches off transformers' packed-sequence detection"
        assert torch.equal(call["input_ids"], batch["input_ids"])
        assert torch.equal(call["position_ids"], batch["position_ids"])


def _locate(ids: list[int], shard: list[dict[str, Any]]) -> tuple[dict[str, Any], int]:
    """The shard row a padded batch row holds, and where it starts (the tokenizer may pad left or right)."""
    found = [
        (row, start)
        for row in shard
        for start in {0, len(ids) - len(row["input_ids"])}
        if start >= 0 and ids[start : start + len(row["input_ids"])] == row["input_ids"]
    ]
    assert found, "a batch row is no shard row"
    return max(found, key=lambda f: len(f[0]["input_ids"]))


def _starts(lengths: list[int]) -> list[int]:
    return [sum(lengths[:i]) for i in range(len(lengths))]


@pytest.fixture(scope="module")
def tekken_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Packed shards of the same file made with mistral:tekken, not the tiny model's mistral:v3."""
    if not (SHARED_DATA / "SOURCES.md").is_file():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    out = tmp_path_factory.mktemp("shards") / "tekken"
    inputs = (str(SHARED_DATA / SOURCE),)
    convert(ConvertConfig(inputs=inputs, out=out, tokenizer="mistral:tekken", template="chatml", pack=256))
    return out


@pytest.mark.axolotl
def test_packed_parquet_and_yaml(packed_shards: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    run = _prepare(packed_shards, tiny_model_dir, tmp_path)
    assert (run.mode, run.sequence_len, run.sample_packing) == ("packed", 256, False)
    table = pq.read_table(run.data)
    assert table.column_names == ["input_ids", "labels", "position_ids"]
    assert table.to_pylist() == _rows(packed_shards, ["input_ids", "labels", "position_ids"])
    assert run.rows == table.num_rows > 0
    text = run.config.read_text()
    cfg = yaml.safe_load(text)
    assert cfg["base_model"] == str(tiny_model_dir.absolute())
    assert cfg["datasets"] == [{"path": str(run.data), "ds_type": "parquet"}]
    assert (cfg["skip_prepare_dataset"], cfg["sample_packing"], cfg["sequence_len"]) == (True, False, 256)
    assert (cfg["max_steps"], cfg["lora_r"], cfg["adapter"]) == (STEPS, 8, "lora")
    template = yaml.safe_load(dsprep_axolotl.TEMPLATE.read_text())
    assert set(cfg) == set(template) | {"max_steps"}  # every template key kept, nothing else added
    assert "# dsprep: the model folder" in text and "# Axolotl 0.19.0 SFT on dsprep shards" in text  # comments kept
    with pytest.raises(DsprepError, match="sample_packing: set by dsprep"):
        dsprep_axolotl.prepare(packed_shards, tiny_model_dir, tmp_path / "x.yaml", overrides={"sample_packing": True})
    with pytest.raises(DsprepError, match="below the shards' packing length"):
        dsprep_axolotl.prepare(packed_shards, tiny_model_dir, tmp_path / "x.yaml", overrides={"sequence_len": 128})


@pytest.mark.axolotl
def test_unpacked_parquet_and_yaml(unpacked_shards: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    run = _prepare(unpacked_shards, tiny_model_dir, tmp_path)
    assert (run.mode, run.sequence_len, run.sample_packing) == ("unpacked", 256, True)
    assert run.command.startswith(f"axolotl preprocess {run.config} && axolotl train")
    rows = pq.read_table(run.data).to_pylist()
    assert list(rows[0]) == ["input_ids", "attention_mask", "labels"]
    shard = _rows(unpacked_shards, ["input_ids", "labels"])
    assert [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows] == shard
    assert all(r["attention_mask"] == [1] * len(r["input_ids"]) for r in rows)
    cfg = yaml.safe_load(run.config.read_text())
    assert (cfg["skip_prepare_dataset"], cfg["sample_packing"], cfg["sequence_len"]) == (False, True, 256)
    assert dsprep_axolotl.main(
        [str(unpacked_shards), "--model", str(tiny_model_dir), "--out", str(tmp_path / "pad.yaml"),
         "--no-sample-packing", "--set", "max_steps=5", "--set", "learning_rate=3e-4"]
    ) == 0  # fmt: skip
    cfg = yaml.safe_load((tmp_path / "pad.yaml").read_text())
    assert (cfg["sample_packing"], cfg["max_steps"], cfg["learning_rate"]) == (False, 5, 3e-4)
    assert (tmp_path / "pad.parquet").is_file()


@pytest.mark.axolotl
def test_refuses_shards_of_another_tokenizer(
    tekken_shards: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(VerifyError, match=r"tokenizer mismatch: the shards were tokenized with 'mistral:tekken'"):
        dsprep_axolotl.prepare(tekken_shards, tiny_model_dir, tmp_path / "a.yaml")
    code = dsprep_axolotl.main([str(tekken_shards), "--model", str(tiny_model_dir), "--out", str(tmp_path / "b.yaml")])
    assert code == VerifyError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("error: tokenizer mismatch") and str(tiny_model_dir) in err
    assert "re-run dsprep convert with this tokenizer" in err
    assert not list(tmp_path.iterdir()), "nothing is written for refused shards"


@pytest.mark.axolotl
def test_packed_trains_isolated(
    packed_shards: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _prepare(packed_shards, tiny_model_dir, tmp_path)
    seen = _train(run.config, monkeypatch)
    _check_training(seen)
    shard = _rows(packed_shards, ["input_ids", "labels", "position_ids", "seq_lens"])
    for batch in seen.batches:
        assert set(batch) == {"input_ids", "labels", "position_ids"}
        for ids, labels, positions in zip(batch["input_ids"], batch["labels"], batch["position_ids"], strict=True):
            ids, labels, positions = ids.tolist(), labels.tolist(), positions.tolist()
            row, a = _locate(ids, shard)
            z = a + len(row["input_ids"])
            assert labels[a:z] == row["labels"] and positions[a:z] == row["position_ids"]
            restarts = [i for i, p in enumerate(positions[a:z]) if p == 0]
            assert restarts == _starts(row["seq_lens"]), "position_ids must restart exactly at example boundaries"
            assert all(x == IGNORE for x in labels[:a] + labels[z:]), "padding must carry no targets"
            assert a == 0 or positions[a - 1] != positions[a] - 1, "the padding must not run into the row"
    # Cross-trainer: Axolotl's first batch, in float64, gives each example the losses it has alone.
    first = seen.batches[0]
    worst, examples = example_loss_deltas(
        float64_model(tiny_model_dir), first["input_ids"], first["labels"], first["position_ids"]
    )
    assert examples >= 2 and worst <= 1e-9, (worst, examples)


@pytest.mark.axolotl
def test_packed_axolotl_train_cli(packed_shards: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    run = _prepare(packed_shards, tiny_model_dir, tmp_path)
    axolotl_cli = Path(sys.executable).parent / "axolotl"
    env = {**os.environ, **ENV, "PATH": f"{axolotl_cli.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(
        [str(axolotl_cli), "train", str(run.config), "--launcher", "python"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        log, _ = proc.communicate(timeout=CLI_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"axolotl train ran over {CLI_TIMEOUT} s; log tail:\n{log[-4000:]}")
    assert proc.returncode == 0, log[-4000:]
    losses = [float(x) for x in LOSS.findall(log)]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses), log[-4000:]
    assert "'train_loss'" in log and (Path(run.config).parent / "axolotl-out" / "adapter_model.safetensors").is_file()


@pytest.mark.axolotl
def test_unpacked_trains_with_axolotl_sample_packing(
    unpacked_shards: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _prepare(unpacked_shards, tiny_model_dir, tmp_path)
    seen = _train(run.config, monkeypatch)  # prepares the dataset in-process: no `axolotl preprocess` first
    _check_training(seen)
    examples = {tuple(r["input_ids"]): r["labels"] for r in _rows(unpacked_shards, ["input_ids", "labels"])}
    for batch in seen.batches:
        assert set(batch) == {"input_ids", "labels", "position_ids"}  # Axolotl drops the mask for sdpa
        for ids, labels, positions in zip(batch["input_ids"], batch["labels"], batch["position_ids"], strict=True):
            restarts = [*torch.nonzero(positions == 0).flatten().tolist(), len(ids)]
            packed = 0
            for a, z in itertools.pairwise(restarts):
                segment = tuple(ids[a:z].tolist())
                if segment in examples:  # each segment Axolotl packed is one dsprep example, labels intact
                    assert labels[a:z].tolist() == examples[segment]
                    assert labels[a] == IGNORE, "Axolotl does not mask boundaries: no label may cross one"
                    packed += 1
                else:  # else it is the padding (left or right, as the tokenizer pads), which trains nothing
                    assert a == 0 or z == len(ids), "a packed segment is no dsprep example"
                    assert (labels[a:z] == IGNORE).all(), "padding must carry no targets"
            assert packed >= 2, "Axolotl should pack several examples into a row"
    first = seen.batches[0]
    worst, examples_seen = example_loss_deltas(
        float64_model(tiny_model_dir), first["input_ids"], first["labels"], first["position_ids"]
    )
    assert examples_seen >= 4 and worst <= 1e-9, (worst, examples_seen)


@pytest.mark.axolotl
@pytest.mark.parametrize(
    ("overrides", "expected_error"),
    [
        ({"attn_implementation": "flash_attention_2", "micro_batch_size": 2}, "micro_batch_size: 2 with attn"),
        ({"attn_implementation": "kernels-community/flash-attn3", "micro_batch_size": 4}, "micro_batch_size: 4 with"),
        ({"attn_implementation": None, "flash_attention": True, "micro_batch_size": 2}, "micro_batch_size: 2 with"),
        ({"batch_flattening": True}, "batch_flattening: must stay off"),
        ({"batch_flattening": "auto", "micro_batch_size": 2}, "batch_flattening: must stay off"),
    ],
)
def test_packed_refuses_batches_that_mix_examples(
    overrides: dict[str, Any], expected_error: str, packed_shards: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(DsprepError, match=expected_error):
        dsprep_axolotl.prepare(packed_shards, tiny_model_dir, tmp_path / "a.yaml", overrides=overrides)
    assert not list(tmp_path.iterdir()), "nothing is written for a refused config"
    argv = [str(packed_shards), "--model", str(tiny_model_dir), "--out", str(tmp_path / "b.yaml")]
    argv += [f"--set={k}={'null' if v is None else v}" for k, v in overrides.items()]
    assert dsprep_axolotl.main(argv) == ConfigError.exit_code
    assert not list(tmp_path.iterdir())


@pytest.mark.axolotl
def test_template_keeps_flash_attention_batches_to_one_packed_row(
    packed_shards: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    template = yaml.safe_load(dsprep_axolotl.TEMPLATE.read_text())
    assert (template["micro_batch_size"], template["gradient_accumulation_steps"]) == (1, 2)
    run = dsprep_axolotl.prepare(
        packed_shards, tiny_model_dir, tmp_path / "a.yaml", overrides={"attn_implementation": "flash_attention_2"}
    )
    cfg = yaml.safe_load(run.config.read_text())
    assert (cfg["attn_implementation"], cfg["micro_batch_size"]) == ("flash_attention_2", 1)


@pytest.fixture
def fa2_emulation(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """transformers' own flash_attention_2 dispatch (mask handling, varlen detection) with the flash-attn kernels
    replaced by exact torch references, registered as attn_implementation "dsprep_fa2_emulation"; the kernels
    each forward called are recorded."""
    import transformers.modeling_flash_attention_utils as fau
    from transformers import AttentionInterface
    from transformers.integrations.flash_attention import flash_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    calls: list[str] = []

    def attend(q: Any, k: Any, v: Any, causal: bool, scale: float | None) -> Any:  # [S, H, D], GQA allowed
        k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], 1).transpose(0, 1) for x in (k, v))
        out = torch.nn.functional.scaled_dot_product_attention(q.transpose(0, 1), k, v, is_causal=causal, scale=scale)
        return out.transpose(0, 1)

    def flash_attn_func(q: Any, k: Any, v: Any, dropout_p: float = 0.0, softmax_scale: Any = None,
                        causal: bool = False, **_: Any) -> Any:  # fmt: skip
        calls.append("dense")
        return torch.stack([attend(q[b], k[b], v[b], causal, softmax_scale) for b in range(q.shape[0])])

    def flash_attn_varlen_func(q: Any, k: Any, v: Any, cu_seqlens_q: Any, cu_seqlens_k: Any, max_seqlen_q: Any,
                               max_seqlen_k: Any, dropout_p: float = 0.0, softmax_scale: Any = None,
                               causal: bool = False, **_: Any) -> Any:  # fmt: skip
        calls.append("varlen")
        cu = cu_seqlens_q.tolist()
        return torch.cat([attend(q[a:z], k[a:z], v[a:z], causal, softmax_scale) for a, z in itertools.pairwise(cu)])

    kernels = (flash_attn_func, flash_attn_varlen_func, None, None, None)
    monkeypatch.setattr(fau, "_lazy_imports", lambda *args, **kwargs: kernels)
    AttentionInterface.register("dsprep_fa2_emulation", flash_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register("dsprep_fa2_emulation", flash_attention_mask)
    return calls


@pytest.mark.axolotl
def test_flash_attention_isolates_packed_rows_only_one_per_batch(
    fa2_emulation: list[str], packed_shards: Path, tiny_model_dir: Path
) -> None:
    """Why `check_packed_config` refuses flash attention with micro_batch_size > 1: transformers reads restarting
    position_ids as example boundaries only in a one-row batch; two rows (padded as Axolotl's collator pads them)
    get plain causal attention over each whole row."""
    import transformers

    model = transformers.LlamaForCausalLM.from_pretrained(
        str(tiny_model_dir), attn_implementation="dsprep_fa2_emulation", torch_dtype=torch.float64
    ).eval()
    alone_model = float64_model(tiny_model_dir)
    rows = _rows(packed_shards, ["input_ids", "position_ids", "seq_lens"])[:2]
    assert all(len(r["seq_lens"]) >= 2 for r in rows)
    size = max(len(r["input_ids"]) for r in rows)
    ids = torch.tensor([r["input_ids"] + [0] * (size - len(r["input_ids"])) for r in rows])
    pos = torch.tensor([r["position_ids"] + [0] * (size - len(r["position_ids"])) for r in rows])

    def worst(batch: list[int]) -> float:
        with torch.no_grad():
            logits = model(input_ids=ids[batch], position_ids=pos[batch], use_cache=False).logits
            delta = 0.0
            for i, b in enumerate(batch):
                for a, z in itertools.pairwise(_starts([*rows[b]["seq_lens"], 0])):
                    alone = alone_model(input_ids=ids[b, a:z][None], use_cache=False).logits[0]
                    delta = max(delta, float((logits[i, a:z] - alone).abs().max()))
        return delta

    assert worst([0]) <= 1e-9 and worst([1]) <= 1e-9
    assert fa2_emulation == ["varlen"] * 4  # 2 layers, 2 one-row batches: per-example attention
    fa2_emulation.clear()
    assert worst([0, 1]) > 1e-3, "two rows in one flash-attention batch should leak across examples"
    assert fa2_emulation == ["dense"] * 2


@pytest.mark.axolotl
def test_unpacked_rows_never_train_their_first_token(tiny_model_dir: Path, tmp_path: Path) -> None:
    if not (SHARED_DATA / "SOURCES.md").is_file():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    shards = tmp_path / "text"
    inputs = (str(SHARED_DATA / "text" / "mlx-examples__lora_wikisql_train.jsonl"),)
    convert(ConvertConfig(inputs=inputs, out=shards, tokenizer=str(tiny_model_dir), max_len=256))
    shard = _rows(shards, ["input_ids", "labels"])
    assert all(r["labels"][0] != IGNORE for r in shard), "text rows train their first label (a BOS) in the shards"
    run = dsprep_axolotl.prepare(shards, tiny_model_dir, tmp_path / "run" / "axolotl.yaml")
    rows = pq.read_table(run.data).to_pylist()
    assert len(rows) == len(shard) > 0
    for row, source in zip(rows, shard, strict=True):
        assert row["input_ids"] == source["input_ids"]
        assert row["labels"] == [IGNORE, *source["labels"][1:]], "a packed row's previous example would learn it"


@pytest.mark.axolotl
def test_refuses_untokenized_shards(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not (SHARED_DATA / "SOURCES.md").is_file():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    shards = tmp_path / "normalized"
    convert(ConvertConfig(inputs=(str(SHARED_DATA / SOURCE),), out=shards))  # no tokenizer: normalized rows only
    code = dsprep_axolotl.main([str(shards), "--model", str(tiny_model_dir), "--out", str(tmp_path / "run" / "a.yaml")])
    assert code == VerifyError.exit_code
    assert capsys.readouterr().err == (
        f"error: {shards}: normalized shards hold no tokens; re-run dsprep convert with --tokenizer MODEL_DIR "
        "(and --pack L where the trainer needs packed rows)\n"
    )
    assert not (tmp_path / "run").exists()
