"""transformers `generate` as a rollout engine: the fallback where vLLM does not run (macOS, ARM laptops).

Sampling is done by a logits processor that draws each row's token from softmax(logits / T) with that row's
own `torch.Generator` (seeded `seeds[i] + j` for sample j of prompt i, as vLLM does) and lets `generate`'s
greedy step pick it. So prompts share batched `generate` calls, yet each sample depends only on its prompt,
seed, temperature and weights: the same request gives the same completions in any batch, on any worker (up to
floating-point rounding of batched matmuls; bit-for-bit on the same batch and machine). The log-prob of each
token is log_softmax(logits / T) of the raw logits, taken step by step (`TokenLogprobs`).

The checkpoint's own sampling defaults (top-k, top-p, repetition penalty...) are dropped: the engine samples
from exactly the tempered distribution whose log-probs it reports.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
)

from actors.engines.base import Engine, check_generate_args, check_weight_names
from core.messages import Completion

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class SeededSampler(LogitsProcessor):
    """Draws each row's next token from softmax(scores / temperature) with the row's generator.

    Returns scores that are 0 at the drawn token and -inf elsewhere, so greedy decoding emits the draw.
    """

    def __init__(self, temperature: float, generators: list[torch.Generator]) -> None:
        """One generator per batch row, in row order."""
        self.temperature = temperature
        self.generators = generators

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Scores whose argmax in each row is that row's sample."""
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        picks = torch.cat(
            [torch.multinomial(row, 1, generator=g) for row, g in zip(probs, self.generators, strict=True)]
        )
        chosen = torch.full_like(scores, float("-inf"))
        return chosen.scatter_(1, picks[:, None], 0.0)


class TokenLogprobs(LogitsProcessor):
    """Records each generated token's log-prob under softmax(logits / T) (T = 1 when greedy), one step at a time.

    It runs first, on the raw logits. A step's log-softmax is kept only until the next step shows which token was
    chosen (the last column of `input_ids`), then gathered: one [rows, V] float32 tensor at a time, where keeping
    every step's logits would hold rows x new tokens x V (1.9 TB for 512 responses of 6,144 tokens at V = 151,936).
    """

    def __init__(self, temperature: float, vocab_size: int) -> None:
        """For sampling at `temperature` (0: greedy) over the first `vocab_size` logits."""
        self.temperature = temperature if temperature > 0 else 1.0
        self.vocab_size = vocab_size
        self._steps: list[torch.Tensor] = []
        self._last: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Gather the previous step's choice, keep this step's log-softmax; the scores pass unchanged."""
        if self._last is not None:
            self._steps.append(self._last.gather(1, input_ids[:, -1:]).squeeze(1))
        self._last = torch.log_softmax(scores[:, : self.vocab_size].float() / self.temperature, dim=-1)
        return scores

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        """[rows, steps]: every step's log-prob, the last step's chosen token `last_tokens` [rows] included."""
        if self._last is None:
            raise RuntimeError("TokenLogprobs.finish: generate ran no step")
        self._steps.append(self._last.gather(1, last_tokens[:, None]).squeeze(1))
        self._last = None
        return torch.stack(self._steps, dim=1)


class HfEngine(Engine):
    """A transformers causal LM decoding batches of left-padded prompts with `generate`."""

    name = "hf"

    def __init__(
        self,
        model_path: str,
        dtype: str,
        max_model_len: int,
        max_batch_rows: int = 256,
        device: str | None = None,
    ) -> None:
        """Load the model and tokenizer from `model_path` (local files only).

        `max_batch_rows` bounds the samples decoded together (memory); it does not change the samples.
        `device` defaults to CUDA when present, else CPU. There is no engine-wide seed: samples depend on the
        per-request seeds alone.
        """
        if max_batch_rows < 1:
            raise ValueError(f"HfEngine: max_batch_rows={max_batch_rows} < 1")
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=_DTYPES[dtype], local_files_only=True)
        self._eos_ids = _eos_token_ids(self._tokenizer.eos_token_id, model.generation_config.eos_token_id)
        if not self._eos_ids:
            raise ValueError(f"model_path={model_path!r}: neither the tokenizer nor generation_config names an eos")
        pad_id = self._tokenizer.pad_token_id
        self._pad_id = int(pad_id) if pad_id is not None else min(self._eos_ids)
        model.generation_config = GenerationConfig(eos_token_id=sorted(self._eos_ids), pad_token_id=self._pad_id)
        self._model = model.to(self._device).eval()
        self._vocab_size = int(model.config.get_text_config().vocab_size)
        self._max_model_len = max_model_len
        self._max_batch_rows = max_batch_rows
        self._required_names, self._optional_names = _state_dict_names(self._model)

    @property
    def vocab_size(self) -> int:
        """The model config's vocab size."""
        return self._vocab_size

    @property
    def max_model_len(self) -> int:
        """Longest prompt + completion accepted (as given to the constructor)."""
        return self._max_model_len

    def generate(
        self,
        prompts: list[list[int]],
        num_samples: list[int],
        temperature: float,
        max_new_tokens: int,
        seeds: list[int],
    ) -> list[list[Completion]]:
        """Sample as `Engine.generate` promises, `max_batch_rows` samples per `generate` call."""
        check_generate_args(self, prompts, num_samples, temperature, max_new_tokens, seeds)
        rows = [
            (list(prompt), seed + j)
            for prompt, n, seed in zip(prompts, num_samples, seeds, strict=True)
            for j in range(n)
        ]
        flat: list[Completion] = []
        for start in range(0, len(rows), self._max_batch_rows):
            flat.extend(self._decode(rows[start : start + self._max_batch_rows], temperature, max_new_tokens))
        grouped, start = [], 0
        for n in num_samples:
            grouped.append(flat[start : start + n])
            start += n
        return grouped

    @torch.inference_mode()
    def _decode(self, rows: list[tuple[list[int], int]], temperature: float, max_new_tokens: int) -> list[Completion]:
        """One `generate` call over `rows` of (prompt, seed), left-padded to the longest prompt."""
        width = max(len(prompt) for prompt, _ in rows)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (prompt, _) in enumerate(rows):
            input_ids[r, width - len(prompt) :] = torch.tensor(prompt)
            attention_mask[r, width - len(prompt) :] = 1
        recorder = TokenLogprobs(temperature, self._vocab_size)
        processors = LogitsProcessorList([recorder])
        if temperature > 0:
            generators = [torch.Generator(self._device).manual_seed(seed) for _, seed in rows]
            processors.append(SeededSampler(temperature, generators))
        out = self._model.generate(
            input_ids=input_ids.to(self._device),
            attention_mask=attention_mask.to(self._device),
            logits_processor=processors,
            generation_config=GenerationConfig(
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=sorted(self._eos_ids),
                pad_token_id=self._pad_id,
                return_dict_in_generate=True,
            ),
        )
        tokens = out.sequences[:, width:].cpu()
        token_logprobs = recorder.finish(out.sequences[:, -1]).cpu()
        return [
            self._completion(tokens[r].tolist(), token_logprobs[r].tolist(), max_new_tokens) for r in range(len(rows))
        ]

    def _completion(self, tokens: list[int], logprobs: list[float], max_new_tokens: int) -> Completion:
        """Cut one row after its first end-of-sequence token (the padding `generate` adds comes after it)."""
        end = next((t + 1 for t, token in enumerate(tokens) if token in self._eos_ids), None)
        if end is None and len(tokens) != max_new_tokens:
            raise RuntimeError(f"generate stopped a row after {len(tokens)} of {max_new_tokens} tokens without eos")
        kept = tokens[:end] if end is not None else tokens
        return Completion(
            token_ids=tuple(kept),
            logprobs=tuple(logprobs[: len(kept)]),
            text=self._tokenizer.decode(kept, skip_special_tokens=True),
            finish_reason="stop" if end is not None else "length",
        )

    def load_weight_stream(self, names: Collection[str], weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy each (name, tensor) into the model's tensor of that name as it arrives; all weights are
        required; aliases of tied ones are optional."""
        check_weight_names(names, self._required_names, self._optional_names)
        targets = self._model.state_dict(keep_vars=True)
        with torch.no_grad():
            for name, tensor in weights:
                targets[name].copy_(tensor)

    def sleep(self) -> None:
        """On CUDA, move the weights to the host (the engine keeps no KV cache between calls); on CPU, nothing."""
        if self._device.type == "cuda":
            self._model.to("cpu")
            torch.cuda.empty_cache()

    def wake_up(self) -> None:
        """Move the weights back to the engine's device."""
        if self._device.type == "cuda":
            self._model.to(self._device)

    def close(self) -> None:
        """Drop the model and tokenizer."""
        self.__dict__.pop("_model", None)
        self.__dict__.pop("_tokenizer", None)


def _eos_token_ids(tokenizer_eos: int | None, generation_eos: int | list[int] | None) -> set[int]:
    """The tokens that end a completion: the tokenizer's eos and generation_config's (vLLM stops at both)."""
    ids = {tokenizer_eos} if tokenizer_eos is not None else set()
    if isinstance(generation_eos, int):
        ids.add(generation_eos)
    elif generation_eos is not None:
        ids.update(generation_eos)
    return {int(i) for i in ids}


def _state_dict_names(model: torch.nn.Module) -> tuple[set[str], set[str]]:
    """(required, optional) state-dict names: the first name of each tensor, and aliases of tied tensors."""
    required: set[str] = set()
    optional: set[str] = set()
    seen: set[int] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        (optional if id(tensor) in seen else required).add(name)
        seen.add(id(tensor))
    return required, optional
