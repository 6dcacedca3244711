"""ADM respacing and the DDPM sampler (Algorithm 1): respacing against ADM's definition,
per-sample determinism, network-call bookkeeping (recurrence, CFG, switched guidance) and the
guided update reproduced by hand from the callback's record."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from offshelf.backbones.digits import NULL_LABEL, DigitsResNet, DigitsUNet
from offshelf.diffusion import GaussianDiffusion, beta_schedule, space_timesteps
from offshelf.guidance import ClassifierGuidance, Guidance, SwitchedGuidance, calibrated_log_prob
from offshelf.samplers.ddpm import ddpm_sample
from offshelf.seeding import StackedRandomGenerator

SHAPE = (1, 8, 8)
STEPS = 10


def adm_space_timesteps(num_timesteps, section_counts):
    """guided-diffusion's respace.py, section branch: the fractional stride is *accumulated*
    (cur_idx += frac_stride) and each position rounded with Python's round."""
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        frac_stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += frac_stride
        start += size
    return sorted(set(steps))


# ----------------------------------------------------------------------------
# Respacing

@pytest.mark.parametrize("count,strides", [(250, {4, 5}), (100, {10, 11})])
def test_single_section_respacing(count, strides):
    kept = space_timesteps(1000, str(count))
    assert kept == [round(k * 999 / (count - 1)) for k in range(count)]
    assert kept == adm_space_timesteps(1000, [count])
    assert len(kept) == count and kept[0] == 0 and kept[-1] == 999
    assert set(np.diff(kept)) == strides
    assert space_timesteps(1000, count) == kept  # an int works like its string


def test_multi_section_respacing():
    # 1000 steps: the first section gets the remainder (334, 333, 333 steps).
    kept = space_timesteps(1000, "10,15,20")
    assert len(kept) == 45
    assert kept[:10] == list(range(0, 334, 37))  # stride 333/9 = 37 exactly
    assert kept[10] == 334 and kept[25] == 667 and kept[-1] == 999
    assert kept == adm_space_timesteps(1000, [10, 15, 20])
    assert space_timesteps(1000, [10, 15, 20]) == kept
    # ADM's docstring example, 300 steps in sections of 100: exact strides where there are no ties.
    kept = space_timesteps(300, "10,15,20")
    assert len(kept) == 45
    assert kept[:10] == list(range(0, 100, 11))
    assert kept[10] == 100 and kept[24] == 199 and kept[25] == 200 and kept[-1] == 299


@pytest.mark.parametrize("spacing,stride", [("ddim50", 20), ("ddim25", 40), ("ddim10", 100)])
def test_ddim_respacing(spacing, stride):
    assert space_timesteps(1000, spacing) == list(range(0, 1000, stride))


def test_respacing_errors():
    with pytest.raises(ValueError, match="cannot divide a section of 500 steps into 600"):
        space_timesteps(1000, "600,10")
    with pytest.raises(ValueError, match="exactly 7 steps"):
        space_timesteps(10, "ddim7")
    assert space_timesteps(5, "") == list(range(5))


@pytest.mark.parametrize("num_steps,counts", [(1000, [21]), (1000, [23]), (1000, [31]), (300, [10, 15, 20])])
def test_respacing_matches_adm_at_rounding_ties(num_steps, counts):
    assert space_timesteps(num_steps, ",".join(map(str, counts))) == adm_space_timesteps(num_steps, counts)


@pytest.mark.parametrize("spacing", ["250", "100", "10,15,20", "ddim50", "10"])
def test_respaced_betas_reproduce_alphas_cumprod(spacing):
    base = np.cumprod(1 - beta_schedule("linear", 1000))
    diffusion = GaussianDiffusion.respaced(1000, spacing, "linear", "fixed_small")
    assert diffusion.timestep_map == space_timesteps(1000, spacing)
    np.testing.assert_allclose(np.cumprod(1 - diffusion.betas), base[diffusion.timestep_map], rtol=1e-12)
    np.testing.assert_allclose(diffusion.alphas_cumprod, base[diffusion.timestep_map], rtol=1e-12)


# ----------------------------------------------------------------------------
# The sampler on a tiny random digits UNet

@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return DigitsUNet(channels=16, emb_dim=32).eval().requires_grad_(False)


def _classifier(seed):
    torch.manual_seed(seed)
    return DigitsResNet(width=16).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion.respaced(1000, str(STEPS), "linear", "fixed_large")


LABELS = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])


def _record_calls(module):
    calls = []
    handle = module.register_forward_pre_hook(lambda mod, args: calls.append([a.clone() if a is not None else None
                                                                              for a in args]))
    return calls, handle


def _run(model, diffusion, seeds=range(8), labels=LABELS, **kwargs):
    return ddpm_sample(model, StackedRandomGenerator(seeds), diffusion, shape=SHAPE, y=labels, **kwargs)


def test_sharded_sampling_is_bitwise_identical(unet, diffusion):
    guidance = Guidance(ClassifierGuidance(_classifier(1), 1.0, 0.5), scale=2.0, sine_factor=0.3,
                        sigma_max_mode="official")
    full = _run(unet, diffusion, range(8), LABELS, guidance=guidance)
    first = _run(unet, diffusion, range(4), LABELS[:4], guidance=guidance)
    second = _run(unet, diffusion, range(4, 8), LABELS[4:], guidance=guidance)
    assert torch.equal(full, torch.cat([first, second]))
    assert torch.isfinite(full).all()
    assert not torch.equal(full, _run(unet, diffusion, range(8, 16), LABELS, guidance=guidance))


def test_unguided_sampling_calls_model_once_per_step_with_original_timesteps(unet, diffusion):
    calls, handle = _record_calls(unet)
    try:
        _run(unet, diffusion)
    finally:
        handle.remove()
    assert len(calls) == STEPS
    timesteps = [int(c[1][0]) for c in calls]
    assert timesteps == diffusion.timestep_map[::-1]
    assert all(torch.equal(c[2], LABELS) for c in calls)


def test_recurrent_steps_repeat_all_but_the_last_step(unet, diffusion):
    calls, handle = _record_calls(unet)
    steps = []
    try:
        twice = _run(unet, diffusion, recurrent_steps=2, callback=lambda step, **_: steps.append(step))
    finally:
        handle.remove()
    assert len(calls) == 2 * (STEPS - 1) + 1
    expected_t = [t for t in diffusion.timestep_map[:0:-1] for _ in range(2)] + [diffusion.timestep_map[0]]
    assert [int(c[1][0]) for c in calls] == expected_t
    assert steps == list(range(STEPS - 1, -1, -1))  # the callback still sees each step once
    assert not torch.allclose(twice, _run(unet, diffusion))
    with pytest.raises(ValueError, match="recurrent_steps must be >= 1"):
        _run(unet, diffusion, recurrent_steps=0)


def test_cfg_doubles_the_batch_with_null_labels(unet, diffusion):
    calls, handle = _record_calls(unet)
    first_step = {}

    def keep_first(step, **info):
        first_step.setdefault("x0", info["pred_xstart"])

    try:
        _run(unet, diffusion, cfg_scale=3.0, null_label=NULL_LABEL, clip_denoised=False, callback=keep_first)
    finally:
        handle.remove()
    assert len(calls) == STEPS
    for x, t, y in calls:
        assert x.shape == (16, *SHAPE)
        assert torch.equal(x[:8], x[8:]) and torch.equal(t[:8], t[8:])
        assert torch.equal(y, torch.cat([LABELS, torch.full_like(LABELS, NULL_LABEL)]))
    # The first x̂0 comes from ε_u + w·(ε_c − ε_u), computed here from two separate calls.
    x_T = StackedRandomGenerator(range(8)).randn(SHAPE)
    k = STEPS - 1
    t = diffusion.model_timesteps(k, 8, "cpu")
    with torch.no_grad():
        cond, uncond = unet(x_T, t, LABELS), unet(x_T, t, torch.full_like(LABELS, NULL_LABEL))
    # Compare in ε units: x̂0 = x/sqrt(ᾱ) − sqrt(1/ᾱ − 1)·ε amplifies batch-size rounding ~150×.
    ab = diffusion.alphas_cumprod[k]
    eps_used = (x_T / math.sqrt(ab) - first_step["x0"]) / math.sqrt(1 / ab - 1)
    torch.testing.assert_close(eps_used, uncond + 3.0 * (cond - uncond), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(eps_used, cond, atol=1e-3)
    with pytest.raises(ValueError, match="null label"):
        _run(unet, diffusion, cfg_scale=3.0)


def test_guided_update_is_algorithm_1(unet, diffusion):
    """Replay every step from the callback record: x_{k−1} = μ + (Σ + max(γ sin(πk/T), 0)·Σ_max)·s·g
    + 1[k>0]·sqrt(Σ)·z, with z the sample's own stream and Σ_max the running max of Σ[0,0,0,0]."""
    classifier = _classifier(1)
    guidance = Guidance(ClassifierGuidance(classifier, 1.0, 0.5), scale=2.0, sine_factor=0.3,
                        sigma_max_mode="official")
    record = []
    final = _run(unet, diffusion, guidance=guidance,
                 callback=lambda **info: record.append(info))
    rng = StackedRandomGenerator(range(8))
    x = rng.randn(SHAPE)
    sigma_max = 0.0
    for info in record:
        k = info["step"]
        torch.testing.assert_close(info["x_t"], x, atol=1e-5, rtol=1e-5)
        x = info["x_t"]  # replay each step from the sampler's own state: no drift of rounding
        with torch.no_grad():
            out = diffusion.p_mean_variance(unet(x, diffusion.model_timesteps(k, 8, "cpu"), LABELS), x, k)
        torch.testing.assert_close(info["pred_xstart"], out.pred_xstart)
        # g = ∇_{x̂0} log p̃(y | x̂0) by autograd on the classifier alone.
        x0 = out.pred_xstart.clone().requires_grad_(True)
        log_p = calibrated_log_prob(classifier(x0), LABELS, 1.0, 0.5)
        (g,) = torch.autograd.grad(log_p.sum(), x0)
        torch.testing.assert_close(info["grad"], g)
        sigma_max = max(sigma_max, float(out.variance[0, 0, 0, 0]))
        bump = max(0.3 * math.sin(math.pi * k / STEPS), 0.0) * sigma_max
        z = rng.randn(SHAPE)
        x = out.mean + (out.variance + bump) * 2.0 * g + (k > 0) * out.variance.sqrt() * z
    torch.testing.assert_close(final, x, atol=1e-5, rtol=1e-5)
    # fixed_large: Σ grows with k, so the running max is the first step's β, i.e. 'first_beta'.
    assert sigma_max == pytest.approx(float(diffusion.betas[-1]), rel=1e-6)
    first_beta = _run(unet, diffusion, guidance=replace(guidance, sigma_max_mode="first_beta"))
    torch.testing.assert_close(first_beta, final, atol=1e-5, rtol=1e-5)


def test_through_denoiser_gradient_is_the_chain_rule(unet, diffusion):
    classifier = _classifier(2)
    guidance = ClassifierGuidance(classifier, 1.0, 1.0)
    grads = {}
    for through in (False, True):
        record = []
        _run(unet, diffusion, guidance=Guidance(guidance, scale=1.0, through_denoiser=through), clip_denoised=False,
             callback=lambda step, grad, **_: record.append(grad))
        grads[through] = record
    assert len(grads[True]) == STEPS
    assert all(torch.isfinite(g).all() for g in grads[True])
    # At the first step both runs start from the same x_T; the through-denoiser gradient is
    # ∇_{x_T} log p̃(y | x̂0(x_T)) including the network Jacobian and 1/sqrt(ᾱ).
    x_T = StackedRandomGenerator(range(8)).randn(SHAPE).requires_grad_(True)
    k = STEPS - 1
    with torch.enable_grad():
        eps = unet(x_T, diffusion.model_timesteps(k, 8, "cpu"), LABELS)
        x0 = diffusion.predict_xstart(x_T, k, eps)
        (expected,) = torch.autograd.grad(calibrated_log_prob(classifier(x0), LABELS).sum(), x_T)
    torch.testing.assert_close(grads[True][0], expected, atol=1e-5, rtol=1e-4)
    relative = (grads[True][0] - grads[False][0]).norm() / grads[False][0].norm()
    assert relative > 0.1


def test_switched_guidance_uses_early_then_late_classifier(unet, diffusion):
    early, late = _classifier(3), _classifier(4)
    events = []
    handles = [early.register_forward_hook(lambda *_: events.append("early")),
               late.register_forward_hook(lambda *_: events.append("late"))]
    switch = 4
    guidance = SwitchedGuidance(ClassifierGuidance(early), ClassifierGuidance(late), switch_step=switch)
    try:
        _run(unet, diffusion, guidance=Guidance(guidance), callback=lambda step, **_: events.append(step))
    finally:
        for h in handles:
            h.remove()
    expected = []
    for k in range(STEPS - 1, -1, -1):
        expected += ["early" if k >= switch else "late", k]
    assert events == expected


def test_guidance_label_overrides_y_and_is_required(unet, diffusion):
    classifier = _classifier(5)
    target = torch.full_like(LABELS, 9)
    record = []
    _run(unet, diffusion, guidance=Guidance(ClassifierGuidance(classifier), label=target),
         callback=lambda **info: record.append(info))
    for info in record[:: STEPS // 3]:
        x0 = info["pred_xstart"].clone().requires_grad_(True)
        (toward_9,) = torch.autograd.grad(calibrated_log_prob(classifier(x0), target).sum(), x0)
        (toward_y,) = torch.autograd.grad(calibrated_log_prob(classifier(x0), LABELS).sum(), x0)
        torch.testing.assert_close(info["grad"], toward_9)
        assert not torch.allclose(info["grad"], toward_y)
    with pytest.raises(ValueError, match="guidance needs a target label"):
        ddpm_sample(unet, StackedRandomGenerator(range(2)), diffusion, shape=SHAPE, y=None,
                    guidance=Guidance(ClassifierGuidance(classifier)))
