"""FID with fewer samples than feature dimensions (the rehearsals' handful): the low-rank form
equals the sqrtm form, and evaluation takes it without a D×D sqrtm."""

import time

import numpy as np
import pytest

from offshelf.metrics import feature_statistics, frechet_distance, frechet_distance_few_samples


@pytest.mark.parametrize("n", [2, 5, 40])
def test_low_rank_fid_equals_the_sqrtm_form(n):
    rng = np.random.default_rng(n)
    d = 40
    reference = feature_statistics(rng.standard_normal((300, d)) @ rng.standard_normal((d, d)) + 1.0)
    features = rng.standard_normal((n, d)) * 2 + 0.5
    stats = feature_statistics(features)
    expected = frechet_distance(stats.mu, stats.sigma, reference.mu, reference.sigma)
    assert frechet_distance_few_samples(features, reference.mu, reference.sigma) == pytest.approx(expected, rel=1e-6)
    # N > D: the same function is the sqrtm form itself
    many = rng.standard_normal((d + 10, d))
    s = feature_statistics(many)
    assert frechet_distance_few_samples(many, reference.mu, reference.sigma) == \
        frechet_distance(s.mu, s.sigma, reference.mu, reference.sigma)


def test_low_rank_fid_is_fast_at_inception_size():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2048, 64))
    sigma = a @ a.T / 63
    start = time.perf_counter()
    value = frechet_distance_few_samples(rng.standard_normal((5, 2048)), np.zeros(2048), sigma)
    assert np.isfinite(value) and value > 0
    assert time.perf_counter() - start < 5  # the sqrtm form takes ~20 s on one core


def test_names_mismatched_shapes():
    with pytest.raises(ValueError, match="dimension 3"):
        frechet_distance_few_samples(np.ones((4, 3)), np.zeros(2), np.eye(2))
