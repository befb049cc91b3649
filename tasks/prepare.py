"""A run's inputs made ready before any actor starts: the task's files, the tokenizer, and each split's questions
with their prompt token ids, checked against the model's position range."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import ConfigError, DataConfig, RunConfig
from tasks.arithmetic.cache import BUILD_REPORT_FILE
from tasks.dataset import Question, filter_by_prompt_length, load_questions
from tasks.prompts import encode_prompts
from tasks.registry import TaskFiles, prepare_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """The questions of one split and the token ids of each one's prompt, in the same order."""

    questions: list[Question]
    prompt_token_ids: list[list[int]]

    def __post_init__(self) -> None:
        if len(self.questions) != len(self.prompt_token_ids):
            raise ValueError(f"Split: {len(self.questions)} questions but {len(self.prompt_token_ids)} prompts")

    def __len__(self) -> int:
        return len(self.questions)


@dataclass(frozen=True)
class RunInputs:
    """What `prepare_inputs` resolved: the task's files and the policy's tokenizer."""

    files: TaskFiles
    tokenizer: Any

    @property
    def pad_token_id(self) -> int:
        """The tokenizer's padding token, or its end-of-sequence token when it has none."""
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    def split(self, path: Path, data: DataConfig, limit: int = 0) -> Split:
        """The questions of `path` and their prompts, as `load_split` reads them with this tokenizer."""
        return load_split(path, self.tokenizer, data, limit=limit)


def prepare_inputs(cfg: RunConfig) -> RunInputs:
    """Resolve (and for the embedded default, build) the task's files, load the policy's tokenizer, and refuse
    prompt and response lengths that the model cannot hold (ConfigError). Nothing is started."""
    from transformers import AutoTokenizer

    files = prepare_task(cfg)
    check_fits_model(cfg, files.model)
    warn_on_short_responses(cfg, files.model)
    return RunInputs(files=files, tokenizer=AutoTokenizer.from_pretrained(files.model))


def load_split(path: Path, tokenizer: Any, data: DataConfig, limit: int = 0) -> Split:
    """Questions of one file and their prompt token ids, over-long prompts filtered or rejected as
    `data.overlong_prompts` says (a warning names the file and the count), then the first `limit` of them
    (0: all)."""
    questions = load_questions(path, empty_answer="drop")
    prompts = encode_prompts(tokenizer, questions)
    kept, dropped = filter_by_prompt_length(
        questions, [len(p) for p in prompts], data.max_prompt_tokens, data.overlong_prompts
    )
    if dropped:
        log.warning(
            "%s: %d prompts longer than data.max_prompt_tokens=%d dropped", path, dropped, data.max_prompt_tokens
        )
        keep = {q.id for q in kept}
        prompts = [p for q, p in zip(questions, prompts, strict=True) if q.id in keep]
    if limit:
        kept, prompts = kept[:limit], prompts[:limit]
    return Split(questions=kept, prompt_token_ids=prompts)


def warn_on_short_responses(cfg: RunConfig, model_path: Path) -> None:
    """Warn, naming `rollout.max_new_tokens`, when an embedded base policy's build report says its warm-start
    responses ran longer than that (its answers would be cut off); say nothing for any other model, or for a
    report that cannot be read."""
    try:
        longest = json.loads((model_path / BUILD_REPORT_FILE).read_text()).get("longest_response_tokens")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(longest, int) and cfg.rollout.max_new_tokens < longest:
        log.warning(
            "rollout.max_new_tokens=%d is shorter than the longest warm-start response of %s (%d tokens): many "
            "answers will be cut off; set rollout.max_new_tokens=%d or more (and data.max_prompt_tokens low enough "
            "that both fit the model's positions)",
            cfg.rollout.max_new_tokens,
            model_path,
            longest,
            longest,
        )


def check_fits_model(cfg: RunConfig, model_path: Path) -> None:
    """Refuse (ConfigError) prompt plus response lengths that the model's position range cannot hold."""
    from transformers import AutoConfig

    limit = getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)
    wanted = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    if limit is not None and wanted > limit:
        raise ConfigError(
            f"data.max_prompt_tokens={cfg.data.max_prompt_tokens} + rollout.max_new_tokens="
            f"{cfg.rollout.max_new_tokens} = {wanted} exceeds the model's max_position_embeddings={limit} "
            f"({model_path})"
        )
