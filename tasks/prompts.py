"""Prompts as token ids: each question's chat rendered with the policy's own chat template."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tasks.dataset import Question


def encode_prompts(tokenizer: Any, questions: Sequence[Question]) -> list[list[int]]:
    """Token ids of each question's prompt, rendered with `tokenizer`'s chat template plus the generation prompt.

    The template adds any special tokens the model expects, so the text is tokenized without adding more.
    """
    texts = [tokenizer.apply_chat_template(q.chat(), tokenize=False, add_generation_prompt=True) for q in questions]
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
