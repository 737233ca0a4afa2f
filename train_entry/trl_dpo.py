"""Preference tuning with TRL's DPOTrainer on tokenized dsprep preference shards.

    dsprep convert pairs.json --out prefs --tokenizer MODEL_DIR --template chatml --max-len 2048
    python train_entry/trl_dpo.py --shards prefs --model MODEL_DIR --output-dir runs/dpo

The shards are verified (`dsprep verify`) and must have been tokenized with MODEL_DIR's tokenizer. Their
`prompt_input_ids`, `chosen_input_ids` and `rejected_input_ids` go to DPOTrainer as `prompt_ids`, `chosen_ids` and
`rejected_ids`, untouched; with --max-length, the pairs whose prompt alone fills it are left out, as DPOTrainer
leaves them out (a line says how many). The reference model is a frozen copy loaded from MODEL_DIR.
Needs `pip install 'dsprep[trl]'` with trl>=1.9,!=1.15.* (1.15 cannot train without a GPU).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dsprep.errors import DsprepError
from dsprep.integrations.common import local_model, local_tokenizer, prepared_shards
from dsprep.integrations.trl import DPO_NEEDS, dpo_dataset, dpo_trainer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", required=True, help="a dsprep output folder of tokenized preference rows")
    parser.add_argument("--model", required=True, help="a local model folder with its tokenizer")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--max-steps", type=int, default=-1, help="-1: train --epochs epochs")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=2, help="pairs per step and device")
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="truncate prompt+completion; pairs whose prompt alone is this long are left out (default: none)",
    )
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> Any:
    """The DPOTrainer for `args`, after the shards passed verification and the tokenizer check."""
    tokenizer = local_tokenizer(args.model, extra="trl")
    _, shards = prepared_shards(args.shards, tokenizer, needs=DPO_NEEDS)
    dataset = dpo_dataset(shards, max_length=args.max_length)  # refusals come before the model loads
    model = local_model(args.model, extra="trl")
    return dpo_trainer(
        model=model,
        tokenizer=tokenizer,
        dataset=dataset,
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        num_train_epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        max_length=args.max_length,
        beta=args.beta,
        bf16=args.bf16,
        seed=args.seed,
        save_strategy="no",
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        trainer = build(args)
    except DsprepError as exc:
        print(f"trl_dpo: {exc}", file=sys.stderr)
        return exc.exit_code
    trainer.train()
    trainer.save_model(args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
