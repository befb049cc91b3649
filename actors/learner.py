"""One rank of the FSDP2 policy learner: GRPO updates on its shard of a step's batch (E3_SPEC §3, §4).

`Learner` is a plain class; `cluster/learner_group.py` runs `num_ranks` of them as Ray actors, and a test can
run one in-process. Every rank holds a shard of the policy (`fully_shard` on each decoder layer, then the
root), so every method that touches the model is a collective: all ranks must call it, in the same order.

A training step on a rank:
1. measure, without gradient, over micro-batches: each sample's logits divided by the temperature that
   sampled it, the old log-probs of its response tokens, and the tempered entropy summed over them;
2. compute the clipped policy loss with grad (`core.grpo.policy_loss`, normalised by the response-token count
   of the *global* batch), accumulating gradients over micro-batches; FSDP2's gradient reduction is set to a
   plain sum over ranks (not its default mean), so the summed rank losses are exactly the global token mean;
3. clip the global gradient norm, take one AdamW step, and reduce the metrics over ranks, so that every rank
   returns the same global metrics.

Every rank must run the same number of forward and backward passes (FSDP2 gathers and reduces parameters
inside them), so ranks agree on the micro-batch count first; a rank with fewer samples pads with a sample
whose response mask is zero (it adds nothing to the loss, the gradient or the metrics).

Checkpoints (`save`/`load`) are full, unsharded state dicts written by rank 0: the policy as
`model.safetensors` (float32 master weights, Hugging Face names) and the AdamW state as `optimizer.pt`, read
back with `torch.load(weights_only=True)`. No pickled code is ever loaded, and a checkpoint can be resumed on
any number of ranks. (DCP's sharded format scales better, but its metadata is a pickle; the models this
project trains fit comfortably in one host's memory.)
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import socket
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM

from core.config import DTYPES, LearnerConfig
from core.grpo import entropy_from_logits, policy_loss, token_logprobs
from core.messages import TrainBatch

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
TIED_HEAD, TIED_EMBEDDING = "lm_head.weight", "model.embed_tokens.weight"
LOOPBACK_ADDRESSES = ("127.0.0.1", "localhost", "::1")
# Metrics summed over micro-batches and ranks (policy_loss divides its metrics by the global token count).
_ADDITIVE_METRICS = ("loss", "clip_frac", "dual_clip_frac", "approx_kl")
_COUNTERS = ("entropy_sum", "tokens", "mismatch_sum", "mismatch_tokens")


@dataclasses.dataclass
class _Measured:
    """What the no-grad pass learns about one micro-batch: old log-probs [n, L-1] and its counters."""

    batch: TrainBatch
    old_logprobs: torch.Tensor
    counters: dict[str, float]


def copy_model_files(model_dir: Path, folder: Path) -> None:
    """Copy a model directory's config, generation config and tokenizer files (not its weights) into `folder`."""
    for source in model_dir.iterdir():
        if source.is_file() and not source.name.endswith((".safetensors", ".bin", ".pt", ".index.json")):
            shutil.copy2(source, folder / source.name)


class Learner:
    """One FSDP2 data-parallel rank of the policy learner (gloo on CPU, NCCL on CUDA).

    Construction only records the arguments; `setup()` joins the process group and builds the sharded policy
    and its optimizer. `dtype` is the dtype the policy computes in and is published in (`float32` or
    `bfloat16`); the master weights and the optimizer state stay in float32 either way.
    """

    def __init__(
        self,
        model_path: str,
        config: LearnerConfig,
        dtype: str,
        seed: int,
        rank: int,
        world_size: int,
        master_addr: str,
        master_port: int,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"Learner: dtype={dtype!r}, expected one of {DTYPES}")
        if not 0 <= rank < world_size:
            raise ValueError(f"Learner: rank={rank} is not in [0, world_size={world_size})")
        if not 0 < master_port < 65536:
            raise ValueError(f"Learner: master_port={master_port} is not a TCP port")
        self.model_path = model_path
        self.config = config
        self.dtype = getattr(torch, dtype)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.master_addr = master_addr
        self.master_port = master_port
        self.device = torch.device("cpu")
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    # ----------------------------------------------------------------------------------------------- set-up

    def setup(self) -> None:
        """Join the process group, load the policy from `model_path`, shard it with FSDP2 and build AdamW.

        Collective: every rank calls it. Seeds torch with `seed` and limits torch to `config.torch_threads`.
        """
        os.environ.update(
            MASTER_ADDR=self.master_addr,
            MASTER_PORT=str(self.master_port),
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
        )
        if self.master_addr in LOOPBACK_ADDRESSES:
            # gloo otherwise listens on whatever address the host name resolves to.
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        torch.set_num_threads(self.config.torch_threads)
        torch.manual_seed(self.seed)
        use_cuda = torch.cuda.is_available()
        if use_cuda:
            self.device = torch.device("cuda", self.rank % torch.cuda.device_count())
            torch.cuda.set_device(self.device)
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            store=self._rendezvous_store(),
            rank=self.rank,
            world_size=self.world_size,
        )
        mesh = init_device_mesh(self.device.type, (self.world_size,))

        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32)
        model.config.use_cache = False
        if self.config.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        model.to(self.device)
        mixed_precision = MixedPrecisionPolicy(param_dtype=self.dtype, reduce_dtype=torch.float32)
        for layer in _decoder_layers(model):
            fully_shard(layer, mesh=mesh, mp_policy=mixed_precision)
        fully_shard(model, mesh=mesh, mp_policy=mixed_precision)
        for module in model.modules():
            if isinstance(module, FSDPModule):
                # Sum gradients over ranks: each rank's loss is already its share of the global token mean.
                module.set_force_sum_reduction_for_comms(True)
                module.set_gradient_divide_factor(1.0)
        model.train()
        self.model = model
        self.optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=self.config.lr,
            betas=tuple(self.config.betas),
            weight_decay=self.config.weight_decay,
        )

    def _rendezvous_store(self) -> dist.TCPStore:
        """The process group's key-value store, served by rank 0 at `master_addr:master_port`.

        Rank 0 opens the listening socket itself, on `master_addr` only: left to itself, TCPStore would listen
        on every interface of the host.
        """
        if self.rank != 0:
            return dist.TCPStore(self.master_addr, self.master_port, self.world_size, is_master=False)
        family = socket.AF_INET6 if ":" in self.master_addr else socket.AF_INET
        listener = socket.create_server((self.master_addr, self.master_port), family=family)
        return dist.TCPStore(
            self.master_addr,
            self.master_port,
            self.world_size,
            is_master=True,
            master_listen_fd=listener.detach(),  # the store owns the socket from now on
        )

    def shutdown(self) -> None:
        """Leave the process group (collective); the learner cannot be used afterwards."""
        if dist.is_initialized():
            dist.destroy_process_group()
        self.model = None
        self.optimizer = None

    # -------------------------------------------------------------------------------------------- training

    def train_step(self, shard: TrainBatch, global_response_tokens: int) -> dict[str, float]:
        """Take one optimizer step on this rank's `shard` of a batch with `global_response_tokens` in all.

        Collective: every rank calls it with its own shard and the same `global_response_tokens`. Returns
        global metrics, identical on every rank:
        - `entropy`: token mean, in nats, of the tempered policy before the update;
        - `loss`, `clip_frac`, `dual_clip_frac`, `approx_kl`: global token means;
        - `grad_norm`: before clipping; `grad_skipped`: 1 when it was not finite and no step was taken;
        - `tokens`: response tokens of the global batch;
        - `logprob_mismatch`: mean |learner - sampler| log-prob per token, if shards carry `sampler_logprobs`.
        """
        model, optimizer = self._require_setup()
        if global_response_tokens < 1:
            raise ValueError(f"train_step: global_response_tokens={global_response_tokens}, expected >= 1")
        if bool(shard.response_mask[:, 0].any()):
            raise ValueError("train_step: response_mask[:, 0] is set, but a response token needs a prompt before it")

        micro_batches = self._micro_batches(shard)
        with torch.no_grad():
            measured = [self._measure(micro) for micro in micro_batches]

        optimizer.zero_grad(set_to_none=True)
        totals = dict.fromkeys(_ADDITIVE_METRICS + _COUNTERS, 0.0)
        for item in measured:
            logprobs = self._logprobs_and_logits(item.batch)[0]
            loss, metrics = policy_loss(
                logprobs,
                item.old_logprobs,
                item.batch.advantages.to(self.device),
                item.batch.response_mask[:, 1:].to(self.device),
                normalizer=float(global_response_tokens),
                clip_low=self.config.clip_low,
                clip_high=self.config.clip_high,
                dual_clip=self.config.dual_clip,
            )
            loss.backward()
            totals["loss"] += loss.item()
            for name in _ADDITIVE_METRICS[1:]:
                totals[name] += metrics[name]
            for name in _COUNTERS:
                totals[name] += item.counters[name]

        grad_norm = _as_float(torch.nn.utils.clip_grad_norm_(model.parameters(), self.config.grad_clip))
        skipped = not math.isfinite(grad_norm)
        if not skipped:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return self._global_metrics(totals, grad_norm, skipped, with_mismatch=shard.sampler_logprobs is not None)

    def _micro_batches(self, shard: TrainBatch) -> list[TrainBatch]:
        """Split `shard` into as many micro-batches as the busiest rank needs, similar lengths together.

        Ranks agree on the count with an all-reduce (max). A micro-batch left without rows is the shard's
        first row with its response mask cleared: it runs the collectives but contributes nothing.
        """
        count = torch.tensor([math.ceil(shard.num_samples / self.config.micro_batch_size)], device=self.device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        order = torch.argsort(shard.attention_mask.sum(dim=1), stable=True)
        micro_batches = []
        for rows in torch.tensor_split(order, int(count.item())):
            if len(rows) > 0:
                micro_batches.append(shard.select(rows))
            else:
                first = shard.select([0])
                micro_batches.append(dataclasses.replace(first, response_mask=torch.zeros_like(first.response_mask)))
        return micro_batches

    def _logprobs_and_logits(self, micro: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs [n, L-1] of tokens 1..L-1 and the tempered float32 logits [n, L-1, V] that predict them.

        Row i's logits are divided by `micro.temperatures[i]`, the temperature that sampled it.
        """
        model = self._require_setup()[0]
        input_ids = micro.input_ids.to(self.device)
        output = model(input_ids=input_ids, attention_mask=micro.attention_mask.to(self.device), use_cache=False)
        temperatures = micro.temperatures.to(self.device, torch.float32)
        logits = output.logits[:, :-1].float() / temperatures[:, None, None]
        return token_logprobs(logits, input_ids[:, 1:]), logits

    def _measure(self, micro: TrainBatch) -> _Measured:
        """The no-grad pass over one micro-batch: old log-probs, tempered entropy and log-prob mismatch."""
        logprobs, logits = self._logprobs_and_logits(micro)
        mask = micro.response_mask[:, 1:].to(self.device, torch.float32)
        counters = {
            "entropy_sum": float((entropy_from_logits(logits) * mask).sum().item()),
            "tokens": float(mask.sum().item()),
            "mismatch_sum": 0.0,
            "mismatch_tokens": 0.0,
        }
        if micro.sampler_logprobs is not None:
            sampler = micro.sampler_logprobs[:, 1:].to(self.device, torch.float32)
            difference = torch.where(mask.bool(), (logprobs - sampler).abs(), torch.zeros_like(logprobs))
            counters["mismatch_sum"] = float(difference.sum().item())
            counters["mismatch_tokens"] = counters["tokens"]
        return _Measured(batch=micro, old_logprobs=logprobs, counters=counters)

    def _global_metrics(
        self, totals: dict[str, float], grad_norm: float, skipped: bool, with_mismatch: bool
    ) -> dict[str, float]:
        """Sum this rank's `totals` over all ranks and turn the sums into the metrics of `train_step`."""
        names = list(_ADDITIVE_METRICS + _COUNTERS)
        summed = torch.tensor([totals[name] for name in names], dtype=torch.float64, device=self.device)
        dist.all_reduce(summed)
        total = dict(zip(names, summed.tolist(), strict=True))
        tokens = total["tokens"]
        metrics = {name: total[name] for name in _ADDITIVE_METRICS}
        metrics.update(
            entropy=total["entropy_sum"] / tokens if tokens else 0.0,
            tokens=tokens,
            grad_norm=grad_norm,
            grad_skipped=float(skipped),
        )
        if with_mismatch and total["mismatch_tokens"]:
            metrics["logprob_mismatch"] = total["mismatch_sum"] / total["mismatch_tokens"]
        return metrics

    # ------------------------------------------------------------------------------------ weights and state

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The policy's full weights in `dtype` on CPU, with Hugging Face names, on rank 0; `{}` elsewhere.

        Collective: every rank calls it (the shards are gathered).
        """
        state = self._gather_model_state()
        # On a single rank the gathered tensors are the live parameters themselves: copy them.
        return {name: tensor.to(self.dtype, copy=self.world_size == 1) for name, tensor in state.items()}

    def save(self, path: str) -> None:
        """Write the policy (float32) and optimizer state under the folder `path`, from rank 0, with the base
        model's config and tokenizer files, so that the folder loads as a Hugging Face model directory.

        Collective: every rank calls it; returns once the files are written.
        """
        model, optimizer = self._require_setup()
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = self._gather_model_state()
        optimizer_state = get_optimizer_state_dict(model, optimizer, options=options)
        if self.rank == 0:
            folder = Path(path)
            folder.mkdir(parents=True, exist_ok=True)
            save_file(model_state, str(folder / MODEL_FILE))
            torch.save(optimizer_state, folder / OPTIMIZER_FILE)
            copy_model_files(Path(self.model_path), folder)
        dist.barrier()

    def load(self, path: str) -> None:
        """Restore the policy and optimizer state that `save` wrote under `path` (read by rank 0, broadcast).

        Collective: every rank calls it. The checkpoint may come from a different number of ranks.
        """
        model, optimizer = self._require_setup()
        folder = Path(path)
        # Rank 0 says whether the files are there, so that all ranks fail together rather than some hang.
        found = self.rank == 0 and all((folder / name).is_file() for name in (MODEL_FILE, OPTIMIZER_FILE))
        present = torch.tensor([int(found)], device=self.device)
        dist.broadcast(present, src=0)
        if not present.item():
            raise FileNotFoundError(
                f"Learner.load: checkpoint folder {str(folder)!r} lacks {MODEL_FILE} or {OPTIMIZER_FILE}"
            )
        model_state: dict[str, torch.Tensor] = {}
        optimizer_state: dict = {}
        if self.rank == 0:
            model_state = load_file(str(folder / MODEL_FILE))
            optimizer_state = torch.load(folder / OPTIMIZER_FILE, weights_only=True)
            if _ties_embeddings(model):
                model_state[TIED_HEAD] = model_state[TIED_EMBEDDING]
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(model, model_state, options=options)
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)

    def _gather_model_state(self) -> dict[str, torch.Tensor]:
        """The full float32 state dict on CPU on rank 0 (`{}` elsewhere), tied weights stored once each."""
        model = self._require_setup()[0]
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(model, options=options)
        if _ties_embeddings(model):
            state.pop(TIED_HEAD, None)
        return state

    def _require_setup(self) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        if self.model is None or self.optimizer is None:
            raise RuntimeError(f"Learner rank {self.rank}: call setup() first (or it was shut down)")
        return self.model, self.optimizer


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers of a Hugging Face causal LM (`model.model.layers` for Qwen2, Llama and kin)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError(f"cannot find decoder layers (model.model.layers) in {type(model).__name__}")
    return list(layers)


def _ties_embeddings(model: torch.nn.Module) -> bool:
    """Whether the output head shares the input embedding's weight (then only the embedding is stored)."""
    return bool(getattr(model.config, "tie_word_embeddings", False))


def _as_float(value: torch.Tensor) -> float:
    """A scalar tensor, or a replicated DTensor such as FSDP2's gradient norm, as a Python float."""
    if isinstance(value, DTensor):
        value = value.full_tensor()
    return float(value.item())
