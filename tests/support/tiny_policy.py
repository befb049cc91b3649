"""Tiny random Qwen2 policies for the integration tests, with a tokenizer from the project's own trainer.

`save_tiny_policy` writes a Hugging Face model folder (what the engines, the rollout worker and the learner load):
a byte-level BPE trained by `tasks.arithmetic.tokenizer.train_tokenizer` on short arithmetic sentences (ids 0, 1,
2 are `<|endoftext|>` (pad), `<|im_start|>`, `<|im_end|>` (eos); 269 tokens in all) and a random policy of the
`PolicyShape` given, built by the benchmarks' builder (bench/random_policy.py) with this tokenizer's token ids
(`TOKEN_IDS`). The session fixture `tiny_policy` (tests/conftest.py) builds each shape once. Building takes well
under a second; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bench.random_policy import PolicyShape, random_policy
from tasks.arithmetic.tokenizer import save_tokenizer, train_tokenizer

TOKENIZER_VOCAB = 300  # the trainer's ceiling; this corpus stops at 269 tokens
CORPUS = tuple(f"what is {a} plus {b}? it is {a + b}." for a in range(40) for b in range(40))
PAD_ID, EOS_ID = 0, 2  # <|endoftext|>, <|im_end|>
TOKEN_IDS = {"bos_token_id": None, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}
"""The tokenizer's special tokens, as `random_policy`'s `base` settings."""
WIDE_INIT = 0.2
"""An `initializer_range` that gives peaked output distributions, so that the temperature visibly changes the
entropy."""


def save_tiny_policy(out: Path, shape: PolicyShape) -> Path:
    """Write the tokenizer and a random policy of `shape` (its vocabulary, if not set, the tokenizer's size) to the
    folder `out` (created); return `out`."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = save_tokenizer(train_tokenizer(CORPUS, TOKENIZER_VOCAB), out, model_max_length=shape.max_positions)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (PAD_ID, EOS_ID)
    shape = dataclasses.replace(shape, vocab_size=shape.vocab_size or len(tokenizer))
    random_policy(shape, TOKEN_IDS).save_pretrained(out)
    return out
