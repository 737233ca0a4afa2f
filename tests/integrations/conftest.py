"""Fixtures for trainer tests: a tiny random Llama with a real tokenizer, built locally, and packed shards for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsprep.config import ConvertConfig
from dsprep.pipeline import convert
from dsprep.tokenizers import load_tokenizer
from paths import SHARED_DATA

SOURCE = "sharegpt/fastchat__dummy_conversation.json"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-64 LlamaForCausalLM with random weights and the mistral:v3 tokenizer (never downloaded)."""
    torch = pytest.importorskip("torch", reason="trainer tests need torch")
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = load_tokenizer("mistral:v3").tokenizer
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def _shards(model_dir: Path, factory: pytest.TempPathFactory, name: str, **options: int) -> Path:
    """Convert the real sample file for the tiny model's own tokenizer folder (ChatML), with `options`."""
    if not (SHARED_DATA / "SOURCES.md").is_file():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    out = factory.mktemp("shards") / name
    inputs = (str(SHARED_DATA / SOURCE),)
    convert(ConvertConfig(inputs=inputs, out=out, tokenizer=str(model_dir), template="chatml", **options))  # type: ignore[arg-type]
    return out


@pytest.fixture(scope="session")
def packed_shards(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Packed shards (L = 256) of a real sample file, tokenized with the tiny model's own tokenizer folder."""
    return _shards(tiny_model_dir, tmp_path_factory, "packed", pack=256)


@pytest.fixture(scope="session")
def unpacked_shards(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tokenized, unpacked shards (max 256 tokens) of the same file, for trainers that pack themselves."""
    return _shards(tiny_model_dir, tmp_path_factory, "unpacked", max_len=256)
