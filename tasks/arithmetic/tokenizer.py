"""A byte-level BPE tokenizer trained locally, saved as a Qwen2 tokenizer with a ChatML chat template.

transformers 5 rebuilds a Qwen2 tokenizer's normalizer and pre-tokenizer from its own code (NFC, then a
split on ``PRETOKENIZE_REGEX``, then byte-level), ignoring the saved ones. The tokenizer here is trained with
exactly that pipeline, so ``tokenizers``, ``AutoTokenizer`` and vLLM give the same token ids. Qwen2's regex
makes every digit its own pre-token, so numbers are read digit by digit.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import PreTrainedTokenizerBase, Qwen2Tokenizer

# Copied from transformers.models.qwen2.tokenization_qwen2 (a test checks they are equal).
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)

# ChatML, as Qwen2 writes it, without Qwen's default system message (the prompt stays short).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def train_tokenizer(corpus: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE on ``corpus`` with Qwen2's normalizer and pre-tokenizer.

    Ids 0, 1, 2 are ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``; the 256 byte symbols follow, so any
    text encodes. ``vocab_size`` counts all of them.
    """
    minimum = len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be >= {minimum} (special tokens + 256 bytes), got {vocab_size}")
    tokenizer = Tokenizer(BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


def to_transformers(tokenizer: Tokenizer, model_max_length: int) -> PreTrainedTokenizerBase:
    """Wrap a tokenizer from :func:`train_tokenizer` as a Qwen2 tokenizer: eos ``<|im_end|>``, pad
    ``<|endoftext|>``, the ChatML chat template."""
    bpe = tokenizer.model
    if not isinstance(bpe, BPE):
        raise TypeError(f"expected a BPE tokenizer, got model {type(bpe).__name__}")
    merges = [tuple(pair) for pair in _merges(tokenizer)]
    wrapped = Qwen2Tokenizer(
        vocab=tokenizer.get_vocab(),
        merges=merges,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        model_max_length=model_max_length,
        extra_special_tokens=[IM_START],
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def save_tokenizer(tokenizer: Tokenizer, out_dir: Path, model_max_length: int) -> PreTrainedTokenizerBase:
    """Save ``tokenizer`` into ``out_dir`` in the Hugging Face layout; returns the transformers tokenizer."""
    wrapped = to_transformers(tokenizer, model_max_length)
    wrapped.save_pretrained(out_dir)
    return wrapped


def _merges(tokenizer: Tokenizer) -> list[list[str]]:
    """The BPE merges in rank order."""
    import json

    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return [m.split(" ", 1) if isinstance(m, str) else m for m in merges]
