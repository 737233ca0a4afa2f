"""Supervised fine-tuning with TRL's SFTTrainer on packed dsprep shards, padding-free.

    dsprep convert data.jsonl --out shards --tokenizer MODEL_DIR --pack 4096
    python train_entry/trl_sft.py --shards shards --model MODEL_DIR --output-dir runs/sft

The shards are verified (`dsprep verify`) and must have been tokenized with MODEL_DIR's tokenizer. Each batch is one
row of concatenated examples whose `position_ids` restart at every example and which carries no `attention_mask`.
Needs `pip install 'dsprep[trl]'` with trl>=1.9,!=1.15.* (1.15 cannot train without a GPU).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dsprep.errors import DsprepError
from dsprep.integrations.common import local_model, local_tokenizer, prepared_shards
from dsprep.integrations.trl import SFT_NEEDS, sft_dataset, sft_trainer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", required=True, help="a dsprep output folder (packed or tokenized)")
    parser.add_argument("--model", required=True, help="a local model folder with its tokenizer")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--max-steps", type=int, default=-1, help="-1: train --epochs epochs")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=4, help="packed rows per step and device")
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> Any:
    """The SFTTrainer for `args`, after the shards passed verification and the tokenizer check."""
    tokenizer = local_tokenizer(args.model, extra="trl")
    _, shards = prepared_shards(args.shards, tokenizer, needs=SFT_NEEDS)
    dataset = sft_dataset(shards)  # refusals (of the shards, or of the TRL installed) come before the model loads
    model = local_model(args.model, extra="trl")
    return sft_trainer(
        model=model,
        tokenizer=tokenizer,
        dataset=dataset,
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        num_train_epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        bf16=args.bf16,
        seed=args.seed,
        save_strategy="no",
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        trainer = build(args)
    except DsprepError as exc:
        print(f"trl_sft: {exc}", file=sys.stderr)
        return exc.exit_code
    trainer.train()
    trainer.save_model(args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
