"""Rollout engines behind one interface (`Engine`): vLLM in-process, or transformers `generate` as a fallback.

`create_engine` picks one from `RolloutConfig.engine`; engine modules import vLLM lazily, so this package
imports on machines without it.
"""

from __future__ import annotations

import logging

from actors.engines.base import Engine
from actors.engines.vllm_engine import vllm_import_error
from core.config import ENGINES, RolloutConfig

logger = logging.getLogger(__name__)

__all__ = ["Engine", "create_engine", "resolve_engine_name"]


def resolve_engine_name(requested: str, cpu_kv_cache_gib: int = 1) -> str:
    """`vllm` or `hf`: `requested` itself, or for `auto` vllm when it imports here, else hf and a warning."""
    if requested not in ENGINES:
        raise ValueError(f"rollout.engine={requested!r}: expected one of {', '.join(ENGINES)}")
    if requested != "auto":
        return requested
    error = vllm_import_error(cpu_kv_cache_gib)
    if error is not None:
        logger.warning("rollout.engine=auto: vLLM does not import (%s); using transformers generate", error)
        return "hf"
    return "vllm"


def create_engine(
    config: RolloutConfig, model_path: str, dtype: str, seed: int, max_model_len: int, sleep_mode: bool = False
) -> Engine:
    """Build the engine `config.engine` names (resolving `auto`) on the model at `model_path`; with `sleep_mode`,
    one that `Engine.sleep` can free (vLLM's sleep mode, on GPU)."""
    name = resolve_engine_name(config.engine, config.cpu_kv_cache_gib)
    if name == "vllm":
        from actors.engines.vllm_engine import VllmEngine

        return VllmEngine(
            model_path,
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            gpu_memory_utilization=config.gpu_memory_utilization,
            cpu_kv_cache_gib=config.cpu_kv_cache_gib,
            sleep_mode=sleep_mode,
        )
    from actors.engines.hf_engine import HfEngine

    return HfEngine(model_path, dtype=dtype, max_model_len=max_model_len)
