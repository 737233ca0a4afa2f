"""The cross-trainer check: a batch as a trainer's collator built it gives each example the losses it has alone."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any


def float64_model(model_dir: Path) -> Any:
    """The tiny test model in float64 with sdpa attention, in eval mode."""
    import torch
    import transformers

    model = transformers.LlamaForCausalLM.from_pretrained(
        str(model_dir), attn_implementation="sdpa", torch_dtype=torch.float64
    )
    return model.eval()


def _losses(logits: Any, labels: Any) -> Any:
    import torch

    targets = labels[1:]
    losses = torch.nn.functional.cross_entropy(logits[:-1].double(), targets.clamp(min=0), reduction="none")
    return torch.where(targets == -100, torch.full_like(losses, float("nan")), losses)


def example_loss_deltas(model: Any, input_ids: Any, labels: Any, position_ids: Any) -> tuple[float, int]:
    """Max |Δ| between each example's per-token losses inside the batch row(s) and alone, and the example count.

    `input_ids`, `labels` (unshifted, -100 where not trained) and `position_ids` are [batch, seq] tensors as a
    collator produced them; examples are the runs where `position_ids` restart at 0. Padding (label -100 only)
    contributes no targets.
    """
    import torch

    worst, examples = 0.0, 0
    with torch.no_grad():
        for b in range(input_ids.shape[0]):
            ids, lab, pos = input_ids[b], labels[b], position_ids[b]
            logits = model(input_ids=ids[None], position_ids=pos[None], use_cache=False).logits[0]
            packed = _losses(logits, lab)
            starts = [*torch.nonzero(pos == 0).flatten().tolist(), len(ids)]
            for a, z in itertools.pairwise(starts):
                if (lab[a:z] == -100).all():
                    continue
                examples += 1
                alone_logits = model(input_ids=ids[a:z][None], use_cache=False).logits[0]
                alone = _losses(alone_logits, lab[a:z])
                inside = packed[a : z - 1]
                assert torch.equal(torch.isnan(inside), torch.isnan(alone)), "supervised targets differ packed vs alone"
                keep = ~torch.isnan(alone)
                if keep.any():
                    worst = max(worst, float((inside[keep] - alone[keep]).abs().max()))
    return worst, examples
