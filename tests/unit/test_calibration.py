"""Expected calibration error by hand, its bin edges, and the per-step recorder as a sampler
callback (paper Sec. 4.1, Eq. 1)."""

from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
import torch

from offshelf.backbones.digits import DigitsResNet, DigitsUNet
from offshelf.calibration import CalibrationRecorder, expected_calibration_error, integral_calibration_error
from offshelf.diffusion import GaussianDiffusion
from offshelf.guidance import ClassifierGuidance, Guidance, SwitchedGuidance
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
    return ddpm_sample(unet, StackedRandomGenerator(range(len(LABELS))), diffusion,
                       guidance=None if guidance is None else Guidance(guidance), callback=callback,
                       shape=(1, 8, 8), y=LABELS)


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


# ----------------------------------------------------------------------------
# Guided calibration (calibration.trajectories: [unguided, guided]; docs/method.md §6)

SEEDS = list(range(10_000_000, 10_000_006))


@pytest.fixture(scope="module")
def digits_models():
    """Small random digits networks on a 10-step schedule, as a DDPM backend loads them."""
    from offshelf.backbones.digits import IMAGE_SHAPE, NULL_LABEL, NUM_CLASSES
    from offshelf.backends.ddpm import DDPMModels

    torch.manual_seed(3)
    unet = DigitsUNet(channels=16, emb_dim=32).eval().requires_grad_(False)
    offshelf = DigitsResNet(width=16).eval().requires_grad_(False)
    finetuned = DigitsResNet(width=16, time_conditioned=True).eval().requires_grad_(False)
    diffusion = GaussianDiffusion.respaced(1000, str(STEPS), "linear", "fixed_large")
    return DDPMModels(unet, diffusion, IMAGE_SHAPE, NUM_CLASSES, offshelf, finetuned, NULL_LABEL)


def _profile_by_hand(models, trajectory, classify, batch_size, num_bins):
    """Run the backend's sampler (``sample_batch``) on ``trajectory`` batch by batch, keep every
    step's x̂0 and x_t, and build the per-step ECE table from ``classify(x_t, x̂0, step)`` logits."""
    from offshelf.backends.ddpm import sample_batch

    confidence, correct, images = defaultdict(list), defaultdict(list), []
    for i in range(0, len(SEEDS), batch_size):
        batch = SEEDS[i:i + batch_size]
        states = {}
        x, labels = sample_batch(trajectory, models, batch,
                                 callback=lambda step, x_t, pred_xstart, **_: states.__setitem__(step, (x_t, pred_xstart)))
        images.append(x)
        for step, (x_t, x0) in states.items():
            with torch.no_grad():
                conf, pred = torch.softmax(classify(x_t, x0, step), 1).max(1)
            confidence[step].append(conf.numpy())
            correct[step].append((pred == labels).numpy())
    rows = [dict(step=k, ece=expected_calibration_error(np.concatenate(confidence[k]), np.concatenate(correct[k]),
                                                         num_bins),
                 accuracy=float(np.concatenate(correct[k]).mean()), confidence=float(np.concatenate(confidence[k]).mean()))
            for k in sorted(confidence, reverse=True)]
    return pd.DataFrame(rows), torch.cat(images)


def test_guided_profile_measures_the_x0_its_own_guided_sampler_computes(digits_models):
    """Along guided trajectories the recorder sees exactly the x̂0 of the guided sampler: the
    profile equals, bitwise, the ECE of the Softplus(3) classifier recomputed on the x̂0 of a plain
    run of the backend's sampler with the same setting and seeds (two batches, merged)."""
    from offshelf.backends.digits import DigitsBackend
    from offshelf.classifiers.softplus import softplus_surgery
    from offshelf.settings import Setting

    backend = DigitsBackend()
    design = Setting(regime="uncond", softplus_beta=3, marginal_temperature=0.5, sine_factor=0.3, scale=3)
    profile = backend.calibration_profile(digits_models, design, SEEDS, batch_size=4, num_bins=5, guided=True)
    smooth = softplus_surgery(digits_models.offshelf, 3.0)
    expected, guided_images = _profile_by_hand(digits_models, design, lambda x_t, x0, k: smooth(x0), 4, 5)
    for column in ("step", "ece", "accuracy", "confidence"):
        assert profile[column].tolist() == expected[column].tolist(), column
    assert (profile["n"] == len(SEEDS)).all()
    # the trajectories are guided ones: the same seeds unguided end elsewhere
    _, unguided_images = _profile_by_hand(digits_models, Setting(regime="uncond", method="unguided"),
                                          lambda x_t, x0, k: smooth(x0), 4, 5)
    assert not torch.equal(guided_images, unguided_images)


def test_guided_profile_of_a_time_conditioned_classifier_sees_x_t(digits_models):
    """The fine-tuned classifier guides on x_t with the timestep; its guided profile is its ECE on
    the x_t of those guided trajectories."""
    from offshelf.backends.digits import DigitsBackend
    from offshelf.settings import Setting

    design = Setting(regime="cond", classifier="finetuned", input="xt", scale=2)
    profile = DigitsBackend().calibration_profile(digits_models, design, SEEDS, batch_size=6, num_bins=5, guided=True)
    diffusion = digits_models.diffusion
    expected, _ = _profile_by_hand(
        digits_models, design, lambda x_t, x0, k: digits_models.finetuned(x_t, diffusion.model_timesteps(k, len(x_t), "cpu")),
        6, 5)
    for column in ("ece", "accuracy", "confidence"):
        assert profile[column].tolist() == expected[column].tolist(), column


def test_unguided_profile_is_untouched_by_guided_calibration(digits_models):
    """The unguided profile stays what it was: the probe classifier (τ = 1, no surgery for ReLU) on
    the x̂0 of unguided conditional trajectories, bitwise; the stage ignores the guided keys, a
    guided run in between leaves it alone, and the job param that reruns it is unchanged."""
    from offshelf import stages
    from offshelf.backends.digits import DigitsBackend
    from offshelf.planning.params import calibration_params
    from offshelf.settings import Setting, probe_setting

    backend = DigitsBackend()
    probe = probe_setting("offshelf-x0_relu")
    plain = {"num_samples": len(SEEDS), "num_bins": 5}
    with_guided = dict(plain, trajectories=["unguided", "guided"], guided_scale={"cond": 1, "uncond": 3})
    before = stages.calibration_profile(backend, digits_models, probe, plain, 4)
    stages.calibration_profile(backend, digits_models, Setting(regime="cond", scale=1), with_guided, 4, guided=True)
    after = stages.calibration_profile(backend, digits_models, probe, with_guided, 4)
    pd.testing.assert_frame_equal(before, after, check_exact=True)
    expected, _ = _profile_by_hand(digits_models, Setting(regime="cond", method="unguided"),
                                   lambda x_t, x0, k: digits_models.offshelf(x0), 4, 5)
    for column in ("step", "ece", "accuracy", "confidence"):
        assert before[column].tolist() == expected[column].tolist(), column
    assert calibration_params({"calibration": with_guided}) == calibration_params({"calibration": plain}) \
        == {"num_bins": 5, "num_samples": len(SEEDS)}


def test_guided_profile_needs_a_guided_setting(digits_models):
    from offshelf.backends.digits import DigitsBackend
    from offshelf.settings import Setting

    with pytest.raises(ValueError, match="needs a guided setting, got cond_unguided"):
        DigitsBackend().calibration_profile(digits_models, Setting(method="unguided"), SEEDS, 6, guided=True)


# ----------------------------------------------------------------------------
# The config key and what it plans

@pytest.fixture(scope="module")
def default_config():
    import yaml

    from workflow_utils import REPO

    return yaml.safe_load((REPO / "config.yaml").read_text())


@pytest.mark.parametrize("calibration, expected", [
    (dict(trajectories=["unguided", "guidde"]),
     r"config key 'calibration\.trajectories\.1' = 'guidde'; allowed values: unguided, guided"),
    (dict(trajectories=[]), r"config key 'calibration\.trajectories' = \[\]"),
    (dict(trajectories=["guided"]), r"config key 'calibration\.trajectories' = \['guided'\]: must include 'unguided'"),
    (dict(guided_scale={"cond": 1}), r"config key 'calibration\.guided_scale\.uncond' is missing"),
    (dict(guided_scale={"cond": 1, "uncond": 3, "conditional": 2}),
     r"config key 'calibration\.guided_scale': unknown key\(s\) \['conditional'\]; allowed keys: cond, uncond"),
    (dict(guided_scale={"cond": "one", "uncond": 3}), r"config key 'calibration\.guided_scale\.cond' = 'one'"),
    (dict(guided_scal={"cond": 1, "uncond": 3}), r"config key 'calibration': unknown key\(s\) \['guided_scal'\]"),
])
def test_guided_calibration_key_errors_name_the_key(default_config, calibration, expected):
    import copy

    from offshelf.config import ConfigError, validate_config

    config = copy.deepcopy(default_config)
    config["calibration"].update(calibration)
    if "guided_scal" in calibration:
        del config["calibration"]["guided_scale"]
    with pytest.raises(ConfigError, match=expected):
        validate_config(config)


def test_guided_calibration_plan(default_config):
    """config.yaml measures every probe of Tables 2-4 along its own guided trajectories in each
    regime, at guided_scale, once per distinct design; the tables' rows and the figures' curves
    name the same files; without the key (ImageNet configs) nothing guided is planned."""
    import copy

    from offshelf.config import validate_config
    from offshelf.planning.plan import build_plan
    from offshelf.planning.probes import figure_guided_probes
    from offshelf.planning.rows import table_rows

    validate_config(copy.deepcopy(default_config))
    plan = build_plan(default_config)
    guided = plan.guided_probes
    scales = default_config["calibration"]["guided_scale"]
    assert len(guided) == len(plan.probes) * len(default_config["regimes"])
    assert {(s.probe, s.regime) for s in guided.values()} == {(p, r) for p in plan.probes
                                                             for r in default_config["regimes"]}
    for name, s in guided.items():
        assert s.name == name and s.method == "guided" and s.scale == scales[s.regime]
    rows = [r for r in table_rows(default_config) if r.probe]
    assert rows and all(r.guided_probe in guided and guided[r.guided_probe].probe == r.probe
                        and guided[r.guided_probe].regime == r.regime for r in rows)
    # the row's design, not its best-of-grid scale: τ and γ of the row travel, the scale is guided_scale's
    row = next(r for r in rows if r.table == "table4" and r.label == "Softplus beta=3" and r.regime == "uncond")
    assert row.guided_probe == "uncond_offshelf-x0_sp3_tj1_tm1_g0_s3_r1"
    for settings in figure_guided_probes(default_config, "figure2").values():
        assert all(s.name in guided for s in settings)
    assert plan.job_counts["calibrate"] == len(plan.probes) + len(guided)

    unguided_only = copy.deepcopy(default_config)
    for key in ("trajectories", "guided_scale"):
        del unguided_only["calibration"][key]
    validate_config(unguided_only)
    assert build_plan(unguided_only).guided_probes == {} and all(r.guided_probe is None for r in table_rows(unguided_only))


def test_tables_show_guided_ice_beside_ice(default_config, tmp_path):
    """A calibration table's CSV frame gets ``ice_guided`` (from the row's guided calibration file)
    and its Markdown a column right after ``ice`` with the legend; a table without it is unchanged."""
    from offshelf.figures import calibration_curves
    from offshelf.planning.rows import table_rows
    from offshelf.tables import markdown, table_frame

    # a scale grid instead of the search, so every row has its candidates before any job ran
    config = {k: v for k, v in default_config.items() if k != "search"} | {"scales": {"cond": [1], "uncond": [3]}}
    rows = [r for r in table_rows(config) if r.table == "table3"]
    metrics = {s.name: {"fid": 0.5 + i} for i, r in enumerate(rows) for s in r.candidates}
    ice = {r.probe: 0.1 for r in rows} | {r.guided_probe: 0.2 + 0.1 * (r.regime == "uncond") for r in rows}
    frame = table_frame(rows, metrics, ice)
    assert frame["ice_guided"].tolist() == [0.2 + 0.1 * (r.regime == "uncond") for r in rows]
    assert frame["guided_probe"].tolist() == [r.guided_probe for r in rows]
    text = markdown(frame, ["ice", "fid"], "Table 3")
    header = text.splitlines()[2]
    assert "| cond ice | cond ice_guided | cond fid | cond scale | uncond ice | uncond ice_guided | uncond fid |" in header
    assert "| 0.1 | 0.2 |" in text and "| 0.1 | 0.3 |" in text and "`ice_guided`" in text
    # guided calibration off: the table reads as before
    plain = markdown(frame.drop(columns=["ice_guided"]), ["ice", "fid"], "Table 3")
    assert "ice_guided" not in plain and plain.splitlines()[2] == header.replace(" cond ice_guided |", "").replace(
        " uncond ice_guided |", "")

    # Figures 1-2: one panel per trajectory kind
    table = pd.DataFrame({"step": [2, 1, 0], "ece": [0.3, 0.2, 0.1]})
    path = tmp_path / "figure1.png"
    calibration_curves({"unguided, cond": {"a": table}, "guided, cond (scale 1)": {"a": table * 0.5}}, path, "Fig. 1")
    assert path.stat().st_size > 1000
