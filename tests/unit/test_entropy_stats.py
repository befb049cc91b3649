"""The top-20% entropy from a histogram: within one bin's width of the exact value, and summable over ranks."""

import math

import pytest
import torch

from core.entropy_stats import BINS, add_entropies, empty_histogram, top_fraction_mean

VOCAB = 151_936
WIDTH = math.log(VOCAB) / BINS


def exact_top_mean(values: torch.Tensor, fraction: float) -> float:
    """The mean of the `fraction` largest values, the last one counted in part (as the histogram does)."""
    ordered = values.sort(descending=True).values.double()
    wanted = fraction * len(ordered)
    whole = int(wanted)
    total = ordered[:whole].sum().item() + (wanted - whole) * (ordered[whole].item() if whole < len(ordered) else 0)
    return total / wanted


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_fraction_mean_is_within_one_bin_of_the_exact_mean(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    # most tokens near-deterministic, a few forking ones: the shape of a policy's token entropies
    values = torch.cat([torch.rand(9000, generator=generator) * 0.05, torch.rand(1000, generator=generator) * 6])
    histogram = empty_histogram()
    add_entropies(histogram, values, VOCAB)
    assert histogram[0].sum().item() == len(values)
    for fraction in (0.2, 0.05, 1.0):
        assert abs(top_fraction_mean(histogram, fraction) - exact_top_mean(values, fraction)) < WIDTH
    assert top_fraction_mean(histogram, 1.0) == pytest.approx(values.double().mean().item(), rel=1e-9)


def test_histograms_of_ranks_sum_to_the_histogram_of_all_tokens() -> None:
    values = torch.rand(4000, generator=torch.Generator().manual_seed(3)) * 4
    whole, first, second = empty_histogram(), empty_histogram(), empty_histogram()
    add_entropies(whole, values, VOCAB)
    add_entropies(first, values[:1500], VOCAB)
    add_entropies(second, values[1500:], VOCAB)
    assert torch.equal(first[0] + second[0], whole[0])  # counts are exact
    assert top_fraction_mean(first + second) == pytest.approx(top_fraction_mean(whole), rel=1e-12)


def test_values_past_ln_v_land_in_the_last_bin_and_an_empty_histogram_gives_zero() -> None:
    histogram = empty_histogram()
    assert top_fraction_mean(histogram) == 0.0
    add_entropies(histogram, torch.tensor([math.log(VOCAB) + 1.0, -0.0]), VOCAB)
    assert histogram[0, -1].item() == 1 and histogram[0, 0].item() == 1
    with pytest.raises(ValueError, match="fraction"):
        top_fraction_mean(histogram, 0.0)
