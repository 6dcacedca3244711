"""Intervals and paired differences (offshelf.statistics): closed forms and coverage first, then
the table columns, the Markdown marks and the config keys.

Coverage tolerances: the coverage of R independent intervals is a binomial proportion, so its
standard error at the nominal 0.95 is sqrt(0.95 * 0.05 / R) (R = 200: 0.015). The tests accept
0.95 ± 3 s.e. (0.904 .. 0.996): a correct method fails with probability ~0.3 %, and the draws are
seeded, so a pass is reproducible, not luck re-rolled on every run.
"""

import copy
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from offshelf import statistics
from offshelf.config import ConfigError, validate_config
from offshelf.metrics import feature_statistics, frechet_distance, precision_recall
from offshelf.statistics import (
    fid_replicates, half_indices, in_reference_manifold, interval, mean_replicates, paired_difference,
    recall_replicates, resample_indices,
)
from offshelf.tables import add_paired_differences, markdown
from workflow_utils import REPO

NOMINAL, REPEATS = 0.95, 200
SE = math.sqrt(NOMINAL * (1 - NOMINAL) / REPEATS)
TOLERANCE = 3 * SE


def _gaussians(dim=8, seed=0):
    """Sampling distribution N(mu, Q diag(a) Qᵀ) and reference N(0, Q diag(b) Qᵀ): the covariances
    commute, so FID = ||mu||² + Σ (√a − √b)² exactly (no sqrtm)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    a, b = np.linspace(0.5, 2.0, dim), np.ones(dim)
    mu = np.full(dim, 0.15)
    true = float(mu @ mu + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    return mu, q * np.sqrt(a), np.zeros(dim), q @ np.diag(b) @ q.T, true


def _fid(x, ref_mu, ref_sigma):
    s = feature_statistics(x)
    return frechet_distance(s.mu, s.sigma, ref_mu, ref_sigma)


def test_indices_depend_on_seed_n_and_count_only():
    assert np.array_equal(resample_indices(50, 7), resample_indices(50, 7))
    assert not np.array_equal(resample_indices(50, 7), resample_indices(51, 7)[:, :50])
    halves = half_indices(50, 7)
    assert halves.shape == (7, 25) and all(len(set(h)) == 25 for h in halves)  # without replacement
    assert statistics.indices_digest(50, 7) == statistics.indices_digest(50, 7) != statistics.indices_digest(50, 8)


def test_fid_replicates_equal_frechet_distance_of_each_resample():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 16)) * 2 + 5  # an offset mean: the centring trick must not lose it
    ref = feature_statistics(rng.standard_normal((400, 16)))
    idx = resample_indices(300, 5)
    expected = [_fid(x[i], ref.mu, ref.sigma) for i in idx]
    np.testing.assert_allclose(fid_replicates(x, ref.mu, ref.sigma, idx), expected, rtol=1e-9)


def test_fid_interval_covers_the_closed_form_at_the_nominal_rate():
    """N = 500, D = 8: FID's finite-N bias (E FID_N − FID ≈ 0.06 here) is as large as its standard
    deviation, so an interval that ignored it would miss. The basic interval reflects the
    bootstrap distribution around θ̂ and so removes the bias to first order: it covers the
    infinite-N value 0.95 ± 3 s.e. of the time; the plain percentile interval, for contrast,
    covers it well under 0.9 of the time."""
    mu, root, ref_mu, ref_sigma, true = _gaussians()
    rng = np.random.default_rng(2)
    idx = resample_indices(500, 200)
    basic = percentile = 0
    for _ in range(REPEATS):
        x = mu + rng.standard_normal((500, len(mu))) @ root.T
        point = _fid(x, ref_mu, ref_sigma)
        reps = fid_replicates(x, ref_mu, ref_sigma, idx)
        lo, hi = interval(point, reps, "basic", bounds=(0, np.inf))
        basic += lo <= true <= hi
        lo, hi = interval(point, reps, "percentile")
        percentile += lo <= true <= hi
    assert abs(basic / REPEATS - NOMINAL) <= TOLERANCE, basic / REPEATS
    assert percentile / REPEATS < NOMINAL - TOLERANCE, percentile / REPEATS


def test_accuracy_interval_covers_a_known_rate():
    """A mean of Bernoulli(0.8) indicators (accuracy, precision): percentile interval, same indices."""
    rng = np.random.default_rng(3)
    idx = resample_indices(400, 200)
    covered = 0
    for _ in range(REPEATS):
        correct = rng.random(400) < 0.8
        lo, hi = interval(correct.mean(), mean_replicates(correct, idx), "percentile", bounds=(0, 1))
        covered += lo <= 0.8 <= hi
    assert abs(covered / REPEATS - NOMINAL) <= TOLERANCE, covered / REPEATS


def test_precision_indicators_and_full_recall_match_the_metric():
    rng = np.random.default_rng(4)
    ref, x = rng.standard_normal((300, 4)), rng.standard_normal((200, 4)) + 0.3
    precision, recall = precision_recall(ref, x, 3)
    # the same indicators; the metric averages them in float32 (1e-7 round-off), these in float64
    assert in_reference_manifold(x, ref, 3).mean() == pytest.approx(precision, abs=1e-6)
    # a "half" that is the whole set reproduces the metric's recall
    assert recall_replicates(x, ref, np.arange(200)[None], 3)[0] == pytest.approx(recall, abs=1e-6)
    # the streaming path (large sets) gives the same replicates as the precomputed one
    halves = half_indices(200, 4)
    fast = recall_replicates(x, ref, halves, 3)
    limit, statistics._PRECOMPUTE_ELEMENTS = statistics._PRECOMPUTE_ELEMENTS, 0
    try:
        np.testing.assert_array_equal(recall_replicates(x, ref, halves, 3), fast)
    finally:
        statistics._PRECOMPUTE_ELEMENTS = limit


def test_recall_half_samples_estimate_the_sampling_spread():
    """Recall has no closed form; its half-sample spread is checked against the real one: the
    standard deviation of recall over 60 independent draws of N = 300 samples. The relative
    standard error of a standard deviation from 60 draws is 1/sqrt(2·59) ≈ 9 %; the half-sample
    estimate (averaged over the draws) must agree within 30 %, i.e. ~3 s.e."""
    rng = np.random.default_rng(5)
    ref = rng.standard_normal((300, 3))
    halves = half_indices(300, 100)
    recalls, spreads = [], []
    for _ in range(60):
        x = rng.standard_normal((300, 3)) * 0.9
        recalls.append(precision_recall(ref, x, 3)[1])
        spreads.append(np.std(recall_replicates(x, ref, halves, 3)))
    assert np.mean(spreads) == pytest.approx(np.std(recalls, ddof=1), rel=0.3)


def test_identical_rows_differ_by_exactly_zero():
    mu, root, ref_mu, ref_sigma, _ = _gaussians()
    rng = np.random.default_rng(6)
    x = mu + rng.standard_normal((200, len(mu))) @ root.T
    ref = rng.standard_normal((250, len(mu)))
    kwargs = dict(reference_mu=ref_mu, reference_sigma=ref_sigma, reference_features=ref,
                  correct=rng.random(200) < 0.7, num_resamples=50)
    a, b = statistics.bootstrap(x, **kwargs), statistics.bootstrap(x.copy(), **kwargs)
    point = {"fid": _fid(x, ref_mu, ref_sigma), "precision": 0.5, "recall": 0.5, "accuracy": 0.7}
    for metric in statistics.METRICS:
        assert paired_difference(metric, point[metric], point[metric], a[metric], b[metric]) == (0.0, 0.0, 0.0)


def test_too_few_samples_for_half_sample_radii_give_no_recall_interval():
    rng = np.random.default_rng(10)
    x, ref = rng.standard_normal((7, 2)), rng.standard_normal((20, 2))
    reps = statistics.bootstrap(x, reference_mu=np.zeros(2), reference_sigma=np.eye(2), reference_features=ref,
                                num_resamples=statistics.MIN_RESAMPLES, nhood_size=3)
    assert "recall" not in reps and len(reps["precision"]) == statistics.MIN_RESAMPLES  # 3 points per half: no 3-NN radius
    out = statistics.intervals({"fid": 1.0, "precision": 0.5, "recall": 0.5}, reps)
    assert "recall_lo" not in out and out["precision_lo"] <= out["precision_hi"]


def test_paired_difference_covers_a_known_shift_and_is_narrower_than_unpaired():
    """Row = baseline + c (same noise). With equal covariances the trace terms cancel, so
    FID_row − FID_base = ||mu + c||² − ||mu||² exactly (mu_ref = 0), and its estimator
    2c·x̄ + ||c||² is unbiased: the paired interval covers it at the nominal rate. Pairing removes
    the shared noise: the paired interval is far narrower than the two cells' intervals combined."""
    mu, root, ref_mu, ref_sigma, _ = _gaussians()
    c = np.linspace(-0.1, 0.1, len(mu))
    true = float((mu + c) @ (mu + c) - mu @ mu)
    rng = np.random.default_rng(7)
    idx = resample_indices(500, 200)
    covered, ratios = 0, []
    for _ in range(REPEATS):
        x = mu + rng.standard_normal((500, len(mu))) @ root.T
        base, row = _fid(x, ref_mu, ref_sigma), _fid(x + c, ref_mu, ref_sigma)
        reps_base, reps_row = fid_replicates(x, ref_mu, ref_sigma, idx), fid_replicates(x + c, ref_mu, ref_sigma, idx)
        diff, lo, hi = paired_difference("fid", row, base, reps_row, reps_base)
        assert diff == pytest.approx(2 * c @ x.mean(0) + c @ c, abs=1e-9)
        covered += lo <= true <= hi
        unpaired = np.subtract(*interval(row, reps_row, "basic")[::-1]) + np.subtract(*interval(base, reps_base, "basic")[::-1])
        ratios.append((hi - lo) / unpaired)
    assert abs(covered / REPEATS - NOMINAL) <= TOLERANCE, covered / REPEATS
    assert np.median(ratios) < 0.5


def _frame():
    return pd.DataFrame([
        {"table": "t", "row": "base", "regime": "cond", "baseline": True, "status": "ok", "setting": "A",
         "fid": 0.5, "fid_lo": 0.4, "fid_hi": 0.6, "precision": 0.7, "recall": 0.6, "accuracy": 0.9},
        {"table": "t", "row": "better", "regime": "cond", "baseline": False, "status": "ok", "setting": "B",
         "fid": 0.3, "fid_lo": 0.2, "fid_hi": 0.4, "precision": 0.7, "recall": 0.6, "accuracy": 0.9},
        {"table": "t", "row": "same", "regime": "cond", "baseline": False, "status": "ok", "setting": "C",
         "fid": 0.5, "fid_lo": 0.4, "fid_hi": 0.6, "precision": 0.7, "recall": 0.6, "accuracy": 0.9},
    ])


def test_table_gets_paired_columns_and_the_report_marks_significant_ones():
    rng = np.random.default_rng(8)
    noise = rng.normal(0, 0.01, 100)
    reps = {"A": {"replicate_fid": 0.5 + noise, "digest": "d"},
            "B": {"replicate_fid": 0.3 + noise + rng.normal(0, 0.005, 100), "digest": "d"},
            "C": {"replicate_fid": 0.5 + noise, "digest": "d"}}
    frame = add_paired_differences(_frame(), reps.get)
    for metric in statistics.METRICS:
        assert {f"{metric}_diff", f"{metric}_diff_lo", f"{metric}_diff_hi"} <= set(frame)
    base, better, same = (frame.iloc[i] for i in range(3))
    assert (base["fid_diff"], base["fid_diff_lo"], base["fid_diff_hi"]) == (0, 0, 0)
    assert better["fid_diff"] == pytest.approx(-0.2) and better["fid_diff_hi"] < 0
    assert (same["fid_diff"], same["fid_diff_lo"], same["fid_diff_hi"]) == (0, 0, 0)
    assert math.isnan(better["precision_diff"])  # no replicates of it: NaN, never a made-up 0
    text = markdown(frame, ["fid"], "T")
    assert "| base (baseline) | 0.5 [0.4, 0.6] |" in text
    assert "0.3 [0.2, 0.4] (−0.2*)" in text and "0.5 [0.4, 0.6] (+0)" in text
    assert "excludes 0" in text  # the legend line


def test_rows_resampled_differently_are_refused():
    reps = {"A": {"replicate_fid": np.zeros(10), "digest": "d"}, "B": {"replicate_fid": np.zeros(10), "digest": "e"},
            "C": {"replicate_fid": np.zeros(10), "digest": "d", "seeds": np.arange(3)}}
    with pytest.raises(ValueError, match="row 'better' .*bootstrap indices differ"):
        add_paired_differences(_frame(), reps.get)
    reps["B"]["digest"] = "d"
    reps["A"]["seeds"] = np.arange(1, 4)
    with pytest.raises(ValueError, match="row 'same' .*different seeds"):
        add_paired_differences(_frame(), reps.get)


@pytest.fixture(scope="module")
def default_config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_bootstrap_and_baseline_keys_are_validated(default_config):
    config = copy.deepcopy(default_config)
    config["evaluation"]["bootstrap"] = -1
    with pytest.raises(ConfigError, match=r"'evaluation\.bootstrap' = -1"):
        validate_config(config)
    config = copy.deepcopy(default_config)
    config["tables"]["table5"]["rows"][1]["baseline"] = True
    config["tables"]["table5"]["rows"][3]["baseline"] = True
    with pytest.raises(ConfigError, match=r"tables\.table5\.rows\[3\]\.baseline"):
        validate_config(config)
    from offshelf.planning.rows import table_rows

    config["tables"]["table5"]["rows"][3].pop("baseline")
    flagged = {r.label for r in table_rows(validate_config(config)) if r.table == "table5" and r.baseline}
    assert flagged == {"tau2=0.8"}
    assert {r.label for r in table_rows(default_config) if r.table == "table7" and r.baseline} == {"Diffusion baseline"}


def test_evaluate_writes_reproducible_intervals_and_replicates(tmp_path):
    """The evaluate stage: B = 0 gives no interval keys; B > 0 gives every interval and a features
    file whose replicates a rerun reproduces bitwise (the fixed seed), with the point estimates
    untouched by the bootstrap."""
    from conftest import train_tiny_digits
    from offshelf import stages
    from offshelf.atomic import save_npz
    from offshelf.backends.digits import DigitsBackend
    from offshelf.seeding import draw_labels
    from offshelf.shards import save_shard

    models = train_tiny_digits(tmp_path, steps=5, batch_size=16)
    backend, files = DigitsBackend(), {"evaluator": models["evaluator"]}
    rng = np.random.default_rng(9)
    shard = tmp_path / "shard0.npz"
    save_shard(shard, rng.integers(0, 256, (48, 8, 8, 1), dtype=np.uint8), draw_labels(range(48), 10).numpy(),
               range(48), 1.0)
    reference = tmp_path / "reference.npz"
    save_npz(reference, **stages.reference_features(backend, files, {}))

    def run(b, out):
        return stages.evaluate(backend, stages.load_judge(backend, files, str(reference)), [str(shard)],
                               {"nhood_size": 3, "bootstrap": b},
                               expected_seeds=[[0, 48]], features_path=out)

    off = run(0, None)
    assert not any(k.endswith(("_lo", "_hi")) for k in off)
    first, second = run(50, tmp_path / "a.features.npz"), run(50, tmp_path / "b.features.npz")
    assert first == second
    assert all(first[k] == off[k] for k in off if k not in ("bootstrap", "bootstrap_digest", "seconds"))
    for metric in statistics.METRICS:
        assert first[f"{metric}_lo"] <= first[f"{metric}_hi"], metric
    with np.load(tmp_path / "a.features.npz") as a, np.load(tmp_path / "b.features.npz") as b:
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
        assert a["seeds"].tolist() == list(range(48)) and a["features"].shape[0] == 48
        assert {f"replicate_{m}" for m in statistics.METRICS} <= set(a.files)
