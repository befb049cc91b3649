"""Random-weight Qwen2 policies, the one builder of the benchmarks and the tests: a `PolicyShape` names the shape
and initialisation; `random_policy` builds it in memory, `save_random_policy` writes it as a Hugging Face model
folder (what the engines, the rollout worker and the learner load), optionally beside an existing model's tokenizer
and with that model's other settings (token ids, norm, rope). The same shape gives the same weights; nothing is
downloaded. torch and transformers are imported inside the functions, so importing this module stays cheap."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import Qwen2Config, Qwen2ForCausalLM

DERIVED = ("layer_types",)
"""Settings of a base model's config that follow from its shape, so are derived afresh for a new shape."""


@dataclass(frozen=True, kw_only=True)
class PolicyShape:
    """The shape and initialisation of a random Qwen2."""

    vocab_size: int | None = None
    """Rows of the embedding; None: given by whoever builds it (`save_tiny_policy`: the tokenizer's size)."""
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None
    """None: `hidden_size // num_heads`. vLLM's CPU attention supports head sizes from 32 up."""
    max_positions: int
    tie_embeddings: bool = True
    """Tied input and output embeddings, as the project's base policy."""
    initializer_range: float = 0.02
    """Qwen2's default; wider gives peaked output distributions."""
    eos_scale: float = 1.0
    """The eos embedding row is multiplied by this (> 1: generations often, not always, end early)."""
    seed: int = 0
    """`torch.manual_seed` before the weights are drawn."""

    @classmethod
    def of(cls, model_dir: Path, **changes: Any) -> PolicyShape:
        """The shape of the Qwen2 in the folder `model_dir` (its config.json), with `changes` on top."""
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        shape = cls(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=config["num_attention_heads"],
            num_kv_heads=config["num_key_value_heads"],
            head_dim=config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"],
            max_positions=config["max_position_embeddings"],
            tie_embeddings=config.get("tie_word_embeddings", True),
            initializer_range=config.get("initializer_range", 0.02),
        )
        return dataclasses.replace(shape, **changes)


def qwen2_config(shape: PolicyShape, base: dict[str, Any] | None = None) -> Qwen2Config:
    """The Qwen2 configuration of `shape`; Qwen2Config's other settings from `base` (a config.json's contents,
    token ids for instance) where given, else Qwen2's defaults."""
    from transformers import Qwen2Config

    if shape.vocab_size is None:
        raise ValueError(f"{shape} has no vocab_size: give one")
    fields = dict(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        head_dim=shape.head_dim or shape.hidden_size // shape.num_heads,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=shape.tie_embeddings,
        initializer_range=shape.initializer_range,
    )
    inherited = {k: v for k, v in (base or {}).items() if k not in DERIVED and k not in fields}
    return Qwen2Config(**inherited, **fields)


def random_policy(shape: PolicyShape, base: dict[str, Any] | None = None) -> Qwen2ForCausalLM:
    """A Qwen2 of `shape` (other settings from `base`, as `qwen2_config`) with random weights, in eval mode; where
    the configuration names an eos token, generation ends at it and pads with its pad token."""
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    config = qwen2_config(shape, base)
    torch.manual_seed(shape.seed)
    model = Qwen2ForCausalLM(config).eval()
    eos = config.eos_token_id
    if shape.eos_scale != 1.0:
        if not isinstance(eos, int):
            raise ValueError(f"eos_scale {shape.eos_scale} needs one eos token id, not {eos!r}")
        with torch.no_grad():
            model.model.embed_tokens.weight[eos] *= shape.eos_scale
    if eos is not None:
        eos_ids = [eos] if isinstance(eos, int) else list(eos)
        model.generation_config = GenerationConfig(eos_token_id=eos_ids, pad_token_id=config.pad_token_id)
    return model


def save_random_policy(out: Path, shape: PolicyShape, base_dir: Path | None = None) -> int:
    """Write a random policy of `shape` to the folder `out` (created); with `base_dir`, a model folder, its
    tokenizer and other files come along and its config's other settings are kept. Returns the parameter count
    (a tied output layer counted once)."""
    out.mkdir(parents=True, exist_ok=True)
    base = None
    if base_dir is not None:
        from actors.learner import copy_model_files

        base = json.loads((Path(base_dir) / "config.json").read_text(encoding="utf-8"))
        copy_model_files(Path(base_dir), out)  # the tokenizer and generation files; save_pretrained writes the rest
    model = random_policy(shape, base)
    model.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())
