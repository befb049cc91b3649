"""One load balancer for the whole system: split weighted items over bins so that the bins' loads are as even as
a greedy rule allows. The rollout pool spreads requests over workers by sample count with it, the learner group
spreads a train batch over ranks by token count."""

from __future__ import annotations

import heapq
from collections.abc import Sequence


def balance(weights: Sequence[int], num_bins: int) -> list[list[int]]:
    """Item positions per bin, each bin's positions in increasing order.

    Longest first: each item, heaviest first (ties: lower position), goes to the bin with the least load so far
    (ties: lower bin index). With positive weights every bin gets an item when there are at least as many items
    as bins, and the loads differ by at most the heaviest weight.
    """
    if num_bins < 1:
        raise ValueError(f"balance: num_bins={num_bins} < 1")
    heap = [(0, b) for b in range(num_bins)]
    bins: list[list[int]] = [[] for _ in range(num_bins)]
    for position in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        load, b = heapq.heappop(heap)
        bins[b].append(position)
        heapq.heappush(heap, (load + weights[position], b))
    return [sorted(positions) for positions in bins]
