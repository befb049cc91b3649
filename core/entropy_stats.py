"""Where a step's entropy sits: the mean entropy of its highest-entropy response tokens, from a fixed histogram.

The gains of RL on reasoning concentrate in the few tokens where the policy is unsure (the "forking" tokens), so
the learner reports, beside the token mean, the mean entropy of the `TOP_FRACTION` (20%) highest-entropy response
tokens of the step over all ranks (`learner/entropy_top20`). An exact top 20% needs every token's entropy on one
rank (512 responses x 6,144 tokens is 3.1M floats a step); instead each rank adds its tokens into `BINS` equal
bins over [0, ln V] (the largest entropy of a V-token distribution), keeping each bin's count and entropy sum,
and the ranks sum those 2 x `BINS` numbers in one all-reduce (16 KB). The top fraction is then taken from the
highest bins down, the boundary bin at its own mean: the result is off the exact one by less than one bin's width
(ln V / BINS: 0.012 nats at V = 151,936).
"""

from __future__ import annotations

import math

import torch

BINS = 1024
TOP_FRACTION = 0.2


def empty_histogram(device: torch.device | str = "cpu") -> torch.Tensor:
    """A `[2, BINS]` float64 histogram with nothing in it: row 0 counts tokens, row 1 sums their entropies."""
    return torch.zeros(2, BINS, dtype=torch.float64, device=device)


def add_entropies(histogram: torch.Tensor, entropy: torch.Tensor, vocab_size: int) -> None:
    """Add each token's entropy (nats, any shape, detached) into `histogram` in place; bins span [0, ln
    `vocab_size`], values outside it land in the first or last bin."""
    values = entropy.detach().reshape(-1).to(torch.float64)
    if not values.numel():
        return
    width = math.log(vocab_size) / BINS
    bins = (values / width).floor().clamp_(0, BINS - 1).long().to(histogram.device)
    histogram[0].index_add_(0, bins, torch.ones_like(values, device=histogram.device))
    histogram[1].index_add_(0, bins, values.to(histogram.device))


def top_fraction_mean(histogram: torch.Tensor, fraction: float = TOP_FRACTION) -> float:
    """Mean entropy of the `fraction` highest-entropy tokens counted in `histogram` (0.0 when it is empty): whole
    bins from the top down, then the share of the boundary bin that completes the fraction, at that bin's mean."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    counts, sums = histogram[0].tolist(), histogram[1].tolist()
    wanted = fraction * sum(counts)
    if wanted <= 0:
        return 0.0
    taken = total = 0.0
    for count, entropy_sum in zip(reversed(counts), reversed(sums), strict=True):
        if count <= 0:
            continue
        share = min(count, wanted - taken)
        total += entropy_sum * share / count
        taken += share
        if taken >= wanted:
            break
    return total / taken
