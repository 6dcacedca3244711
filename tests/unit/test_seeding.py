"""offshelf.seeding: per-sample streams, and a label stream independent of the noise."""

from __future__ import annotations

import math

import pytest
import torch

from offshelf.seeding import StackedRandomGenerator, draw_labels


def test_a_torch_cpu_generator_keeps_only_the_seeds_low_32_bits():
    """Why draw_labels does not offset the seed: on the CPU, seed s + 2**40 is seed s's stream."""
    same = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3 + (1 << 40))
    assert torch.equal(torch.randn(4, generator=same[0]), torch.randn(4, generator=same[1]))


def test_labels_are_not_drawn_from_the_samples_noise_stream():
    """Sample s's label and the first draw of its noise generator (``manual_seed(s)``, what
    StackedRandomGenerator uses) agree as often as two independent uniform classes do, 1/C, within
    4 binomial standard errors; the old label stream (seed s + 2**40, the same mt19937 state) agreed
    for every seed."""
    classes, seeds = 10, range(3000)
    labels = draw_labels(seeds, classes)
    from_noise = torch.stack([torch.randint(classes, (), generator=torch.Generator().manual_seed(s)) for s in seeds])
    agree = float((labels == from_noise).float().mean())
    p = 1 / classes
    assert abs(agree - p) < 4 * math.sqrt(p * (1 - p) / len(seeds)), agree


def test_labels_are_uniform_and_a_function_of_the_seed_alone():
    classes, seeds = 10, range(5000)
    labels = draw_labels(seeds, classes)
    counts = torch.bincount(labels, minlength=classes).double()
    expected = len(seeds) / classes
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 27.9  # chi-square with 9 degrees of freedom, p = 0.001
    assert labels.dtype == torch.long and int(labels.min()) >= 0 and int(labels.max()) < classes
    assert draw_labels([4321], classes)[0] == labels[4321] == draw_labels([7, 4321, 9], classes)[1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(), (1,), (2, 3), (17,), (3, 32, 32)])
def test_each_row_is_its_own_generators_randn(shape, dtype):
    """Row i is exactly ``torch.randn(shape, generator=seed i)``: sizes on both sides of torch's
    vectorised normal (16 values), every dtype a sampler draws in."""
    drawn = StackedRandomGenerator(range(5)).randn(shape, dtype)
    alone = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s), dtype=dtype) for s in range(5)])
    assert drawn.dtype == dtype and torch.equal(drawn, alone)
