"""bench.random_policy, the one builder of random Qwen2 policies for the benchmarks and the tests."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from bench.random_policy import PolicyShape, random_policy, save_random_policy

SHAPE = PolicyShape(
    vocab_size=50, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, num_kv_heads=1, max_positions=32
)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def test_same_shape_same_weights_other_seed_other_weights() -> None:
    first, again = weights(random_policy(SHAPE)), weights(random_policy(SHAPE))
    other = weights(random_policy(dataclasses.replace(SHAPE, seed=1)))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


def test_eos_scale_scales_the_eos_row_and_generation_stops_at_eos() -> None:
    ids = {"bos_token_id": None, "eos_token_id": 3, "pad_token_id": 0}
    plain = random_policy(SHAPE, ids)
    scaled = random_policy(dataclasses.replace(SHAPE, eos_scale=2.0), ids)
    rows = plain.model.embed_tokens.weight, scaled.model.embed_tokens.weight
    assert torch.equal(rows[1][3], 2 * rows[0][3]) and torch.equal(rows[1][4], rows[0][4])
    assert scaled.generation_config.eos_token_id == [3] and scaled.generation_config.pad_token_id == 0


def test_a_shape_without_a_vocabulary_is_refused() -> None:
    with pytest.raises(ValueError, match="no vocab_size"):
        random_policy(dataclasses.replace(SHAPE, vocab_size=None))


def test_saved_beside_a_base_keeps_its_files_and_settings_and_reads_back_as_its_shape(tmp_path: Path) -> None:
    base = tmp_path / "base"
    save_random_policy(base, SHAPE)
    config = json.loads((base / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5
    (base / "config.json").write_text(json.dumps(config))
    (base / "tokenizer.json").write_text("{}")
    wider = PolicyShape.of(base, hidden_size=32, num_heads=4, num_kv_heads=2, head_dim=8)
    params = save_random_policy(tmp_path / "wider", wider, base)
    assert PolicyShape.of(tmp_path / "wider") == wider
    assert json.loads((tmp_path / "wider" / "config.json").read_text())["rms_norm_eps"] == 1e-5
    assert (tmp_path / "wider" / "tokenizer.json").read_text() == "{}"
    assert params == sum(p.numel() for p in random_policy(wider).parameters())
