"""Supervised warm-start of the base policy on worked solutions (CPU, torch).

Each example is a chat prompt (the question through ``<|im_start|>assistant\\n``) followed by the worked
solution and ``<|im_end|>``; the loss is the mean cross-entropy over the response tokens only. Every batch
mixes levels with fixed weights (batches of a single level learned far slower). A ``stop`` callback, called
every few steps, can end the warm-start early.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tasks.arithmetic.problems import Problem

IGNORE_INDEX = -100


@dataclass(frozen=True)
class SftExample:
    """One tokenized example: ``prompt_ids`` then ``response_ids`` (ending with eos)."""

    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]


@dataclass(frozen=True)
class SftSchedule:
    """How the warm-start runs."""

    steps: int
    """Most optimizer steps; the learning-rate schedule spans them."""
    batch_size: int
    """Examples per step."""
    lr: float
    """Peak AdamW learning rate."""
    warmup_steps: int
    """Steps of linear learning-rate warm-up."""
    weight_decay: float
    """AdamW weight decay."""
    level_weights: dict[int, float]
    """Relative share of each level's examples in a batch."""


def prompt_ids(tokenizer: PreTrainedTokenizerBase, question: str) -> list[int]:
    """The token ids of the chat prompt for ``question``, ending with the assistant header."""
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_dict=True
    )
    return list(encoded["input_ids"])


def tokenize_problem(tokenizer: PreTrainedTokenizerBase, problem: Problem) -> SftExample:
    """The SFT example of ``problem``: its chat prompt and its worked solution followed by eos."""
    response = tokenizer(problem.worked_solution(), add_special_tokens=False)["input_ids"]
    return SftExample(tuple(prompt_ids(tokenizer, problem.question)), (*response, tokenizer.eos_token_id))


def collate(examples: Sequence[SftExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (prompt and padding set to -100)."""
    length = max(len(e.prompt_ids) + len(e.response_ids) for e in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, e in enumerate(examples):
        ids = e.prompt_ids + e.response_ids
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, len(e.prompt_ids) : len(ids)] = torch.tensor(e.response_ids)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def lr_factor(step: int, schedule: SftSchedule) -> float:
    """Linear warm-up to 1, then cosine decay to 0.1 at the last step."""
    if step < schedule.warmup_steps:
        return (step + 1) / schedule.warmup_steps
    progress = (step - schedule.warmup_steps) / max(1, schedule.steps - schedule.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train(
    model: PreTrainedModel,
    pools: dict[int, list[SftExample]],
    schedule: SftSchedule,
    pad_id: int,
    generator: torch.Generator,
    stop: Callable[[int], bool] | None = None,
    stop_every: int = 50,
    log_every: int = 50,
) -> list[float]:
    """Run the warm-start in place on ``model``, drawing examples from the per-level ``pools`` with
    ``generator``; returns the loss of every step run.

    Every ``stop_every`` steps, ``stop(steps_done)`` (if given) may end the warm-start early; it is called
    with the model in eval mode.
    """
    levels = sorted(schedule.level_weights)
    missing = [level for level in levels if not pools.get(level)]
    if missing:
        raise ValueError(f"no SFT examples for levels {missing} (pools have {sorted(pools)})")
    weights = torch.tensor([schedule.level_weights[level] for level in levels], dtype=torch.float64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, schedule))
    model.train()
    losses = []
    start = time.perf_counter()
    for step in range(schedule.steps):
        picks = torch.multinomial(weights, schedule.batch_size, replacement=True, generator=generator)
        batch = []
        for index in picks.tolist():
            pool = pools[levels[index]]
            batch.append(pool[int(torch.randint(len(pool), (1,), generator=generator))])
        loss = model(**collate(batch, pad_id)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        done = step + 1
        if log_every and done % log_every == 0:
            elapsed = time.perf_counter() - start
            print(f"sft step {done}/{schedule.steps} loss {loss.item():.4f} ({elapsed:.1f} s)", flush=True)
        if stop is not None and done % stop_every == 0 and done < schedule.steps:
            model.eval()
            if stop(done):
                break
            model.train()
    model.eval()
    return losses
