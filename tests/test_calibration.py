"""Expected calibration error by hand, its bin edges, and the per-step recorder as a sampler
callback (paper Sec. 4.1, Eq. 1)."""

import numpy as np
import pandas as pd
import pytest
import torch

from offshelf.backbones.digits import DigitsResNet, DigitsUNet
from offshelf.calibration import CalibrationRecorder, expected_calibration_error, integral_calibration_error
from offshelf.diffusion import GaussianDiffusion
from offshelf.guidance import ClassifierGuidance, SwitchedGuidance
from offshelf.samplers.ddpm import ddpm_sample
from offshelf.seeding import StackedRandomGenerator


# ----------------------------------------------------------------------------
# ECE = Σ_b |B_b|/n · |acc(B_b) − conf(B_b)|

def test_ece_by_hand_two_bins():
    confidence = np.array([0.2, 0.4, 0.7, 0.9])
    correct = np.array([0, 1, 1, 1])
    # (0, .5]: conf 0.3, acc 0.5 → 0.5·0.2 ; (.5, 1]: conf 0.8, acc 1 → 0.5·0.2
    assert expected_calibration_error(confidence, correct, num_bins=2) == pytest.approx(0.2)
    # One bin: |mean acc − mean conf| = |0.75 − 0.55|.
    assert expected_calibration_error(confidence, correct, num_bins=1) == pytest.approx(0.2)
    # Four bins (0,.25], (.25,.5], (.5,.75], (.75,1]: one sample each.
    expected = (0.2 + 0.6 + 0.3 + 0.1) / 4  # = 0.3
    assert expected_calibration_error(confidence, correct, num_bins=4) == pytest.approx(expected)


def test_ece_accepts_booleans_and_lists():
    assert expected_calibration_error([0.9, 0.6], [True, False], num_bins=10) == pytest.approx((0.1 + 0.6) / 2)


def test_perfectly_calibrated_data_has_near_zero_ece():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.1, 1.0, size=200_000)
    correct = rng.random(confidence.shape) < confidence
    ece = expected_calibration_error(confidence, correct, num_bins=15)
    # Sampling noise alone: Σ_b (n_b/n)·sqrt(c(1−c)/n_b) ≲ sqrt(15·0.25/n) ≈ 0.004.
    assert ece < 0.01
    # The same confidences, over-confident by 0.1 in accuracy, are 0.1 off.
    shifted = rng.random(confidence.shape) < np.clip(confidence - 0.1, 0, 1)
    assert expected_calibration_error(confidence, shifted, num_bins=15) == pytest.approx(0.1, abs=0.01)


def test_always_confident_always_wrong_is_one():
    assert expected_calibration_error(np.ones(100), np.zeros(100)) == pytest.approx(1.0)
    assert expected_calibration_error(np.ones(100), np.ones(100)) == pytest.approx(0.0)


def test_bin_edges_are_right_closed():
    # Confidence exactly 1.0 belongs to the top bin (.5, 1]; alone with accuracy 1 it costs nothing.
    assert expected_calibration_error([1.0, 0.3], [1, 0], num_bins=2) == pytest.approx(0.5 * 0.3)
    # Exactly 0.5 with two bins lies in (0, .5], not with 0.6 in (.5, 1]:
    # 0.5·|1 − 0.5| + 0.5·|0 − 0.6| = 0.55 (pooled together it would be |0.5 − 0.55| = 0.05).
    assert expected_calibration_error([0.5, 0.6], [1, 0], num_bins=2) == pytest.approx(0.55)
    # Every interior edge k/15, each alone in its bin with accuracy 1: ECE = mean(1 − k/15).
    edges = np.arange(1, 16) / 15
    assert expected_calibration_error(edges, np.ones(15), num_bins=15) == pytest.approx(np.mean(1 - edges))
    # Each edge k/15 shares a bin with the middle of the bin to its left: one pooled bin with
    # accuracy 1/2, not two singletons (which would give (1 − k/15 + (k − ½)/15)/2 ≈ 0.483).
    for k in range(1, 15):
        conf = [k / 15, (k - 0.5) / 15]
        pooled = abs(0.5 - np.mean(conf))
        assert expected_calibration_error(conf, [1, 0], num_bins=15) == pytest.approx(pooled), k
    # A confidence of exactly 0 goes to the first bin rather than being dropped.
    assert expected_calibration_error([0.0, 0.1], [0, 0], num_bins=2) == pytest.approx(0.05)


def test_ece_errors():
    with pytest.raises(ValueError, match="equal-length vectors"):
        expected_calibration_error(np.ones(3), np.ones(2))
    with pytest.raises(ValueError, match="equal-length vectors"):
        expected_calibration_error(np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="empty"):
        expected_calibration_error(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="num_bins must be >= 1"):
        expected_calibration_error(np.ones(2), np.ones(2), num_bins=0)


def test_integral_calibration_error_is_mean_of_steps():
    table = pd.DataFrame({"step": [2, 1, 0], "ece": [0.3, 0.1, 0.2]})
    assert integral_calibration_error(table) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="no calibration steps"):
        integral_calibration_error(pd.DataFrame(columns=["step", "ece"]))


# ----------------------------------------------------------------------------
# CalibrationRecorder as a sampler callback

STEPS = 10
LABELS = torch.tensor([0, 1, 2, 3, 4, 5])


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    unet = DigitsUNet(channels=16, emb_dim=32).eval().requires_grad_(False)
    classifier = DigitsResNet(width=16).eval().requires_grad_(False)
    diffusion = GaussianDiffusion.respaced(1000, str(STEPS), "linear", "fixed_large")
    return unet, classifier, diffusion


def _sample(unet, diffusion, guidance, callback):
    return ddpm_sample(unet, diffusion, StackedRandomGenerator(range(len(LABELS))), (1, 8, 8), y=LABELS,
                       guidance=guidance, callback=callback)


def test_recorder_one_row_per_step(setup):
    unet, classifier, diffusion = setup
    guidance = ClassifierGuidance(classifier)
    recorder = CalibrationRecorder(guidance, LABELS)
    inputs = {}

    def both(**info):
        recorder(**info)
        inputs[info["step"]] = info["pred_xstart"]

    _sample(unet, diffusion, guidance, both)
    table = recorder.table(num_bins=5, num_steps=diffusion.num_steps)
    assert list(table["step"]) == list(range(STEPS - 1, -1, -1))
    assert table["t"].between(0, 1).all()
    assert table["t"].iloc[0] == pytest.approx((STEPS - 1) / STEPS) and table["t"].iloc[-1] == 0
    assert (table["n"] == len(LABELS)).all()
    assert table["ece"].between(0, 1).all()
    # Each row is the classifier's softmax on that step's x̂0, recomputed here.
    for step, x0 in inputs.items():
        with torch.no_grad():
            probs = torch.softmax(classifier(x0), 1)
        conf, pred = probs.max(1)
        row = table.set_index("step").loc[step]
        assert row["confidence"] == pytest.approx(conf.mean().item(), abs=1e-6)
        assert row["accuracy"] == pytest.approx((pred == LABELS).float().mean().item())
        assert row["ece"] == pytest.approx(expected_calibration_error(conf.numpy(), (pred == LABELS).numpy(), 5),
                                           abs=1e-6)
    assert integral_calibration_error(table) == pytest.approx(table["ece"].mean())


def test_recorder_temperature_and_time_conditioned_evaluator(setup):
    unet, classifier, diffusion = setup
    torch.manual_seed(1)
    noisy = DigitsResNet(width=16, time_conditioned=True).eval().requires_grad_(False)
    evaluator = ClassifierGuidance(noisy, input="xt", time_conditioned=True)
    hot = CalibrationRecorder(evaluator, LABELS, model_timesteps=diffusion.model_timesteps, temperature=0.5)
    plain = CalibrationRecorder(evaluator, LABELS, model_timesteps=diffusion.model_timesteps)
    states = {}

    def callback(**info):
        hot(**info)
        plain(**info)
        states[info["step"]] = info["x_t"]

    _sample(unet, diffusion, ClassifierGuidance(classifier), callback)
    k = STEPS // 2
    with torch.no_grad():
        logits = noisy(states[k], diffusion.model_timesteps(k, len(LABELS), "cpu"))
    expected = torch.softmax(0.5 * logits, 1).max(1).values.numpy()
    np.testing.assert_allclose(np.concatenate(hot.confidence[k]), expected, atol=1e-6)
    # A softer temperature lowers every confidence.
    assert (np.concatenate(hot.confidence[k]) < np.concatenate(plain.confidence[k])).all()
    assert np.isnan(plain.table(num_bins=5)["t"]).all()  # without num_steps there is no t


def test_recorder_follows_switched_guidance(setup):
    unet, classifier, diffusion = setup
    torch.manual_seed(2)
    other = DigitsResNet(width=16).eval().requires_grad_(False)
    calls = {"early": 0, "late": 0}
    handles = [classifier.register_forward_hook(lambda *_: calls.__setitem__("early", calls["early"] + 1)),
               other.register_forward_hook(lambda *_: calls.__setitem__("late", calls["late"] + 1))]
    switched = SwitchedGuidance(ClassifierGuidance(classifier), ClassifierGuidance(other), switch_step=3)
    recorder = CalibrationRecorder(switched, LABELS)
    try:
        _sample(unet, diffusion, None, recorder)
    finally:
        for h in handles:
            h.remove()
    assert calls == {"early": STEPS - 3, "late": 3}
    assert len(recorder.table(num_steps=STEPS)) == STEPS
