"""What only a GPU can show, for a lent machine: the one-GPU recipe's learner step, generation and handover on CUDA.

`python -m bench.gpu_check` needs torch and transformers only (no Ray, vLLM or Hydra: the lent machines have none
of them) and one GPU, and runs in a few minutes:
1. builds a policy of the recipe's shape (`conf/experiment/one_gpu_e3_1p5b.yaml`: DeepSeek-R1-Distill-Qwen-1.5B,
   a Qwen2.5-1.5B with untied embeddings, 1.78B parameters) from its config with random weights and a small local
   tokenizer, saved in bf16 (nothing is downloaded);
2. sets up one `ColocatedRank` (actors/colocated.py): the learner's FSDP2 at world size 1 on NCCL in bf16, with
   the recipe's learner settings (read from the recipe's YAML files), and the transformers engine on the same GPU;
3. takes two real train steps (`Learner.train_step`: the chunked head, the recipe's token budget per micro-batch)
   on a batch of `--train-samples` random sequences of the recipe's longest length (prompt + response), the
   engine asleep; reports the peak CUDA memory against `mode=plan`'s prediction for the learner
   (`cluster.plan.plan_memory`, within 15% is the target), tokens/s and MFU (6 x parameters x tokens a second
   over the GPU's dense bf16 peak; gradient checkpointing recomputes the forward, so the work done is 8/6 of it);
4. hands the new weights over to the engine in-process (`take_learner_weights`: sleep, wake, one gathered
   parameter at a time) and checks that the engine holds the learner's weights;
5. generates with the transformers engine on CUDA: `--gen-prompts` prompts of `--gen-prompt-tokens` tokens,
   `--gen-samples` samples each, `--gen-new-tokens` new tokens (random weights rarely stop early), a scaled-down
   batch of the recipe's shape (its 512 x 6,144 would take the transformers engine far longer than the check
   may); the recipe itself generates with vLLM, which the lent machines lack, so vLLM's sleep mode and its reload
   beside an NCCL learner are not checked here;
6. writes `bench/results/gpu_check.json` and `.md`.

`--dry-run` runs the same steps at a tiny shape on CPU (gloo, float32) in seconds: the suite runs it
(tests/integration/test_gpu_check.py), so the script is known to work before a GPU is spent on it.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import transformers

from bench.machine import machine_line
from bench.output import write_results
from bench.random_policy import PolicyShape, random_policy

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
RECIPE = "one_gpu_e3_1p5b"
RECIPE_SHAPE = PolicyShape(  # DeepSeek-R1-Distill-Qwen-1.5B's config.json
    vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12, num_kv_heads=2,
    max_positions=131072, tie_embeddings=False,
)  # fmt: skip
TINY_SHAPE = PolicyShape(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=32,
    max_positions=512, tie_embeddings=False,
)  # fmt: skip
DENSE_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}
"""Dense bf16 tensor-core peak by GPU name (the vendors' data sheets, SXM parts, without sparsity)."""
TOKENIZER_CORPUS = tuple(f"what is {a} plus {b}? it is {a + b}." for a in range(30) for b in range(30))


@dataclass
class CheckSizes:
    """The shapes the check runs at: the recipe's on GPU, tiny ones on the CPU dry run."""

    shape: PolicyShape
    dtype: str
    prompt_tokens: int
    response_tokens: int
    train_samples: int
    gen_prompts: int
    gen_samples: int
    gen_prompt_tokens: int
    gen_new_tokens: int


def recipe_settings(recipe: str = RECIPE) -> dict[str, Any]:
    """The recipe's settings as one nested dict: its YAML file over the files its `defaults` name (in order), read
    with PyYAML (a transformers dependency), since Hydra is not on the lent machines."""
    import yaml

    def load(name: str) -> dict[str, Any]:
        raw = yaml.safe_load((ROOT / "conf" / "experiment" / f"{name}.yaml").read_text(encoding="utf-8"))
        merged: dict[str, Any] = {}
        for entry in raw.pop("defaults", []):
            if entry != "_self_":
                merged = _merge(merged, load(entry))
        return _merge(merged, raw)

    return load(recipe)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, key by key at any depth."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def learner_and_rollout_configs(settings: dict[str, Any], dry_run: bool) -> tuple[Any, Any]:
    """The recipe's `LearnerConfig` and `RolloutConfig` (only their schema's keys), with the transformers engine
    (vLLM is not on the lent machines); on the dry run, a CPU rank with float32 and tiny chunks."""
    from core.config import LearnerConfig, RolloutConfig

    def build(cls, values: dict[str, Any], **changes: Any):
        names = {f.name for f in fields(cls)}
        known = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}
        return cls(**{**known, **changes})

    learner_changes: dict[str, Any] = {"num_ranks": 1}
    if dry_run:
        learner_changes.update(num_gpus=0, torch_threads=1, max_tokens_per_micro_batch=256, logits_chunk_tokens=64)
    learner = build(LearnerConfig, settings["learner"], **learner_changes)
    rollout = build(RolloutConfig, settings["rollout"], engine="hf", placement="colocated")
    return learner, rollout


def save_policy(out: Path, shape: PolicyShape, dtype: str) -> int:
    """Write a small local tokenizer and a random policy of `shape` (saved in `dtype`) to `out`; the parameter count."""
    from tasks.arithmetic.tokenizer import save_tokenizer, train_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = save_tokenizer(train_tokenizer(TOKENIZER_CORPUS, 300), out, model_max_length=shape.max_positions)
    base = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, "bos_token_id": None}
    model = random_policy(shape, base).to(getattr(torch, dtype))
    model.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def random_batch(sizes: CheckSizes, generator: torch.Generator) -> Any:
    """`train_samples` sequences of prompt + response tokens (random ids), every response token trained, half the
    samples with advantage +1 and half -1, all sampled at temperature 1, with the engine log-probs the recipe's
    off-policy correction reads."""
    from core.messages import TrainBatch

    n, length = sizes.train_samples, sizes.prompt_tokens + sizes.response_tokens
    vocab = int(sizes.shape.vocab_size or 0)
    response = torch.zeros(n, length)
    response[:, sizes.prompt_tokens :] = 1.0
    return TrainBatch(
        input_ids=torch.randint(3, vocab, (n, length), generator=generator),
        attention_mask=torch.ones(n, length, dtype=torch.int64),
        response_mask=response,
        advantages=torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(n)]),
        temperatures=torch.ones(n),
        sampler_logprobs=response * -math.log(vocab),  # a random policy's tokens: about uniform, for the TIS ratio
    )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def peak_flops(device_name: str) -> float | None:
    """The dense bf16 peak of the GPU named `device_name`, if the table knows it."""
    return next((flops for key, flops in DENSE_BF16_FLOPS.items() if key in device_name), None)


def run(sizes: CheckSizes, workdir: Path) -> dict[str, Any]:
    """Steps 2-5 of the module docstring on the policy in `workdir`; returns the results."""
    from actors.colocated import ColocatedRank
    from cluster.plan import ModelShape, plan_memory
    from core.messages import RolloutRequest

    cuda = torch.cuda.is_available()
    settings = recipe_settings()
    learner_cfg, rollout_cfg = learner_and_rollout_configs(settings, dry_run=not cuda)
    model_dir = workdir / "policy"
    started = time.perf_counter()
    params = save_policy(model_dir, sizes.shape, sizes.dtype)
    build_s = time.perf_counter() - started
    longest = sizes.prompt_tokens + sizes.response_tokens
    rank = ColocatedRank(
        str(model_dir), learner_cfg, sizes.dtype, seed=0, rank=0, world_size=1, master_addr="127.0.0.1",
        master_port=free_port(), rollout=rollout_cfg, max_model_len=longest,
    )  # fmt: skip
    result: dict[str, Any] = {"params": params, "build_s": round(build_s, 1)}
    try:
        started = time.perf_counter()
        rank.setup()
        result["setup_s"] = round(time.perf_counter() - started, 1)
        result["train"] = train_check(rank, sizes, learner_cfg, params, cuda)
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        plan = plan_memory(ModelShape.from_config(config), learner_cfg, sizes.dtype, longest)
        train = result["train"]
        train["plan_learner_bytes"] = plan.learner_total
        if cuda:
            train["peak_over_plan"] = round(train["peak_bytes"] / plan.learner_total, 3)
            train["within_15pct"] = abs(train["peak_over_plan"] - 1) <= 0.15
        result["handover"] = handover_check(rank, cuda)
        generator = torch.Generator().manual_seed(1)
        requests = [
            RolloutRequest(
                question_id=f"q{i}", step=0, seed=1000 * i, max_new_tokens=sizes.gen_new_tokens,
                num_samples=sizes.gen_samples,
                prompt_token_ids=tuple(torch.randint(3, 269, (sizes.gen_prompt_tokens,), generator=generator).tolist()),
            )
            for i in range(sizes.gen_prompts)
        ]  # fmt: skip
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        rollouts = rank.generate(requests)
        seconds = time.perf_counter() - started
        tokens = sum(len(c.token_ids) for r in rollouts for c in r.completions)
        result["generation"] = {
            "engine": rank.info()["engine"],
            "rows": sizes.gen_prompts * sizes.gen_samples,
            "prompt_tokens": sizes.gen_prompt_tokens,
            "new_tokens": sizes.gen_new_tokens,
            "generated_tokens": tokens,
            "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1),
            "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        }
    finally:
        rank.shutdown()
    return result


def train_check(rank: Any, sizes: CheckSizes, learner_cfg: Any, params: int, cuda: bool) -> dict[str, Any]:
    """Two train steps (the first warms up and allocates AdamW's state); the second's time, the peak of both."""
    batch = random_batch(sizes, torch.Generator().manual_seed(0))
    tokens = batch.num_samples * batch.input_ids.shape[1]
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        metrics = rank.train_step(batch, batch.num_response_tokens)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    device = torch.cuda.get_device_name() if cuda else "cpu"
    flops = peak_flops(device) if cuda else None
    tokens_per_s = tokens / seconds[1]
    return {
        "device": device,
        "samples": batch.num_samples,
        "sequence_tokens": int(batch.input_ids.shape[1]),
        "max_tokens_per_micro_batch": learner_cfg.max_tokens_per_micro_batch,
        "logits_chunk_tokens": learner_cfg.logits_chunk_tokens,
        "gradient_checkpointing": learner_cfg.gradient_checkpointing,
        "micro_batches": metrics["micro_batches"],
        "step_s": [round(s, 3) for s in seconds],
        "tokens_per_s": round(tokens_per_s, 1),
        "mfu_6pt": round(6 * params * tokens_per_s / flops, 4) if flops else None,
        "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "loss": metrics["loss"],
        "entropy": metrics["entropy"],
    }


def handover_check(rank: Any, cuda: bool) -> dict[str, Any]:
    """The in-process handover of the trained weights (version 2) and a check that the engine now holds every one of
    them, bit for bit."""
    started = time.perf_counter()
    version = rank.take_learner_weights(2)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    engine_state = rank.worker.engine._model.state_dict()
    checked = bytes_moved = 0
    with torch.no_grad():
        for name, full in rank.gathered_parameters():
            if not torch.equal(engine_state[name].to(full.device), full):
                raise RuntimeError(f"handover: the engine's {name} differs from the learner's")
            checked += 1
            bytes_moved += full.numel() * full.element_size()
    return {"version": version, "seconds": round(seconds, 3), "bytes": bytes_moved, "tensors_checked": checked}


def markdown(doc: dict[str, Any]) -> str:
    """The results as a Markdown page."""
    train, gen, hand = doc["train"], doc["generation"], doc["handover"]
    gb = 1e9
    peak = f"{train['peak_bytes'] / gb:.2f} GB" if train["peak_bytes"] else "n/a (CPU)"
    lines = [
        "# GPU check: the one-GPU recipe's learner step, handover and generation",
        "",
        f"Command: `{doc['command']}`. Machine: {doc['machine']}. Device: {train['device']}. torch "
        f"{doc['versions']['torch']}, transformers {doc['versions']['transformers']}. Wall time {doc['wall_s']:.0f} s.",
        "",
        f"Policy: {doc['params'] / 1e9:.3f}B parameters, random weights, {doc['dtype']}.",
        "",
        "| | |",
        "|---|---|",
        f"| train batch | {train['samples']} x {train['sequence_tokens']:,} tokens, "
        f"{train['micro_batches']:.0f} micro-batches of at most {train['max_tokens_per_micro_batch']:,} tokens |",
        f"| step seconds (warm-up, timed) | {train['step_s'][0]:.2f}, {train['step_s'][1]:.2f} |",
        f"| tokens/s | {train['tokens_per_s']:,.0f} |",
        f"| MFU (6 x params x tokens/s over the dense bf16 peak) | {train['mfu_6pt']} |",
        f"| peak CUDA memory of the learner's steps | {peak} |",
        f"| `mode=plan`'s learner total | {train['plan_learner_bytes'] / gb:.2f} GB |",
        f"| peak over plan (target: within 15%) | {train.get('peak_over_plan', 'n/a')} |",
        f"| handover (in-process, {hand['bytes'] / gb:.2f} GB) | {hand['seconds']:.3f} s |",
        f"| generation ({gen['engine']}): {gen['rows']} rows of {gen['prompt_tokens']} + {gen['new_tokens']} | "
        f"{gen['generated_tokens']:,} tokens in {gen['seconds']:.1f} s, {gen['tokens_per_s']:,.0f} tokens/s |",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the check and write gpu_check.json and .md under `--out`."""
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU (the suite's test)")
    parser.add_argument("--train-samples", type=int, default=8)
    # 128 rows of 1,024 + 512 tokens: a KV cache of 128 x 1,536 x 28 KB = 5.5 GB beside the learner's 21.3 GB.
    parser.add_argument("--gen-prompts", type=int, default=16)
    parser.add_argument("--gen-samples", type=int, default=8)
    parser.add_argument("--gen-prompt-tokens", type=int, default=1024)
    parser.add_argument("--gen-new-tokens", type=int, default=512)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device here: run it on a GPU, or with --dry-run")
    settings = recipe_settings()
    if args.dry_run:
        sizes = CheckSizes(TINY_SHAPE, "float32", 16, 48, 4, 2, 2, 8, 8)
    else:
        sizes = CheckSizes(
            RECIPE_SHAPE, settings["model"]["dtype"], settings["data"]["max_prompt_tokens"],
            settings["rollout"]["max_new_tokens"], args.train_samples, args.gen_prompts, args.gen_samples,
            args.gen_prompt_tokens, args.gen_new_tokens,
        )  # fmt: skip
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="e3-gpu-check-") as tmp:
        result = run(sizes, Path(tmp))
    doc = {
        "command": " ".join(["python -m bench.gpu_check", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine_line(),
        "recipe": RECIPE,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "dtype": sizes.dtype,
        "shape": asdict(sizes.shape),
        "wall_s": round(time.time() - started, 1),
        **result,
    }
    write_results(args.out, "gpu_check", doc, markdown(doc))
    return doc


if __name__ == "__main__":
    main()
