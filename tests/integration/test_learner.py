"""The FSDP2 learner, in-process on one rank and as a two-rank Ray learner group, against a plain computation.

The reference is an ordinary (unsharded) Hugging Face model trained with the same formula written out here:
tempered log-probs, `policy_loss` normalised by the batch's response tokens, grad clipping, one AdamW step.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import torch
from ray.util import placement_group_table
from transformers import AutoModelForCausalLM, Qwen2Config

from actors.learner import Learner
from cluster.learner_group import LearnerGroup
from core.config import LearnerConfig
from core.grpo import policy_loss
from core.messages import TrainBatch

VOCAB = 300
CONFIG = LearnerConfig(micro_batch_size=2, torch_threads=1, lr=1e-3, grad_clip=1.0, num_cpus=1.0)
WEIGHT_ATOL = 1e-5  # 1% of one AdamW step (lr)
# A key-projection bias shifts every attention score of a query equally, and softmax ignores such shifts: its
# true gradient is 0, and Adam's normalisation turns the float noise left in its place into a step of up to lr
# either way.
ZERO_GRADIENT_PARAMETERS = "self_attn.k_proj.bias"


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random Qwen2 policy (tied embeddings, as the project's base policy) saved as a model folder."""
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        initializer_range=0.2,  # peaked logits, so that the temperature visibly changes the entropy
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("policy")
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return str(path)


def make_batch() -> TrainBatch:
    """One long sample and three short ones, right-padded, each with its own advantage and temperature.

    With two ranks the long sample fills one shard and the three short ones the other, so at micro-batch size
    2 the ranks need different numbers of micro-batches (1 and 2): the learner must pad the first rank.
    """
    generator = torch.Generator().manual_seed(1)
    lengths = [(4, 8), (3, 2), (3, 3), (2, 2)]  # (prompt, response) tokens
    width = max(p + r for p, r in lengths)
    input_ids = torch.zeros((len(lengths), width), dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    response_mask = torch.zeros((len(lengths), width), dtype=torch.float32)
    for i, (p, r) in enumerate(lengths):
        input_ids[i, : p + r] = torch.randint(1, VOCAB, (p + r,), generator=generator)
        attention_mask[i, : p + r] = 1
        response_mask[i, p : p + r] = 1.0
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        advantages=torch.tensor([1.0, -0.8, 0.5, -1.2]),
        temperatures=torch.tensor([1.0, 0.6, 1.4, 0.9]),
        group_ids=torch.tensor([0, 0, 1, 1]),
    )


def tempered_logits(model: torch.nn.Module, batch: TrainBatch) -> torch.Tensor:
    """Logits predicting tokens 1..L-1, each row divided by its own sampling temperature."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
    return logits / batch.temperatures[:, None, None]


def reference_step(policy_dir: str, batch: TrainBatch, config: LearnerConfig) -> dict:
    """One training step on an unsharded copy of the policy, written out without the learner's code."""
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    mask = batch.response_mask[:, 1:]
    with torch.no_grad():
        log_probs = torch.log_softmax(tempered_logits(model, batch), dim=-1)
        entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
        token_entropy = float((entropy * mask).sum() / mask.sum())
    logits = tempered_logits(model, batch)
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    loss, _ = policy_loss(
        logprobs,
        logprobs.detach(),
        batch.advantages,
        mask,
        normalizer=float(mask.sum()),
        clip_low=config.clip_low,
        clip_high=config.clip_high,
        dual_clip=config.dual_clip,
    )
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    optimizer.step()
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    return {
        "loss": float(loss.detach()),
        "grad_norm": grad_norm,
        "entropy": token_entropy,
        "logprobs": logprobs.detach(),
        "state": state,
    }


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def single_rank(policy_dir: str) -> Iterator[Learner]:
    """A set-up Learner on one gloo rank in this process."""
    learner = Learner(
        policy_dir,
        CONFIG,
        "float32",
        seed=0,
        rank=0,
        world_size=1,
        master_addr="127.0.0.1",
        master_port=free_port(),
    )
    learner.setup()
    yield learner
    learner.shutdown()


def assert_state_matches(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """`state` holds every expected tensor (a tied lm_head may be left out) with equal values."""
    assert set(expected) - set(state) <= {"lm_head.weight"}
    for name, tensor in state.items():
        atol = 2 * CONFIG.lr if name.endswith(ZERO_GRADIENT_PARAMETERS) else WEIGHT_ATOL
        torch.testing.assert_close(tensor, expected[name], atol=atol, rtol=0, msg=name)


# ------------------------------------------------------------------------------------------------ one rank


def test_single_rank_step_matches_a_plain_unsharded_step(single_rank: Learner, policy_dir: str) -> None:
    batch = make_batch()
    expected = reference_step(policy_dir, batch, CONFIG)
    sampler_logprobs = torch.zeros_like(batch.response_mask)
    sampler_logprobs[:, 1:] = expected["logprobs"] - 0.25 * batch.response_mask[:, 1:]
    before = single_rank.full_state_dict()

    metrics = single_rank.train_step(
        dataclasses.replace(batch, sampler_logprobs=sampler_logprobs), batch.num_response_tokens
    )

    assert all(torch.isfinite(torch.tensor(value)) for value in metrics.values()), metrics
    assert metrics["loss"] == pytest.approx(expected["loss"], abs=1e-6)
    assert metrics["grad_norm"] == pytest.approx(expected["grad_norm"], rel=1e-5)
    assert metrics["grad_norm"] > CONFIG.grad_clip  # the clip is active, and matched
    assert metrics["entropy"] == pytest.approx(expected["entropy"], rel=1e-5)
    assert metrics["tokens"] == batch.num_response_tokens == 15
    assert metrics["logprob_mismatch"] == pytest.approx(0.25, abs=1e-5)
    assert metrics["approx_kl"] == pytest.approx(0.0, abs=1e-7)  # old log-probs: same weights, same numbers
    assert metrics["clip_frac"] == 0.0 and metrics["grad_skipped"] == 0.0
    after = single_rank.full_state_dict()
    assert_state_matches(after, expected["state"])
    assert any(not torch.equal(after[name], before[name]) for name in before)


def test_entropy_uses_each_samples_own_temperature(single_rank: Learner, policy_dir: str) -> None:
    base = make_batch()
    rows = [0, 0]  # the same sample twice, stamped with two different temperatures
    batch = dataclasses.replace(base.select(rows), temperatures=torch.tensor([0.5, 2.0]))
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    mask = batch.response_mask[0, 1:].bool()
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids[:1], attention_mask=batch.attention_mask[:1]).logits[0, :-1][mask]
    per_temperature = {
        t: float(torch.distributions.Categorical(logits=logits / t).entropy().mean()) for t in (0.5, 2.0)
    }
    assert per_temperature[2.0] > per_temperature[0.5] + 0.1  # the test can tell the temperatures apart

    metrics = single_rank.train_step(batch, batch.num_response_tokens)

    expected = (per_temperature[0.5] + per_temperature[2.0]) / 2
    assert metrics["entropy"] == pytest.approx(expected, rel=1e-5)


def test_save_then_load_restores_policy_and_optimizer(single_rank: Learner, tmp_path: Path) -> None:
    batch = make_batch()
    single_rank.train_step(batch, batch.num_response_tokens)
    single_rank.save(str(tmp_path))
    # the weights and optimizer state, plus the base model's config files: the folder is a model directory
    assert {p.name for p in tmp_path.iterdir()} == {
        "model.safetensors",
        "optimizer.pt",
        "config.json",
        "generation_config.json",
    }
    second = single_rank.train_step(batch, batch.num_response_tokens)
    after_second = single_rank.full_state_dict()

    single_rank.load(str(tmp_path))
    replayed = single_rank.train_step(batch, batch.num_response_tokens)

    # The second AdamW step depends on the first step's moments: equal results need the optimizer state back.
    assert replayed == pytest.approx(second, rel=1e-6, abs=1e-9)
    assert_state_matches(single_rank.full_state_dict(), after_second)


def test_bfloat16_policy_keeps_float32_master_weights(policy_dir: str) -> None:
    config = dataclasses.replace(CONFIG, gradient_checkpointing=True)
    learner = Learner(
        policy_dir,
        config,
        "bfloat16",
        seed=0,
        rank=0,
        world_size=1,
        master_addr="127.0.0.1",
        master_port=free_port(),
    )
    learner.setup()
    try:
        batch = make_batch()
        before = learner.full_state_dict()
        metrics = learner.train_step(batch, batch.num_response_tokens)
        after = learner.full_state_dict()
        master_dtypes = {parameter.dtype for parameter in learner.model.parameters()}
    finally:
        learner.shutdown()

    expected = reference_step(policy_dir, batch, CONFIG)
    assert metrics["entropy"] == pytest.approx(expected["entropy"], rel=1e-2)  # bf16 forward pass
    assert metrics["grad_norm"] == pytest.approx(expected["grad_norm"], rel=5e-2)
    assert master_dtypes == {torch.float32}
    assert {tensor.dtype for tensor in after.values()} == {torch.bfloat16}
    assert any(not torch.equal(after[name], before[name]) for name in before)


def test_rejects_a_batch_without_response_tokens(single_rank: Learner) -> None:
    batch = make_batch()
    with pytest.raises(ValueError, match="global_response_tokens=0"):
        single_rank.train_step(batch, 0)


def test_load_names_a_folder_without_a_checkpoint(single_rank: Learner, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        single_rank.load(str(tmp_path))


# ------------------------------------------------------------------------------------------- two Ray ranks


@pytest.mark.usefixtures("ray_cluster")
def test_two_ray_ranks_match_one_unsharded_step(policy_dir: str, tmp_path: Path) -> None:
    batch = make_batch()
    expected = reference_step(policy_dir, batch, CONFIG)
    group = LearnerGroup(policy_dir, dataclasses.replace(CONFIG, num_ranks=2), "float32", seed=0)
    try:
        result = group.train(batch, weights_version=3)
        state = ray.get(group.state_dict_ref())
        group.save(str(tmp_path))
    finally:
        group.shutdown()

    assert result.weights_version == 4
    assert result.entropy == pytest.approx(expected["entropy"], rel=1e-5)
    assert result.metrics["loss"] == pytest.approx(expected["loss"], abs=1e-6)
    assert result.metrics["grad_norm"] == pytest.approx(expected["grad_norm"], rel=1e-5)
    assert result.metrics["tokens"] == batch.num_response_tokens
    assert_state_matches(state, expected["state"])

    # The gathered state dict is a Hugging Face state dict: it loads strictly, but for the tied output head.
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert (missing, unexpected) == (["lm_head.weight"], [])

    # A checkpoint written by two ranks resumes on one.
    learner = Learner(
        policy_dir,
        CONFIG,
        "float32",
        seed=0,
        rank=0,
        world_size=1,
        master_addr="127.0.0.1",
        master_port=free_port(),
    )
    learner.setup()
    try:
        learner.load(str(tmp_path))
        assert_state_matches(learner.full_state_dict(), expected["state"])
    finally:
        learner.shutdown()


@pytest.mark.usefixtures("ray_cluster")
def test_group_that_fails_to_set_up_releases_its_actor_and_placement(tmp_path: Path) -> None:
    earlier = set(placement_group_table())
    with pytest.raises(ray.exceptions.RayTaskError, match="no-such-policy"):
        LearnerGroup(str(tmp_path / "no-such-policy"), CONFIG, "float32", seed=0)

    ours = {key: entry for key, entry in placement_group_table().items() if key not in earlier}
    assert len(ours) == 1 and all(entry["state"] == "REMOVED" for entry in ours.values()), ours
    with pytest.raises(ValueError, match="e3/learner-0"):
        ray.get_actor("e3/learner-0")
