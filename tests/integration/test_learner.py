"""The FSDP2 learner, in-process on one rank and as a two-rank Ray learner group, against a plain computation.

The reference is an ordinary (unsharded) Hugging Face model trained with the same formula written out here:
tempered log-probs, `policy_loss` normalised by the batch's response tokens, grad clipping, one AdamW step.

The learner and the reference compute the same functions in float32 but add in other orders (micro-batches of 2
against the whole batch, one shard per rank, and on another CPU other kernels: AVX-512/AMX, AVX2, ...), so what
they share is exact only where no sum is involved; everything else is compared within a rounding bound derived
(tests/support/learner_case.py), not measured on one machine.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import torch
from ray.util import placement_group_table
from transformers import AutoModelForCausalLM

from actors.learner import OPTIMIZER_FILE, Learner
from cluster.learner_group import LearnerGroup
from core import entropy_stats
from core.config import LearnerConfig
from core.grpo import policy_loss
from core.messages import TrainBatch
from tests.support.fsync import record_fsyncs
from tests.support.learner_case import (
    CONFIG,
    FORWARD_SUMS,
    GRADIENT_SUMS,
    POLICY,
    VOCAB,
    free_port,
    make_batch,
    rounding,
)

pytestmark = pytest.mark.slow  # the learner end to end, on one rank and as a two-rank Ray group

# How far float32 rounding moves a result: the analysis and `rounding` are in tests/support/learner_case.py.
#
# A gradient element, relative to the largest element of its tensor (3.3e-5; measured below 40 u = 2.4e-6).
GRAD_RTOL = rounding(GRADIENT_SUMS)
# A real error is far larger: one response token more or less in the normaliser moves the gradient by 7%, a
# wrong temperature or a dropped micro-batch by more. The loss at step 1 does not depend on the weights at all
# (ratio = exp(logprob - old_logprob) = 1, the same numbers twice), so it is checked against its closed form:
# each side is a float32 sum of the 15 tokens' -A / 15, whose magnitudes add up to 0.9, within 14 u * 0.9 = 7.5e-7
# even in the worst case.
LOSS_ATOL = 2e-6
# Where a weight's update is compared (see `assert_adamw_step_matches`), Adam's step is certain to within lr / 1400
# and float32 rounding of the weight (|w| < 2) adds a few 1e-7: 1% of a step (lr) bounds both with room.
WEIGHT_ATOL = CONFIG.lr / 100
# A clipped gradient element is "certain" where it is at least this many times its rounding bound (and 100 eps).
CERTAIN_MULTIPLE = 16


@pytest.fixture(scope="module")
def policy_dir(tiny_policy) -> str:
    """The policy's model folder (shared by the session)."""
    return str(tiny_policy(POLICY))


def tempered_logits(model: torch.nn.Module, batch: TrainBatch) -> torch.Tensor:
    """Logits predicting tokens 1..L-1, each row divided by its own sampling temperature."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
    return logits / batch.temperatures[:, None, None]


def forward_tolerances(tempered: torch.Tensor) -> dict[str, float]:
    """Rounding bounds for what the learner computes from the tempered logits `tempered` [tokens, V] (the
    reference's, at the response tokens): a log-prob's and a mean token entropy's (absolute, in nats).

    A tempered logit z_j moves by at most `logit = rounding(FORWARD_SUMS) * max |z|`. A log-prob
    z_k - logsumexp(z) moves by at most 2 * logit (logsumexp moves no more than its largest input). The entropy's
    derivative in z_j is -p_j (z_j - E_p[z]), so it moves by at most std_p(z) * logit (Cauchy-Schwarz), plus the
    rounding of its own sum over the vocabulary, whose terms -p log p are all positive and add up to the entropy.
    """
    z = tempered.double()
    logit = rounding(FORWARD_SUMS) * float(z.abs().max())
    p = torch.softmax(z, dim=-1)
    spread = ((p * (z - (p * z).sum(-1, keepdim=True)) ** 2).sum(-1).sqrt()).max()
    entropy = (-(p * torch.log_softmax(z, dim=-1)).sum(-1)).max()
    return {"logprob": 2 * logit, "entropy": float(spread) * logit + rounding(VOCAB) * float(entropy)}


def reference_step(policy_dir: str, batch: TrainBatch, config: LearnerConfig) -> dict:
    """One training step on an unsharded copy of the policy, written out without the learner's code."""
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    initial = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    mask = batch.response_mask[:, 1:]
    with torch.no_grad():
        tempered = tempered_logits(model, batch)
        log_probs = torch.log_softmax(tempered, dim=-1)
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
    parameters = dict(model.named_parameters())  # the tied output head once, as the embedding
    grads = {name: parameter.grad.detach().clone() for name, parameter in parameters.items()}
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    optimizer.step()
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    # The gradient norm's relative bound: to first order norm(g') - norm(g) = <g, g' - g> / norm(g), and every
    # element of g' - g is within GRAD_RTOL of its tensor's largest; plus the rounding of the norm's own sum of
    # squares (halved by the square root).
    deviation = sum(GRAD_RTOL * float(g.abs().max()) * float(g.abs().sum()) for g in grads.values()) / grad_norm
    largest = max(g.numel() for g in grads.values())
    return {
        "loss": float(loss.detach()),
        "grad_norm": grad_norm,
        "grad_norm_rtol": deviation / grad_norm + rounding(largest) / 2,
        "entropy": token_entropy,
        "forward": forward_tolerances(tempered[mask.bool()]),
        "logprobs": logprobs.detach(),
        "initial": initial,
        "state": state,
        "moments": {name: optimizer.state[parameter] for name, parameter in parameters.items()},
    }


def closed_form_loss(batch: TrainBatch) -> float:
    """The policy loss at ratio 1: -sum over response tokens of the sample's advantage, over the token count."""
    tokens = batch.response_mask[:, 1:].double().sum(dim=1)
    return -float((batch.advantages.double() * tokens).sum() / tokens.sum())


def assert_adamw_step_matches(
    state: dict[str, torch.Tensor], optimizer_state: dict, grad_norm: float, expected: dict
) -> None:
    """The learner's first AdamW step (`state`, `optimizer_state` as in its checkpoint, its `grad_norm`) is the
    reference's, to within rounding.

    At step 1 AdamW's moments are exp_avg = (1 - b1) g and exp_avg_sq = (1 - b2) g^2 of the clipped gradient
    g = c * grad, c = grad_clip / (grad_norm + 1e-6): comparing them compares the gradients. An element of g may
    differ by `delta` = GRAD_RTOL times its tensor's largest, plus `rho` (the grad norm's relative bound, through c)
    times itself; g^2 by (2 |g| + delta) delta, within 3 delta times the largest, plus 2 rho (and rho^2) times itself.

    The weights moved by -lr * wd * w plus Adam's step -lr * g / (|g| + eps), which is about lr * sign(g): an
    element of g near 0, whose last bits differ between two float32 computations, may flip it by 2 lr. So the
    weights are compared only where |g| >= CERTAIN_MULTIPLE * delta (and 100 eps): there both sides' g have the
    same sign and differ by at most D = |g| (1/16 + rho), and the step g / (|g| + eps) by at most
    eps * D / ((|g| + eps) (|g| - D)) < eps / (14 |g|) < 1 / 1400 of lr. Everywhere, Adam's step is at most lr.
    """
    (group,) = optimizer_state["param_groups"]
    lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
    beta1, beta2 = group["betas"]
    assert set(optimizer_state["state"]) == set(expected["moments"])
    assert set(expected["state"]) - set(state) <= {"lm_head.weight"}
    rho = expected["grad_norm_rtol"]
    # (The clipped gradient hides a common factor on the gradient, such as a wrong normaliser: the norm shows it.)
    assert grad_norm == pytest.approx(expected["grad_norm"], rel=rho)
    compared = total = 0
    for name, reference in expected["moments"].items():
        moments = optimizer_state["state"][name]
        assert float(moments["step"]) == float(reference["step"]) == 1.0, name
        clipped = reference["exp_avg"] / (1 - beta1)
        delta = GRAD_RTOL * float(clipped.abs().max())
        torch.testing.assert_close(
            moments["exp_avg"], reference["exp_avg"], rtol=rho, atol=(1 - beta1) * delta, msg=f"exp_avg of {name}"
        )
        torch.testing.assert_close(
            moments["exp_avg_sq"],
            reference["exp_avg_sq"],
            rtol=3 * rho,
            atol=(1 - beta2) * 3 * delta * float(clipped.abs().max()),
            msg=f"exp_avg_sq of {name}",
        )
        decayed = expected["initial"][name] * (1 - lr * decay)
        assert float((state[name] - decayed).abs().max()) <= lr + WEIGHT_ATOL, name
        certain = clipped.abs() >= max(CERTAIN_MULTIPLE * delta, 100 * eps)
        torch.testing.assert_close(
            state[name][certain], expected["state"][name][certain], rtol=0, atol=WEIGHT_ATOL, msg=name
        )
        assert float(certain.float().mean()) >= 0.5, f"{name}: most gradients are not well above rounding"
        compared += int(certain.sum())
        total += certain.numel()
    assert compared >= 0.85 * total, f"only {compared} of {total} weights have a gradient well above rounding"


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


# ------------------------------------------------------------------------------------------------ one rank


def load_optimizer_state(folder: Path) -> dict:
    """The AdamW state a learner checkpoint holds (full, unsharded, Hugging Face parameter names)."""
    return torch.load(folder / OPTIMIZER_FILE, weights_only=True)


def test_single_rank_step_matches_a_plain_unsharded_step(single_rank: Learner, policy_dir: str, tmp_path: Path) -> None:
    batch = make_batch()
    expected = reference_step(policy_dir, batch, CONFIG)
    sampler_logprobs = torch.zeros_like(batch.response_mask)
    sampler_logprobs[:, 1:] = expected["logprobs"] - 0.25 * batch.response_mask[:, 1:]
    before = single_rank.full_state_dict()

    metrics = single_rank.train_step(
        dataclasses.replace(batch, sampler_logprobs=sampler_logprobs), batch.num_response_tokens
    )

    assert all(torch.isfinite(torch.tensor(value)) for value in metrics.values()), metrics
    assert metrics["loss"] == pytest.approx(closed_form_loss(batch), abs=LOSS_ATOL)
    assert expected["loss"] == pytest.approx(closed_form_loss(batch), abs=LOSS_ATOL)
    assert metrics["grad_norm"] > CONFIG.grad_clip  # the clip is active, and matched below
    assert metrics["entropy"] == pytest.approx(expected["entropy"], abs=expected["forward"]["entropy"])
    assert metrics["tokens"] == batch.num_response_tokens == 15
    # The mean of |logprob - (reference - 0.25)| over the tokens: 0.25 plus at most one log-prob's rounding.
    assert metrics["logprob_mismatch"] == pytest.approx(0.25, abs=expected["forward"]["logprob"])
    # The old log-probs come from the same weights, micro-batch and kernels as the new ones: the same numbers.
    assert metrics["approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert metrics["clip_frac"] == 0.0 and metrics["grad_skipped"] == 0.0
    after = single_rank.full_state_dict()
    assert any(not torch.equal(after[name], before[name]) for name in before)
    single_rank.save(str(tmp_path))
    assert_adamw_step_matches(after, load_optimizer_state(tmp_path), metrics["grad_norm"], expected)


def test_entropy_uses_each_samples_own_temperature(single_rank: Learner, policy_dir: str) -> None:
    base = make_batch()
    rows = [0, 0]  # the same sample twice, stamped with two different temperatures
    batch = dataclasses.replace(base.select(rows), temperatures=torch.tensor([0.5, 2.0]))
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    mask = batch.response_mask[0, 1:].bool()
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids[:1], attention_mask=batch.attention_mask[:1]).logits[0, :-1][mask]
    per_token = {t: torch.distributions.Categorical(logits=logits / t).entropy() for t in (0.5, 2.0)}
    per_temperature = {t: float(values.mean()) for t, values in per_token.items()}
    assert per_temperature[2.0] > per_temperature[0.5] + 0.1  # the test can tell the temperatures apart
    atol = max(forward_tolerances(logits / t)["entropy"] for t in (0.5, 2.0))

    metrics = single_rank.train_step(batch, batch.num_response_tokens)

    expected = (per_temperature[0.5] + per_temperature[2.0]) / 2
    assert metrics["entropy"] == pytest.approx(expected, abs=atol)
    # the top 20% of both rows' tokens, from the histogram: within one bin of the exact mean
    tokens = torch.cat(list(per_token.values())).sort(descending=True).values.double()
    wanted = 0.2 * len(tokens)
    exact = (tokens[: int(wanted)].sum() + (wanted - int(wanted)) * tokens[int(wanted)]) / wanted
    bin_width = math.log(model.config.vocab_size) / entropy_stats.BINS
    assert metrics["entropy_top20"] == pytest.approx(float(exact), abs=bin_width + atol)
    assert metrics["entropy_top20"] > metrics["entropy"]


def test_save_then_load_restores_policy_and_optimizer(single_rank: Learner, tmp_path: Path) -> None:
    batch = make_batch()
    single_rank.train_step(batch, batch.num_response_tokens)
    single_rank.save(str(tmp_path))
    # the weights and optimizer state, plus the base model's config and tokenizer files: a model directory
    assert {p.name for p in tmp_path.iterdir()} == {
        "model.safetensors",
        "optimizer.pt",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    }
    second = single_rank.train_step(batch, batch.num_response_tokens)
    after_second = single_rank.full_state_dict()

    single_rank.load(str(tmp_path))
    replayed = single_rank.train_step(batch, batch.num_response_tokens)

    # The second AdamW step depends on the first step's moments: equal results need the optimizer state back.
    # The replay is the same computation (same process, kernels, thread count, inputs), so it is equal to the bit.
    assert replayed == second
    replayed_state = single_rank.full_state_dict()
    assert replayed_state.keys() == after_second.keys()
    assert all(torch.equal(replayed_state[name], after_second[name]) for name in after_second)


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
    # A bfloat16 forward and backward pass against the float32 reference: bfloat16 keeps 8 bits (u = 2^-8 = 3.9e-3),
    # so these are sanity bounds of about 2.5 u and 13 u, not rounding bounds; measured: 7e-4..9e-4 and 3e-3..4e-3
    # with AMX, AVX-512 and AVX2 kernels (oneDNN and ATen limited by ONEDNN_MAX_CPU_ISA / ATEN_CPU_CAPABILITY).
    assert metrics["entropy"] == pytest.approx(expected["entropy"], rel=1e-2)
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


def test_save_flushes_every_file_it_writes_to_disk(
    single_rank: Learner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint's `policy/` may be written on another node than the one that publishes the checkpoint, so
    rank 0 fsyncs its files and folder itself."""
    synced = record_fsyncs(monkeypatch)
    folder = tmp_path.resolve() / "policy"
    single_rank.save(str(folder))
    assert {*folder.iterdir(), folder} <= set(synced)


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
    assert result.entropy == pytest.approx(expected["entropy"], abs=expected["forward"]["entropy"])
    assert result.metrics["loss"] == pytest.approx(closed_form_loss(batch), abs=LOSS_ATOL)
    assert result.metrics["tokens"] == batch.num_response_tokens
    written = load_optimizer_state(tmp_path)
    assert_adamw_step_matches(state, written, result.metrics["grad_norm"], expected)

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
        restored = learner.full_state_dict()
        learner.save(str(tmp_path / "again"))
    finally:
        learner.shutdown()
    # Loading copies numbers, it computes nothing: the weights and the optimizer state come back to the bit.
    assert restored.keys() == state.keys()
    assert all(torch.equal(restored[name], state[name]) for name in state)
    again = load_optimizer_state(tmp_path / "again")
    # (set_optimizer_state_dict hands the betas back as a list)
    assert [{**g, "betas": tuple(g["betas"])} for g in again["param_groups"]] == written["param_groups"]
    assert again["state"].keys() == written["state"].keys()
    for name, moments in written["state"].items():
        assert all(torch.equal(again["state"][name][key], value) for key, value in moments.items()), name


@pytest.mark.usefixtures("ray_cluster")
def test_group_that_fails_to_set_up_releases_its_actor_and_placement(tmp_path: Path) -> None:
    earlier = set(placement_group_table())
    with pytest.raises(ray.exceptions.RayTaskError, match="no-such-policy"):
        LearnerGroup(str(tmp_path / "no-such-policy"), CONFIG, "float32", seed=0)

    ours = {key: entry for key, entry in placement_group_table().items() if key not in earlier}
    assert len(ours) == 1 and all(entry["state"] == "REMOVED" for entry in ours.values()), ours
    with pytest.raises(ValueError, match="e3/learner-0"):
        ray.get_actor("e3/learner-0")
