"""Fine-tune with Unsloth (FastLanguageModel + TRL's SFTTrainer, LoRA) on dsprep's packed shards, examples kept apart.

    dsprep convert data.jsonl -o shards -t ./my-model --pack 4096
    python train_entry/unsloth_sft.py --shards shards --model ./my-model --out runs/unsloth --max-steps 100

The shards are verified first (`dsprep verify`) and must have been tokenized with the model folder's own tokenizer.
Each step flattens --batch-size packed rows into one row; position_ids restart at every example and no attention
mask is sent, on a GPU (Unsloth's padding-free varlen path, optional 4-bit) and on Unsloth's CPU backend alike.
Needs `pip install 'dsprep[unsloth]'` (its own environment: Unsloth pins transformers, TRL and datasets).
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from dsprep.errors import DsprepError
from dsprep.integrations import unsloth as us


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--shards", required=True, help="a dsprep convert --pack output folder")
    p.add_argument("--model", required=True, help="a local model folder (weights and tokenizer)")
    p.add_argument("--out", default="runs/unsloth", help="output folder for checkpoints and logs")
    p.add_argument("--max-steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=4, help="packed rows per step (flattened into one row)")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--load-in-4bit", action="store_true", help="QLoRA: 4-bit base weights (GPU, bitsandbytes)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    p.add_argument("--seed", type=int, default=3407)
    return p.parse_args(argv)


def build(args: argparse.Namespace) -> Any:
    """Verify the shards, load the model with Unsloth and return a ready SFTTrainer."""
    us.load_unsloth()  # before transformers, TRL and PEFT are imported
    manifest, files = us.verified_shards(args.shards, args.model)
    max_len = int(manifest["packing"]["max_len"])
    model, tokenizer = us.load_model(
        args.model, max_len, load_in_4bit=args.load_in_4bit, dtype=args.dtype, lora_r=args.lora_r, seed=args.seed
    )
    return us.sft_trainer(
        model, tokenizer, us.shard_dataset(files, max_len), args.out,
        max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr, seed=args.seed,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        trainer = build(args)
    except DsprepError as exc:
        print(f"unsloth_sft: error: {exc}", file=sys.stderr)
        return exc.exit_code
    loss = trainer.train().training_loss
    trainer.save_model()  # the LoRA adapter, into --out
    print(f"unsloth_sft: {trainer.state.global_step} steps, training loss {loss:.4f}; adapter saved to {args.out}")
    return 0 if math.isfinite(loss) else 1


if __name__ == "__main__":
    sys.exit(main())
