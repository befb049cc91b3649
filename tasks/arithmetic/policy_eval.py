"""Sampling a policy on arithmetic questions with transformers, and its accuracy per difficulty level."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tasks.arithmetic.reward import is_correct


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    samples: int,
    temperature: float | None,
    max_new_tokens: int = 64,
    batch_size: int = 256,
) -> list[list[str]]:
    """``samples`` completions per question (greedy when ``temperature`` is None, else pure sampling at that
    temperature: no top-k or top-p), decoded without special tokens; batched with left padding."""
    tokenizer.padding_side = "left"
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in questions
    ]
    if temperature is None:
        sampling = {"do_sample": False}
    else:
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    per_batch = max(1, batch_size // samples)
    completions: list[list[str]] = []
    for start in range(0, len(prompts), per_batch):
        batch = tokenizer(prompts[start : start + per_batch], return_tensors="pt", padding=True)
        with torch.inference_mode():
            output = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                num_return_sequences=samples,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **sampling,
            )
        texts = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        completions.extend(texts[i : i + samples] for i in range(0, len(texts), samples))
    return completions


def accuracy_by_level(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    ground_truths: Sequence[str],
    levels: Sequence[int],
    samples: int,
    temperature: float | None,
) -> dict[int, float]:
    """Mean correctness (see :func:`tasks.arithmetic.reward.is_correct`) of ``samples`` completions per
    question, per level, levels in ascending order."""
    if not len(questions) == len(ground_truths) == len(levels):
        raise ValueError(
            f"questions, ground_truths and levels differ in length: "
            f"{len(questions)}, {len(ground_truths)}, {len(levels)}"
        )
    completions = generate(model, tokenizer, questions, samples, temperature)
    scores: dict[int, list[float]] = defaultdict(list)
    for texts, truth, level in zip(completions, ground_truths, levels, strict=True):
        scores[level].extend(float(is_correct(text, truth)) for text in texts)
    return {level: sum(scores[level]) / len(scores[level]) for level in sorted(scores)}
