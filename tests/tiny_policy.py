"""Tiny random Qwen2 policies for the integration tests, with a tokenizer from the project's own trainer.

`save_tiny_policy` writes a Hugging Face model folder (what the engines, the rollout worker and the learner load):
a byte-level BPE trained by `tasks.arithmetic.tokenizer.train_tokenizer` on short arithmetic sentences (ids 0, 1,
2 are `<|endoftext|>` (pad), `<|im_start|>`, `<|im_end|>` (eos); 269 tokens in all) and a random policy of the
shape a `TinyPolicy` names. The session fixture `tiny_policy` (tests/integration/conftest.py) builds each shape
once. Building takes well under a second; nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

from tasks.arithmetic.tokenizer import save_tokenizer, train_tokenizer

TOKENIZER_VOCAB = 300  # the trainer's ceiling; this corpus stops at 269 tokens
CORPUS = tuple(f"what is {a} plus {b}? it is {a + b}." for a in range(40) for b in range(40))
PAD_ID, EOS_ID = 0, 2  # <|endoftext|>, <|im_end|>


@dataclass(frozen=True)
class TinyPolicy:
    """The shape and initialisation of a tiny random Qwen2 (tied embeddings, as the project's base policy)."""

    vocab_size: int | None = None
    """Rows of the embedding; None: the tokenizer's size. More pads the vocabulary, as Qwen2's 151,936 rows pad
    its 151,665 tokens."""
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int = 1
    head_dim: int = 32
    """vLLM's CPU attention supports head sizes from 32 up."""
    max_positions: int = 256
    initializer_range: float = 0.2
    """Wide: peaked output distributions, so that the temperature visibly changes the entropy."""
    eos_scale: float = 1.0
    """The eos embedding row is multiplied by this (> 1: generations often, not always, end early)."""
    seed: int = 0
    """`torch.manual_seed` before the weights are drawn."""


def random_policy(shape: TinyPolicy, vocab_size: int) -> Qwen2ForCausalLM:
    """A random Qwen2 of `shape` (its `vocab_size`, if set, overrides the given one) in eval mode; the same
    arguments give the same weights."""
    config = Qwen2Config(
        vocab_size=shape.vocab_size or vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=True,
        initializer_range=shape.initializer_range,
        bos_token_id=None,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    torch.manual_seed(shape.seed)
    model = Qwen2ForCausalLM(config).eval()
    if shape.eos_scale != 1.0:
        with torch.no_grad():
            model.model.embed_tokens.weight[EOS_ID] *= shape.eos_scale
    model.generation_config = GenerationConfig(eos_token_id=[EOS_ID], pad_token_id=PAD_ID)
    return model


def save_tiny_policy(out: Path, shape: TinyPolicy) -> Path:
    """Write the tokenizer and a random policy of `shape` to the folder `out` (created); return `out`."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = save_tokenizer(train_tokenizer(CORPUS, TOKENIZER_VOCAB), out, model_max_length=shape.max_positions)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (PAD_ID, EOS_ID)
    random_policy(shape, len(tokenizer)).save_pretrained(out)
    return out
