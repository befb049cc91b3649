"""The learner at the paper's scale: memory of the logits path, tokens/s and padding, before and after.

python -m bench.learner                      # writes bench/results/learner.md and learner.json
python -m bench.learner --quick              # a small check of the whole benchmark (the test uses it)

"Before" is `actors/learner.py` as of `--before` (default: the last commit before the chunked head), loaded from
git into this process; "after" is the working tree's. Each measurement runs in a fresh subprocess, so that peak
resident memory (`ru_maxrss`) belongs to that one step:
(a) peak resident memory added by one training step, as a multiple of one float32 logits tensor
    `[micro_batch, L, V]`, on a 2-layer Qwen2 with V = 151,936 (the logits dominate, as in the paper's runs);
(b) learner tokens/s (response tokens trained per second) on demo-shaped batches with the embedded policy,
    median of `--repeats` steps after a warm-up;
(c) the fraction of padded positions per micro-batch on those batches (the old split into
    ceil(n / micro_batch_size) length-sorted pieces against `pack_micro_batches` under the token budget).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.machine import machine_line
from bench.random_policy import PolicyShape, save_random_policy

RESULTS = Path(__file__).resolve().parent / "results"
BEFORE_COMMIT = "64cadea"
"""The last commit whose learner materialised full logits and ran a separate no-grad pass."""
PAPER_VOCAB = 151_936


def load_learner_module(commit: str | None):
    """`actors.learner` of the working tree (commit None) or of `commit`, loaded from git as its own module."""
    if commit is None:
        import actors.learner

        return actors.learner
    source = subprocess.run(
        ["git", "show", f"{commit}:actors/learner.py"], check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / f"learner_{commit}.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(f"learner_{commit}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A free TCP port on loopback for the single-rank process group."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wide_vocab_policy(folder: Path, vocab: int, hidden: int) -> Path:
    """A 2-layer Qwen2 whose output head dominates (V = `vocab`), saved as a model directory."""
    shape = PolicyShape(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_layers=2, num_heads=4,
        num_kv_heads=2, max_positions=4096, tie_embeddings=False,
    )  # fmt: skip
    save_random_policy(folder, shape)
    return folder


def synthetic_batch(rows: int, prompt: tuple[int, int], response: tuple[int, int], vocab: int, seed: int):
    """A right-padded TrainBatch of `rows` samples with prompt and response lengths drawn uniformly from the given
    (low, high) ranges, random tokens, advantages and temperatures near 1."""
    from core.messages import TrainBatch

    generator = torch.Generator().manual_seed(seed)
    prompt_len = torch.randint(prompt[0], prompt[1] + 1, (rows,), generator=generator)
    response_len = torch.randint(response[0], response[1] + 1, (rows,), generator=generator)
    width = int((prompt_len + response_len).max())
    input_ids = torch.randint(vocab, (rows, width), generator=generator)
    positions = torch.arange(width)[None, :]
    attention = (positions < (prompt_len + response_len)[:, None]).long()
    response_mask = ((positions >= prompt_len[:, None]) & (attention > 0)).float()
    return TrainBatch(
        input_ids=input_ids * attention,
        attention_mask=attention,
        response_mask=response_mask,
        advantages=torch.randn(rows, generator=generator),
        temperatures=1.0 + 0.1 * torch.rand(rows, generator=generator),
    )


def _child(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    from core.config import LearnerConfig

    module = load_learner_module(None if args.commit == "working-tree" else args.commit)
    fields = {"micro_batch_size": args.micro_batch_size, "torch_threads": 1, "lr": 1e-5}
    known = set(LearnerConfig.__dataclass_fields__)
    fields.update({k: v for k, v in json.loads(args.extra).items() if k in known})
    learner = module.Learner(args.model, LearnerConfig(**fields), "float32", 0, 0, 1, "127.0.0.1", free_port())
    learner.setup()
    batch = synthetic_batch(args.rows, tuple(args.prompt), tuple(args.response), args.vocab, seed=1)
    result: dict[str, float] = {}
    if args.measure == "memory":
        learner.train_step(batch, batch.num_response_tokens)  # warm-up: AdamW allocates its state once
        result.update(_peak_added_by(lambda: learner.train_step(batch, batch.num_response_tokens)))
    else:
        times = []
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            learner.train_step(batch, batch.num_response_tokens)
            times.append(time.perf_counter() - start)
        result["step_s"] = statistics.median(times[1:])
        result["response_tokens"] = float(batch.num_response_tokens)
    learner.shutdown()
    print("RESULT " + json.dumps(result))


def _status_kib(field: str) -> float:
    """A `VmRSS`/`VmHWM`-style field of /proc/self/status, in KiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return float(line.split()[1])


def _peak_added_by(step) -> dict[str, float]:
    """Run `step()` and return the peak resident memory it added above the resident memory before it.

    The kernel's high-water mark is reset first (`5 > /proc/self/clear_refs`), so that the peak is this step's,
    not the set-up's or the warm-up's."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
        clear.write("5")
    resident = _status_kib("VmRSS")
    step()
    peak = _status_kib("VmHWM")
    return {"peak_added_bytes": (peak - resident) * 1024.0, "resident_before_step_bytes": resident * 1024.0}


def measure(commit: str, measure_kind: str, model: Path, rows: int, prompt, response, vocab: int, **extra) -> dict:
    """Run `_child` in a fresh interpreter and return its result."""
    command = [
        sys.executable, "-m", "bench.learner", "--child", "--commit", commit, "--measure", measure_kind,
        "--model", str(model), "--rows", str(rows), "--vocab", str(vocab),
        "--prompt", *map(str, prompt), "--response", *map(str, response),
        "--micro-batch-size", str(extra.pop("micro_batch_size")), "--repeats", str(extra.pop("repeats", 3)),
        "--extra", json.dumps(extra),
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        raise RuntimeError(f"bench.learner: the {measure_kind} measurement of {commit} failed:\n{out.stderr[-3000:]}")
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def padding_fraction(batch, groups: list[list[int]]) -> float:
    """Padded positions over all positions of the micro-batches `groups` (rows x longest sample each)."""
    lengths = batch.attention_mask.sum(dim=1).tolist()
    total = sum(len(g) * max(lengths[i] for i in g) for g in groups)
    real = sum(lengths[i] for g in groups for i in g)
    return 1.0 - real / total


def old_split(batch, micro_batch_size: int) -> list[list[int]]:
    """The micro-batches of the learner before: length-sorted, split into ceil(n / micro_batch_size) pieces."""
    count = -(-batch.num_samples // micro_batch_size)
    order = torch.argsort(batch.attention_mask.sum(dim=1), stable=True)
    return [piece.tolist() for piece in torch.tensor_split(order, count) if len(piece)]


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and write learner.md and learner.json under `--out`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a check that the benchmark runs")
    parser.add_argument("--before", default=BEFORE_COMMIT, help="commit of the learner measured as 'before'")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--commit", default="working-tree", help=argparse.SUPPRESS)
    parser.add_argument("--measure", default="memory", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, default=PAPER_VOCAB, help=argparse.SUPPRESS)
    parser.add_argument("--prompt", type=int, nargs=2, default=(64, 64), help=argparse.SUPPRESS)
    parser.add_argument("--response", type=int, nargs=2, default=(448, 448), help=argparse.SUPPRESS)
    parser.add_argument("--micro-batch-size", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--extra", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return {}

    from core.batch import pack_micro_batches
    from core.config import LearnerConfig, RunConfig
    from tasks.registry import prepare_task

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-learner-"))
    # (a) memory: 4 samples of 64 prompt + 448 response tokens (L = 512) with V = 151,936; one float32 logits
    # tensor [4, 512, V] is 1.24 GB (--quick: L = 128, 0.31 GB).
    length = 128 if args.quick else 512
    rows, prompt, response = 4, (64, 64), (length - 64, length - 64)
    wide = wide_vocab_policy(work / "wide", PAPER_VOCAB, hidden=64)
    logits_bytes = rows * length * PAPER_VOCAB * 4
    chunk = 256  # 1/8 of the micro-batch's 2,048 positions, as 4,096 is of the paper's 4 x 8,192
    memory = {}
    for label, commit in (("before", args.before), ("after", "working-tree")):
        memory[label] = measure(
            commit, "memory", wide, rows, prompt, response, PAPER_VOCAB, micro_batch_size=rows,
            logits_chunk_tokens=chunk, repeats=0,
        )  # fmt: skip
    # (b, c) the demo's shape: 32 questions x 8 samples, prompts of 30-60 tokens, responses of 20-120
    demo_model = prepare_task(RunConfig()).model
    from transformers import AutoConfig

    demo_vocab = AutoConfig.from_pretrained(demo_model).vocab_size
    demo_rows = 64 if args.quick else 256
    demo = {"rows": demo_rows, "prompt": (30, 60), "response": (20, 120), "vocab": demo_vocab}
    default = LearnerConfig()
    budget = 8192
    speed = {}
    for label, commit, extra in (
        ("before", args.before, {}),
        ("after", "working-tree", {"max_tokens_per_micro_batch": budget}),
    ):
        speed[label] = measure(
            commit, "speed", demo_model, demo_rows, demo["prompt"], demo["response"], demo_vocab,
            micro_batch_size=default.micro_batch_size, repeats=1 if args.quick else 5, **extra,
        )  # fmt: skip
    batch = synthetic_batch(demo_rows, demo["prompt"], demo["response"], demo_vocab, seed=1)
    lengths = batch.attention_mask.sum(dim=1).tolist()
    padding_before = padding_fraction(batch, old_split(batch, default.micro_batch_size))
    padding_after = padding_fraction(batch, pack_micro_batches(lengths, budget, default.micro_batch_size))

    results = {
        "peak_memory_ratio_before": memory["before"]["peak_added_bytes"] / logits_bytes,
        "peak_memory_ratio_after": memory["after"]["peak_added_bytes"] / logits_bytes,
        "tokens_per_s_before": speed["before"]["response_tokens"] / speed["before"]["step_s"],
        "tokens_per_s_after": speed["after"]["response_tokens"] / speed["after"]["step_s"],
        "padding_fraction_before": padding_before,
        "padding_fraction_after": padding_after,
        "logits_tensor_bytes": logits_bytes,
        "memory_shape": {"rows": rows, "length": length, "vocab": PAPER_VOCAB, "hidden": 64, "chunk": chunk},
        "demo_shape": demo,
        "max_tokens_per_micro_batch": budget,
        "before_commit": args.before,
        "raw": {"memory": memory, "speed": speed},
        "machine": machine_line(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m bench.learner" + (" --quick" if args.quick else ""),
        "wall_s": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learner.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    (args.out / "learner.md").write_text(markdown(results), encoding="utf-8")
    print(markdown(results))
    return results


def markdown(r: dict) -> str:
    """The results as the Markdown page committed in bench/results/learner.md."""
    m, d = r["memory_shape"], r["demo_shape"]
    return "\n".join(
        [
            "# The learner's logits path: memory, tokens/s and padding",
            "",
            f"Command: `{r['command']}` on {r['date']}; {r['machine']}; float32, one rank (gloo), 1 torch thread.",
            f"Before: `actors/learner.py` at {r['before_commit']} (full float32 logits, a separate no-grad pass,",
            "micro-batches by rows); after: the working tree (response tokens only, chunked head recomputed in",
            "backward, one forward pass, micro-batches by tokens).",
            "",
            "| | before | after | target |",
            "|---|---:|---:|---|",
            f"| peak memory added by one step / one float32 logits tensor | {r['peak_memory_ratio_before']:.2f} "
            f"| {r['peak_memory_ratio_after']:.2f} | <= 0.5 |",
            f"| learner tokens/s (response tokens trained per second) | {r['tokens_per_s_before']:,.0f} "
            f"| {r['tokens_per_s_after']:,.0f} | >= 1.3x before |",
            f"| padded positions per micro-batch | {r['padding_fraction_before']:.1%} "
            f"| {r['padding_fraction_after']:.1%} | |",
            "",
            f"Memory: a 2-layer Qwen2 (hidden {m['hidden']}) with V = {m['vocab']:,}, {m['rows']} samples of "
            f"{m['length']} tokens; one float32 logits tensor [{m['rows']}, {m['length']}, V] is "
            f"{r['logits_tensor_bytes'] / 1e9:.2f} GB; `logits_chunk_tokens` = {m['chunk']}. Peak resident memory "
            "(VmHWM, reset before the step) minus resident memory before it, second step of a fresh process "
            "(the first allocates AdamW's state).",
            f"Speed and padding: the embedded policy (V = {d['vocab']}), {d['rows']} samples with prompts of "
            f"{d['prompt'][0]}-{d['prompt'][1]} and responses of {d['response'][0]}-{d['response'][1]} tokens "
            "(the demo's shape: 32 questions x 8 samples), micro_batch_size 64, after: "
            f"max_tokens_per_micro_batch = {r['max_tokens_per_micro_batch']}; median step time over repeats after a "
            "warm-up. The ratio is the meaningful number on a shared machine.",
            "",
            f"Tokens/s after / before: {r['tokens_per_s_after'] / r['tokens_per_s_before']:.2f}x. "
            f"Wall time of the benchmark: {r['wall_s']:.0f} s.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
