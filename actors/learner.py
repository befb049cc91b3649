"""One rank of the FSDP2 policy learner: GRPO updates on its shard of a step's batch (E3_SPEC §3, §4).

`Learner` is a plain class; `cluster/learner_group.py` runs `num_ranks` of them as Ray actors, and a test can
run one in-process. Every rank holds a shard of the policy (`fully_shard` on each decoder layer, then the
root), so every method that touches the model is a collective: all ranks must call it, in the same order.

A training step (`Learner.train_step`, which gives it in full): micro-batches forward through
`core.logprobs.ResponseHead` (tempered log-probs of response tokens only, never `[n, L, V]` logits), the clipped
loss of `core.grpo.policy_loss` as a global token mean (gradients summed over ranks), optionally weighted against
the engine's log-probs (`off_policy_correction`, docs/generation-ahead.md), then a clipped AdamW step and metrics
reduced over ranks. Ranks run equal numbers of passes (`_mini_batches` pads with masked samples).

Checkpoints (`save`/`load`) are full, unsharded, pickle-free state dicts from rank 0, resumable on any number of
ranks. Run: `cluster/learner_group.py` starts the ranks (docs/architecture.md); tests run one in-process.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import os
import shutil
import socket
from collections.abc import Iterator
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
from torch.distributed.tensor import DTensor, Shard
from transformers import AutoConfig, AutoModelForCausalLM

from actors.checkpoint_files import WEIGHTS_FILE, fsync_tree
from actors.weight_transport import (
    BucketLayout,
    TensorSpec,
    WeightGroup,
    chunk_rows,
    group_name,
    plan_buckets,
    send_weights,
)
from core.batch import pack_micro_batches
from core.config import LearnerConfig
from core.entropy_stats import add_entropies, empty_histogram, top_fraction_mean
from core.grpo import off_policy_weights, policy_loss
from core.logprobs import ResponseHead
from core.messages import TrainBatch

OPTIMIZER_FILE = "optimizer.pt"
TIED_HEAD, TIED_EMBEDDING = "lm_head.weight", "model.embed_tokens.weight"
LOOPBACK_ADDRESSES = ("127.0.0.1", "localhost", "::1")
# Metrics summed over micro-batches and ranks (policy_loss divides its metrics by the global token count).
_ADDITIVE_METRICS = ("loss", "clip_frac", "dual_clip_frac", "approx_kl")
_COUNTERS = ("entropy_sum", "tokens", "mismatch_sum", "mismatch_tokens", "is_ratio_sum", "is_masked", "is_truncated")
log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Scored:
    """One forward pass over a micro-batch: log-probs [n, L-1] (zero off the response), token counters and each
    response token's entropy (detached)."""

    logprobs: torch.Tensor
    counters: dict[str, float]
    entropy: torch.Tensor


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
        self._warned_long = False
        self._weight_group: WeightGroup | None = None  # this rank's weight-transport group (its sender)

    # ----------------------------------------------------------------------------------------------- set-up

    def setup(self) -> None:
        """Join the process group, load the policy from `model_path`, shard it with FSDP2 and build AdamW.

        Collective: every rank calls it. Seeds torch with `seed` and limits torch to `config.torch_threads`. Every
        collective of the group then fails after `config.collective_timeout_s` seconds of waiting.
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
            timeout=datetime.timedelta(seconds=self.config.collective_timeout_s),
        )
        mesh = init_device_mesh(self.device.type, (self.world_size,))

        model, full_state = self._build_policy()
        mixed_precision = MixedPrecisionPolicy(param_dtype=self.dtype, reduce_dtype=torch.float32)
        for layer in _decoder_layers(model):
            fully_shard(layer, mesh=mesh, mp_policy=mixed_precision)
        fully_shard(model, mesh=mesh, mp_policy=mixed_precision)
        if self.rank != 0:
            model.to_empty(device=self.device)  # storage for this rank's shards; the values come from rank 0
        # every rank gets its shards of rank 0's weights, and rank 0's buffers (rotary tables and the like)
        set_model_state_dict(
            model, full_state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        )
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
        del full_state
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

    def _build_policy(self) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
        """The policy before sharding, with its output head replaced by `ResponseHead`, and (on rank 0) its full
        state dict.

        Only rank 0 reads the weights; the other ranks build the model on the meta device (no memory), so the
        host memory for loading is one float32 copy per node whatever the number of ranks on it (a 7B policy
        on 4 ranks: 30 GB instead of 120 GB).
        """
        if self.rank == 0:
            model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32)
        else:
            config = AutoConfig.from_pretrained(self.model_path)
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.config.use_cache = False
        # Response tokens only, in chunks: no [n, L, V] logits (see core/logprobs.py for the memory arithmetic).
        model.set_output_embeddings(ResponseHead(model.get_output_embeddings(), self.config.logits_chunk_tokens))
        if self.config.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        if self.rank != 0:
            return model, {}
        model.to(self.device)
        return model, {name: tensor.detach() for name, tensor in model.state_dict().items()}

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
        self.leave_weight_group()
        if dist.is_initialized():
            dist.destroy_process_group()
        self.model = None
        self.optimizer = None

    # -------------------------------------------------------------------------------------------- training

    def train_step(self, shard: TrainBatch, global_response_tokens: int) -> dict[str, float]:
        """Take `ppo_mini_batches` optimizer steps on this rank's `shard` of a batch with
        `global_response_tokens` in all.

        The step on a rank:
        1. pack the shard into micro-batches under `max_tokens_per_micro_batch` padded tokens (`micro_batch_size`
           rows at most), similar lengths together (`_mini_batches`);
        2. forward each micro-batch with gradient: the output head is `core.logprobs.ResponseHead`, which returns,
           for response tokens only and `logits_chunk_tokens` rows at a time, the log-prob of each token under its
           sample's temperature and the tempered entropy (no `[n, L, V]` logits ever exist); compute the clipped
           policy loss (`core.grpo.policy_loss`, normalised by the response-token count of the *global* batch) and
           accumulate gradients; FSDP2's gradient reduction is set to a plain sum over ranks (not its default
           mean), so the summed rank losses are exactly the global token mean. With one optimizer step per
           training step (`ppo_mini_batches=1`, the paper's setting) the old log-probs are the detached log-probs
           of this same pass (the ratio is identically 1) and the entropy comes from it too; with more, a no-grad
           pass measures them first and each mini-batch takes its own optimizer step. With
           `off_policy_correction` (`tis`, `icepop`) each token's loss is weighted against the rollout engine's
           tempered log-prob of it (`TrainBatch.sampler_logprobs`, the behaviour policy: an older weights version
           when generation runs ahead of training), `core.grpo.off_policy_weights`;
        3. clip the global gradient norm, take the AdamW step, and reduce the metrics over ranks, so that every
           rank returns the same global metrics.

        Every rank must run the same number of forward and backward passes (FSDP2 gathers and reduces parameters
        inside them), so ranks agree on the micro-batch count first; a rank with fewer samples pads with a sample
        whose response mask is zero (it adds nothing to the loss, the gradient or the metrics).

        Collective: every rank calls it with its own shard and the same `global_response_tokens`. Returns
        global metrics, identical on every rank:
        - `entropy`: token mean, in nats, of the tempered policy before the update; `entropy_top20`: the mean over
          the 20% highest-entropy response tokens of the global batch (`core.entropy_stats`, within 0.012 nats);
        - `loss`, `clip_frac`, `dual_clip_frac`, `approx_kl`: global token means (averaged over mini-batches);
        - `grad_norm`: before clipping (of the last mini-batch); `grad_skipped`: 1 when a step was not taken
          because its gradient was not finite;
        - `tokens`: response tokens of the global batch; `micro_batches`: forward passes of the busiest rank;
        - `logprob_mismatch`: mean |learner - sampler| log-prob per token, if shards carry `sampler_logprobs`.
        """
        model, optimizer = self._require_setup()
        if global_response_tokens < 1:
            raise ValueError(f"train_step: global_response_tokens={global_response_tokens}, expected >= 1")
        if bool(shard.response_mask[:, 0].any()):
            raise ValueError("train_step: response_mask[:, 0] is set, but a response token needs a prompt before it")

        mini_batches = self._mini_batches(shard)
        totals = dict.fromkeys(_ADDITIVE_METRICS + _COUNTERS, 0.0)
        totals["is_ratio_max"] = 0.0
        entropy_histogram = empty_histogram(self.device)
        correct = self.config.off_policy_correction != "none"
        if correct and shard.sampler_logprobs is None:
            raise ValueError(
                f"train_step: learner.off_policy_correction={self.config.off_policy_correction} needs the engine's "
                "log-probs (TrainBatch.sampler_logprobs)"
            )
        old: list[list[torch.Tensor | None]] = [[None] * len(micros) for micros in mini_batches]
        if len(mini_batches) > 1:  # the policy moves between mini-batches: measure old log-probs first
            with torch.no_grad():
                for m, micros in enumerate(mini_batches):
                    for k, micro in enumerate(micros):
                        scored = self._score(micro)
                        old[m][k] = scored.logprobs
                        _add(totals, scored.counters)
                        add_entropies(entropy_histogram, scored.entropy, model.config.vocab_size)
        normalizers = self._mini_batch_tokens(mini_batches, global_response_tokens)
        grad_norm, skipped = 0.0, False
        for m, micros in enumerate(mini_batches):
            optimizer.zero_grad(set_to_none=True)
            for k, micro in enumerate(micros):
                scored = self._score(micro)
                if old[m][k] is None:  # one optimizer step: this pass is also the measurement
                    old[m][k] = scored.logprobs.detach()
                    _add(totals, scored.counters)
                    add_entropies(entropy_histogram, scored.entropy, model.config.vocab_size)
                weights = self._off_policy_weights(micro, old[m][k], totals) if correct else None
                loss, metrics = policy_loss(
                    scored.logprobs,
                    old[m][k],
                    micro.advantages.to(self.device),
                    micro.response_mask[:, 1:].to(self.device),
                    normalizer=normalizers[m],
                    clip_low=self.config.clip_low,
                    clip_high=self.config.clip_high,
                    dual_clip=self.config.dual_clip,
                    token_weights=weights,
                )
                loss.backward()
                # each mini-batch's metrics are token means over it: their mean over mini-batches is reported
                totals["loss"] += loss.item() / len(mini_batches)
                for name in _ADDITIVE_METRICS[1:]:
                    totals[name] += metrics[name] / len(mini_batches)
            grad_norm = _as_float(torch.nn.utils.clip_grad_norm_(model.parameters(), self.config.grad_clip))
            if math.isfinite(grad_norm):
                optimizer.step()
            else:
                skipped = True
        optimizer.zero_grad(set_to_none=True)
        totals["micro_batches"] = float(sum(len(micros) for micros in mini_batches))
        metrics = self._global_metrics(totals, grad_norm, skipped, with_mismatch=shard.sampler_logprobs is not None)
        dist.all_reduce(entropy_histogram)
        return {**metrics, "entropy_top20": top_fraction_mean(entropy_histogram)}

    def _off_policy_weights(self, micro: TrainBatch, old: torch.Tensor, totals: dict[str, float]) -> torch.Tensor:
        """The micro-batch's per-token loss weights against the engine's log-probs (`learner.off_policy_correction`),
        its ratio statistics added into `totals` (the ratio's max kept as a max)."""
        weights, sums = off_policy_weights(
            old,
            micro.sampler_logprobs[:, 1:].to(self.device, torch.float32),
            micro.response_mask[:, 1:].to(self.device),
            str(self.config.off_policy_correction),
            tis_cap=self.config.tis_cap,
            icepop_low=self.config.icepop_low,
            icepop_high=self.config.icepop_high,
        )
        totals["is_ratio_max"] = max(totals["is_ratio_max"], sums.pop("is_ratio_max"))
        _add(totals, sums)
        return weights

    def _mini_batches(self, shard: TrainBatch) -> list[list[TrainBatch]]:
        """The shard's `ppo_mini_batches` mini-batches, each as micro-batches; every rank gets the same counts.

        Rows are dealt to mini-batches round-robin from the longest, so each gets a similar share of tokens;
        each mini-batch is packed by `core.batch.pack_micro_batches` under `max_tokens_per_micro_batch` padded
        tokens and `micro_batch_size` rows. Ranks agree on each mini-batch's micro-batch count with an all-reduce
        (max): FSDP2 gathers and reduces parameters inside every forward and backward, so all ranks must run the
        same number. A rank that needs fewer fills up with its shortest sample with the response mask cleared: it
        runs the collectives but contributes nothing.
        """
        lengths = shard.attention_mask.sum(dim=1).tolist()
        count = self.config.ppo_mini_batches
        by_length = sorted(range(shard.num_samples), key=lambda i: (-lengths[i], i))
        mini_rows = [sorted(by_length[m::count]) for m in range(count)]
        packed = []
        for rows in mini_rows:
            groups = pack_micro_batches(
                [lengths[i] for i in rows], self.config.max_tokens_per_micro_batch, self.config.micro_batch_size
            )
            packed.append([[rows[j] for j in group] for group in groups])
        budget = self.config.max_tokens_per_micro_batch
        if budget and not self._warned_long and any(length > budget for length in lengths):
            self._warned_long = True
            log.warning(
                "a sample of %d tokens exceeds learner.max_tokens_per_micro_batch=%d: it gets a micro-batch of its "
                "own (logged once)",
                max(lengths),
                budget,
            )
        counts = torch.tensor([len(groups) for groups in packed], device=self.device)
        dist.all_reduce(counts, op=dist.ReduceOp.MAX)
        shortest = min(range(shard.num_samples), key=lambda i: (lengths[i], i))
        filler = shard.select([shortest])
        filler = dataclasses.replace(filler, response_mask=torch.zeros_like(filler.response_mask))
        return [
            [shard.select(group) for group in groups] + [filler] * (int(needed) - len(groups))
            for groups, needed in zip(packed, counts.tolist(), strict=True)
        ]

    def _mini_batch_tokens(self, mini_batches: list[list[TrainBatch]], global_response_tokens: int) -> list[float]:
        """Each mini-batch's response tokens over all ranks (its loss normaliser: a token mean per optimizer
        step); with one mini-batch that is `global_response_tokens` and no collective is needed."""
        if len(mini_batches) == 1:
            return [float(global_response_tokens)]
        local = [float(sum(micro.num_response_tokens for micro in micros)) for micros in mini_batches]
        summed = torch.tensor(local, dtype=torch.float64, device=self.device)
        dist.all_reduce(summed)
        return [max(value, 1.0) for value in summed.tolist()]  # an empty mini-batch contributes a zero loss

    def _score(self, micro: TrainBatch) -> _Scored:
        """One forward pass: each response token's log-prob under its sample's temperature, as [n, L-1] (zero
        elsewhere, differentiable when grad is enabled), and the detached entropy and mismatch counters."""
        model = self._require_setup()[0]
        input_ids = micro.input_ids.to(self.device)
        mask = micro.response_mask[:, 1:].to(self.device)
        rows, positions = torch.nonzero(mask, as_tuple=True)  # hidden state j predicts token j + 1
        temperatures = micro.temperatures.to(self.device, torch.float32)[rows]
        head = model.get_output_embeddings()
        with head.scoring(rows, positions, input_ids[rows, positions + 1], temperatures):
            output = model(input_ids=input_ids, attention_mask=micro.attention_mask.to(self.device), use_cache=False)
        token_logprobs, entropy = output.logits[:, 0], output.logits[:, 1]
        logprobs = torch.zeros(mask.shape, dtype=torch.float32, device=self.device).index_put(
            (rows, positions), token_logprobs
        )
        counters = {
            "entropy_sum": float(entropy.detach().sum().item()),
            "tokens": float(len(rows)),
            "mismatch_sum": 0.0,
            "mismatch_tokens": 0.0,
        }
        if micro.sampler_logprobs is not None:
            sampler = micro.sampler_logprobs[:, 1:].to(self.device, torch.float32)[rows, positions]
            counters["mismatch_sum"] = float((token_logprobs.detach() - sampler).abs().sum().item())
            counters["mismatch_tokens"] = counters["tokens"]
        return _Scored(logprobs=logprobs, counters=counters, entropy=entropy.detach())

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
            micro_batches=totals["micro_batches"],  # the same on every rank: the ranks agreed on the count
        )
        if with_mismatch and total["mismatch_tokens"]:
            metrics["logprob_mismatch"] = total["mismatch_sum"] / total["mismatch_tokens"]
        correction = self.config.off_policy_correction
        if correction != "none":  # importance ratio pi_old / pi_behaviour over the response tokens
            largest = torch.tensor([totals["is_ratio_max"]], dtype=torch.float64, device=self.device)
            dist.all_reduce(largest, op=dist.ReduceOp.MAX)
            metrics["is_ratio_mean"] = total["is_ratio_sum"] / tokens if tokens else 0.0
            metrics["is_ratio_max"] = float(largest.item())
            counted = "is_masked" if correction == "icepop" else "is_truncated"
            metrics[f"{counted}_frac"] = total[counted] / tokens if tokens else 0.0
        return metrics

    # ------------------------------------------------------------------------------------ weights and state

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The policy's full weights in `dtype` on CPU, with Hugging Face names, on rank 0; `{}` elsewhere.

        Collective: every rank calls it (the shards are gathered).
        """
        state = self._gather_model_state()
        # On a single rank the gathered tensors are the live parameters themselves: copy them.
        return {name: tensor.to(self.dtype, copy=self.world_size == 1) for name, tensor in state.items()}

    # ------------------------------------------------------- collective weight transport (every rank sends)

    def weight_layout(self, bucket_bytes: int) -> BucketLayout:
        """The buckets `broadcast_weights` sends: every parameter (a tied output head once) with its dim-0 split
        over the ranks, in the publish `dtype`, grouped by FSDP2 module (the root first, then the decoder
        layers). Local: any rank answers the same, no collective. Raises, naming it, for a parameter that FSDP2
        did not shard along dim 0 alone (its default `Shard(0)` is all the transport supports)."""
        specs = [
            TensorSpec(name, tuple(param.shape), chunk_rows(_dim0_sharded(name, param).shape[0], self.world_size))
            for name, param in self._parameter_order()
        ]
        return plan_buckets(specs, self.dtype, bucket_bytes)

    def join_weight_group(self, address: str, port: int, world_size: int, timeout_s: float, name: str) -> str | None:
        """Join (and serve, at `address:port`) this rank's own weight-transport group of the generation `name`, as
        its rank 0, leaving any earlier one. Every rank calls it with its own address. Returns None once every
        member of its group joined; when they did not within `timeout_s` (a worker died or hung while the groups
        formed: no fault of this rank), the error's text, as `broadcast_weights` does, so that the pool replaces
        the worker and rebuilds instead of taking the learner for lost."""
        self.leave_weight_group()
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        try:
            self._weight_group = WeightGroup(
                address, port, 0, world_size, backend, timeout_s, group_name(name, self.rank)
            )
        except Exception as failure:  # noqa: BLE001 - a member missing; reported to the pool, which rebuilds
            return f"{type(failure).__name__}: {failure}"
        return None

    def leave_weight_group(self) -> None:
        """Leave the weight-transport group, if in one."""
        group, self._weight_group = self._weight_group, None
        if group is not None:
            group.close()

    def broadcast_weights(self, layout: BucketLayout, version: int) -> str | None:
        """Send this rank's shards of the policy's weights as `version` to its weight-transport group, in
        `layout`'s buckets (`send_weights`).

        Nothing is gathered and the ranks do not talk to each other: every rank calls it and sends its own
        float32 shards bucket by bucket, cast to the publish dtype where they are not in it, holding at most two
        buckets' packed parts and casts beside them (`send_weights`: large tensors go as they are, straight from
        the live parameters, which no optimizer step touches meanwhile: the actor runs one call at a time).
        Returns None once every worker received this rank's parts; when the transport fails, the error's text
        (the group is then left)."""
        try:
            if self._weight_group is None:
                raise RuntimeError("broadcast_weights: not in a weight-transport group (join_weight_group)")
            send_weights(self._weight_group, layout, self.rank, version, self._local_shards())
        except Exception as failure:  # noqa: BLE001 - a lost peer; reported to the pool, which rebuilds
            self.leave_weight_group()
            return f"{type(failure).__name__}: {failure}"
        return None

    def _local_shards(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, this rank's rows) of every parameter, in `weight_layout`'s order, in the master dtype."""
        for name, param in self._parameter_order():
            yield name, _dim0_sharded(name, param).to_local().detach()

    def _parameter_order(self) -> list[tuple[str, torch.nn.Parameter]]:
        """Every parameter (a tied head once), grouped by the FSDP2 module that shards it: the root first, then
        the decoder layers."""
        model = self._require_setup()[0]
        fsdp_modules = {prefix for prefix, m in model.named_modules() if isinstance(m, FSDPModule)}
        groups: dict[str, list[tuple[str, torch.nn.Parameter]]] = {}
        for name, param in model.named_parameters():  # a tied head is the embedding: listed once
            parts = name.split(".")
            owner = next(p for p in (".".join(parts[:i]) for i in range(len(parts) - 1, -1, -1)) if p in fsdp_modules)
            groups.setdefault(owner, []).append((name, param))
        return [item for names in groups.values() for item in names]

    def save(self, path: str) -> None:
        """Write the policy (float32) and optimizer state under the folder `path`, from rank 0, with the base
        model's config and tokenizer files, so that the folder loads as a Hugging Face model directory.

        The checkpoint is a full, unsharded state dict: the policy as `model.safetensors` (float32 master
        weights, Hugging Face names) and the AdamW state as `optimizer.pt`, read back by `load` with
        `torch.load(weights_only=True)`. No pickled code is ever loaded, and a checkpoint can be resumed on any
        number of ranks. (DCP's sharded format scales better, but its metadata is a pickle; the models this
        project trains fit comfortably in one host's memory.)

        Collective: every rank calls it; returns once the files are written and flushed to disk (fsync, on rank
        0's node, which may not be the node that publishes the checkpoint).
        """
        model, optimizer = self._require_setup()
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = self._gather_model_state()
        optimizer_state = get_optimizer_state_dict(model, optimizer, options=options)
        if self.rank == 0:
            folder = Path(path)
            folder.mkdir(parents=True, exist_ok=True)
            save_file(model_state, str(folder / WEIGHTS_FILE))
            torch.save(optimizer_state, folder / OPTIMIZER_FILE)
            copy_model_files(Path(self.model_path), folder)
            fsync_tree(folder)
        dist.barrier()

    def load(self, path: str) -> None:
        """Restore the policy and optimizer state that `save` wrote under `path` (read by rank 0, broadcast).

        Collective: every rank calls it. The checkpoint may come from a different number of ranks.
        """
        model, optimizer = self._require_setup()
        folder = Path(path)
        # Rank 0 says whether the files are there, so that all ranks fail together rather than some hang.
        found = self.rank == 0 and all((folder / name).is_file() for name in (WEIGHTS_FILE, OPTIMIZER_FILE))
        present = torch.tensor([int(found)], device=self.device)
        dist.broadcast(present, src=0)
        if not present.item():
            raise FileNotFoundError(
                f"Learner.load: checkpoint folder {str(folder)!r} lacks {WEIGHTS_FILE} or {OPTIMIZER_FILE}"
            )
        model_state: dict[str, torch.Tensor] = {}
        optimizer_state: dict = {}
        if self.rank == 0:
            model_state = load_file(str(folder / WEIGHTS_FILE))
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


def _add(totals: dict[str, float], counters: dict[str, float]) -> None:
    """Add a forward pass's counters into the step's totals."""
    for name, value in counters.items():
        totals[name] += value


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers of a Hugging Face causal LM (`model.model.layers` for Qwen2, Llama and kin)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError(f"cannot find decoder layers (model.model.layers) in {type(model).__name__}")
    return list(layers)


def _ties_embeddings(model: torch.nn.Module) -> bool:
    """Whether the output head shares the input embedding's weight (then only the embedding is stored)."""
    return bool(getattr(model.config, "tie_word_embeddings", False))


def _dim0_sharded(name: str, param: torch.nn.Parameter) -> DTensor:
    """`param`, after checking that it is a DTensor sharded along dim 0 alone (FSDP2's default); raises, naming
    the parameter, for any other placement."""
    if not isinstance(param, DTensor) or tuple(param.placements) != (Shard(0),):
        placements = tuple(param.placements) if isinstance(param, DTensor) else "not a DTensor"
        raise RuntimeError(
            f"weight transport: parameter {name} is {placements}; only FSDP2's default Shard(0) is supported"
        )
    return param


def _as_float(value: torch.Tensor) -> float:
    """A scalar tensor, or a replicated DTensor such as FSDP2's gradient norm, as a Python float."""
    if isinstance(value, DTensor):
        value = value.full_tensor()
    return float(value.item())
