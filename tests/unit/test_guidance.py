"""Calibrated guidance: every formula of offshelf.guidance and Softplus surgery against values
computed by hand (numpy) or in closed form."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from offshelf.classifiers.softplus import count_relus, softplus_surgery
from offshelf.guidance import (
    ClassifierGuidance, InputAdapter, SwitchedGuidance, adm_guidance_weight, calibrated_log_prob,
    calibrated_probs, edm_step_size, guidance_at, sine_bump,
)

LOGITS = np.array([[1.0, 2.0, 0.5], [-1.0, 0.0, 3.0]])
LABELS = np.array([1, 0])


def _numpy_calibrated_log_prob(logits, y, tau1, tau2):
    joint = tau1 * logits[np.arange(len(y)), y]
    scaled = tau2 * logits
    top = scaled.max(axis=1)
    return joint - (top + np.log(np.exp(scaled - top[:, None]).sum(axis=1)))


# ----------------------------------------------------------------------------
# calibrated_log_prob: τ1·f_y − logsumexp(τ2·f)

def test_equal_temperatures_is_log_softmax():
    got = calibrated_log_prob(torch.tensor(LOGITS), torch.tensor(LABELS), 1.0, 1.0)
    expected = LOGITS[np.arange(2), LABELS] - np.log(np.exp(LOGITS).sum(axis=1))
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6)
    # By hand for row 0: 2 − log(e + e² + e^0.5).
    assert got[0].item() == pytest.approx(2 - math.log(math.e + math.e ** 2 + math.e ** 0.5), abs=1e-6)
    np.testing.assert_allclose(got.numpy(), torch.log_softmax(torch.tensor(LOGITS), 1)[[0, 1], LABELS].numpy(),
                               atol=1e-6)


def test_marginal_temperature_half():
    got = calibrated_log_prob(torch.tensor(LOGITS), torch.tensor(LABELS), 1.0, 0.5)
    # Row 1 by hand: −1 − log(e^−0.5 + e^0 + e^1.5).
    assert got[1].item() == pytest.approx(-1 - math.log(math.exp(-0.5) + 1 + math.exp(1.5)), abs=1e-6)
    np.testing.assert_allclose(got.numpy(), _numpy_calibrated_log_prob(LOGITS, LABELS, 1.0, 0.5), atol=1e-6)


def test_zero_marginal_temperature_is_raw_logit_minus_log_k():
    got = calibrated_log_prob(torch.tensor(LOGITS), torch.tensor(LABELS), 1.0, 0.0)
    np.testing.assert_allclose(got.numpy(), LOGITS[np.arange(2), LABELS] - math.log(3), atol=1e-6)


def test_joint_temperature_scales_target_logit():
    got = calibrated_log_prob(torch.tensor(LOGITS), torch.tensor(LABELS), 2.0, 0.5)
    np.testing.assert_allclose(got.numpy(), _numpy_calibrated_log_prob(LOGITS, LABELS, 2.0, 0.5), atol=1e-6)


@pytest.mark.parametrize("tau1,tau2", [(1.0, 1.0), (1.0, 0.5), (1.0, 0.0), (2.0, 0.3)])
def test_gradient_wrt_logits_is_onehot_minus_tempered_softmax(tau1, tau2):
    logits = torch.tensor(LOGITS, dtype=torch.float32, requires_grad=True)
    y = torch.tensor(LABELS)
    (grad,) = torch.autograd.grad(calibrated_log_prob(logits, y, tau1, tau2).sum(), logits)
    onehot = np.eye(3)[LABELS]
    scaled = tau2 * LOGITS
    softmax = np.exp(scaled - scaled.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    np.testing.assert_allclose(grad.numpy(), tau1 * onehot - tau2 * softmax, atol=1e-6)


def test_log_prob_is_fp32_and_stable_for_large_logits():
    logits = torch.tensor([[1000.0, 0.0], [0.0, -1000.0]], dtype=torch.float64)
    got = calibrated_log_prob(logits, torch.tensor([0, 0]))
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), [0.0, 0.0], atol=1e-6)


def test_calibrated_probs_is_tempered_softmax():
    probs = calibrated_probs(torch.tensor(LOGITS), 0.5)
    expected = np.exp(0.5 * LOGITS) / np.exp(0.5 * LOGITS).sum(1, keepdims=True)
    np.testing.assert_allclose(probs.numpy(), expected, atol=1e-6)


def test_calibrated_log_prob_shape_errors():
    with pytest.raises(ValueError, match=r"logits must be \[batch, classes\]"):
        calibrated_log_prob(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must be \[batch\]=2"):
        calibrated_log_prob(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must be \[batch\]=2"):
        calibrated_log_prob(torch.zeros(2, 3), torch.zeros(2, 1, dtype=torch.long))


# ----------------------------------------------------------------------------
# Softplus surgery on torchvision's ResNet-50

@pytest.fixture(scope="module")
def resnet50():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).eval()


def _bottlenecks(model):
    from torchvision.models.resnet import Bottleneck
    return [m for m in model.modules() if isinstance(m, Bottleneck)]


def test_softplus_surgery_replaces_every_relu_module(resnet50):
    relus_before = [m for m in resnet50.modules() if isinstance(m, nn.ReLU)]
    ids_before = [id(m) for m in resnet50.modules()]
    assert len(relus_before) == 1 + 16  # the stem's relu and one per Bottleneck
    smooth = softplus_surgery(resnet50, beta=3.0)
    assert smooth is not resnet50
    assert count_relus(smooth) == 0
    softplus = [m for m in smooth.modules() if isinstance(m, nn.Softplus)]
    assert len(softplus) == 17
    assert all(m.beta == 3.0 for m in softplus)
    # The original is untouched: same module objects, still ReLU.
    assert [id(m) for m in resnet50.modules()] == ids_before
    assert count_relus(resnet50) == 17
    assert not any(isinstance(m, nn.Softplus) for m in resnet50.modules())
    # Weights are copied, not shared.
    assert smooth.conv1.weight.data_ptr() != resnet50.conv1.weight.data_ptr()
    assert torch.equal(smooth.conv1.weight, resnet50.conv1.weight)


def _count_calls(model, kind):
    calls = {"n": 0}
    hooks = [m.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
             for m in model.modules() if isinstance(m, kind)]
    return calls, hooks


def test_reused_bottleneck_relu_calls_all_go_to_softplus(resnet50):
    smooth = softplus_surgery(resnet50, beta=3.0)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    per_block = []
    hooks = []
    for block in _bottlenecks(resnet50):
        counter = {"n": 0}
        per_block.append(counter)
        hooks.append(block.relu.register_forward_hook(lambda *_, c=counter: c.__setitem__("n", c["n"] + 1)))
    relu_calls, relu_hooks = _count_calls(resnet50, nn.ReLU)
    with torch.no_grad():
        resnet50(x)
    for h in hooks + relu_hooks:
        h.remove()
    assert [c["n"] for c in per_block] == [3] * 16  # bn1, bn2 and after the residual add
    assert relu_calls["n"] == 1 + 3 * 16

    soft_calls, soft_hooks = _count_calls(smooth, nn.Softplus)
    leftover_calls, leftover_hooks = _count_calls(smooth, nn.ReLU)
    with torch.no_grad():
        smooth(x)
    for h in soft_hooks + leftover_hooks:
        h.remove()
    assert soft_calls["n"] == 1 + 3 * 16
    assert leftover_calls["n"] == 0


def test_softplus_outputs_approach_relu_as_beta_grows(resnet50):
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        relu_out = resnet50(x)
        rel_err = {beta: ((softplus_surgery(resnet50, beta)(x) - relu_out).norm() / relu_out.norm()).item()
                   for beta in (1.0, 10.0, 1e3)}
    assert rel_err[1.0] > 1e-2  # a genuinely different network
    assert rel_err[1.0] > rel_err[10.0] > rel_err[1e3]
    assert rel_err[1e3] < 1e-2


def test_softplus_surgery_infinite_beta_is_equal_copy(resnet50):
    copy_ = softplus_surgery(resnet50, math.inf)
    assert copy_ is not resnet50
    assert count_relus(copy_) == 17
    assert not any(isinstance(m, nn.Softplus) for m in copy_.modules())
    for (k1, v1), (k2, v2) in zip(resnet50.state_dict().items(), copy_.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(copy_(x), resnet50(x))


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan")])
def test_softplus_surgery_rejects_nonpositive_beta(beta):
    with pytest.raises(ValueError, match="softplus beta must be > 0"):
        softplus_surgery(nn.Sequential(nn.ReLU()), beta)


def test_softplus_surgery_handles_nested_and_top_level_relus():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Sequential(nn.ReLU(), nn.Linear(2, 1)))
    smooth = softplus_surgery(model, 5.0)
    assert count_relus(smooth) == 0
    assert sum(isinstance(m, nn.Softplus) for m in smooth.modules()) == 2
    x = torch.tensor([[0.3, -0.7]])
    # Softplus(β)(u) = log(1 + e^{βu})/β, applied twice by hand.
    w1, b1 = model[0].weight.detach().numpy(), model[0].bias.detach().numpy()
    w2, b2 = model[2][1].weight.detach().numpy(), model[2][1].bias.detach().numpy()
    sp = lambda u: np.log1p(np.exp(5.0 * u)) / 5.0  # noqa: E731
    expected = sp(sp(x.numpy() @ w1.T + b1)) @ w2.T + b2
    np.testing.assert_allclose(smooth(x).detach().numpy(), expected, atol=1e-6)


# ----------------------------------------------------------------------------
# InputAdapter

def test_input_adapter_default_is_identity():
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(InputAdapter()(x), x)


def test_input_adapter_upsamples_bilinearly():
    x = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])
    got = InputAdapter(resize=4)(x)[0, 0]
    # align_corners=False: output j samples input coordinate (j + 0.5)/2 − 0.5, clamped at the border.
    row = lambda a, b: [a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b]  # noqa: E731
    top, bottom = row(1.0, 3.0), row(5.0, 7.0)
    expected = torch.tensor([row(t, b) for t, b in zip(top, bottom)]).T
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_input_adapter_downsamples_with_antialiasing():
    # Anti-aliased 2× reduction is a triangle filter of half-width 2 (weights 1,3,3,1 /8),
    # renormalised where it falls off the border: (3a+3b+c)/7 and (b+3c+3d)/7 per axis.
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    reduce = lambda v: np.array([(3 * v[0] + 3 * v[1] + v[2]) / 7, (v[1] + 3 * v[2] + 3 * v[3]) / 7])  # noqa: E731
    rows = np.stack([reduce(r) for r in x[0, 0].numpy()])
    expected = np.stack([reduce(c) for c in rows.T]).T
    got = InputAdapter(resize=2)(x)[0, 0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_input_adapter_resizes_to_a_square():
    assert InputAdapter(resize=2)(torch.zeros(1, 1, 2, 4)).shape == (1, 1, 2, 2)
    assert InputAdapter(resize=2)(torch.zeros(1, 1, 2, 2)).shape == (1, 1, 2, 2)


def test_input_adapter_resizes_when_only_the_height_differs():
    assert InputAdapter(resize=2)(torch.zeros(1, 1, 4, 2)).shape == (1, 1, 2, 2)


def test_input_adapter_normalises_from_minus_one_one():
    x = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    got = InputAdapter(mean=[0.5, 0.4, 0.3], std=[0.25, 0.2, 0.1])(x)
    # [-1,1] → [0,1]: 0, 0.5, 1 ; then (v − mean)/std.
    expected = torch.tensor([(0 - 0.5) / 0.25, (0.5 - 0.4) / 0.2, (1 - 0.3) / 0.1]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_input_adapter_needs_mean_and_std_together():
    with pytest.raises(ValueError, match="both mean and std"):
        InputAdapter(mean=[0.5])(torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="both mean and std"):
        InputAdapter(std=[0.5])(torch.zeros(1, 1, 2, 2))


# ----------------------------------------------------------------------------
# ClassifierGuidance with a linear classifier f(x) = W·vec(x)

SHAPE = (2, 2, 2)  # C, H, W
NUM_CLASSES = 4


def _linear_classifier(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(SHAPE)), NUM_CLASSES, bias=False))


def _closed_form_gradient(w, x, y, tau1, tau2, input_scale=1.0, input_shift=0.0):
    """∇_x [τ1 f_y − logsumexp(τ2 f)] for f(x) = W·(a⊙vec(x) + b): a⊙(τ1 W_y − τ2 Σ_j softmax(τ2 f)_j W_j)."""
    f = (input_scale * x.reshape(len(x), -1) + input_shift) @ w.T
    p = np.exp(tau2 * f - (tau2 * f).max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return input_scale * (tau1 * w[y] - tau2 * p @ w), f


@pytest.mark.parametrize("tau1,tau2", [(1.0, 1.0), (1.0, 0.5), (1.0, 0.0)])
def test_classifier_guidance_gradient_of_linear_classifier(tau1, tau2):
    classifier = _linear_classifier()
    w = classifier[1].weight.detach().double().numpy()
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 3, 1])
    grad, logits = ClassifierGuidance(classifier, tau1, tau2).gradient(x, y)
    expected, f = _closed_form_gradient(w, x.double().numpy(), y.numpy(), tau1, tau2)
    assert grad.shape == x.shape
    np.testing.assert_allclose(grad.reshape(3, -1).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(logits.numpy(), f, atol=1e-5)
    assert not logits.requires_grad


def test_classifier_guidance_differentiates_through_the_adapter():
    # f(adapter(x)) with adapter = ((x+1)/2 − m)/s: the chain rule contributes 1/(2s).
    classifier = _linear_classifier()
    w = classifier[1].weight.detach().double().numpy()
    mean, std = [0.5, 0.25], [0.5, 0.5]
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([2, 1])
    guidance = ClassifierGuidance(classifier, 1.0, 0.5, adapter=InputAdapter(mean=mean, std=std))
    grad, _ = guidance.gradient(x, y)
    # adapter(x) = a·x + b per channel (a = 1/(2s), b = (1/2 − m)/s), repeated over H·W.
    scale = np.repeat(0.5 / np.array(std), 4)
    shift = np.repeat((0.5 - np.array(mean)) / np.array(std), 4)
    expected, _ = _closed_form_gradient(w, x.double().numpy(), y.numpy(), 1.0, 0.5, scale, shift)
    np.testing.assert_allclose(grad.reshape(2, -1).numpy(), expected, atol=1e-5)


def test_classifier_guidance_does_not_touch_the_input_or_parameters():
    classifier = _linear_classifier()
    x = torch.randn(2, *SHAPE, requires_grad=True)
    before = x.detach().clone()
    grad, _ = ClassifierGuidance(classifier).gradient(x, torch.tensor([0, 1]))
    assert x.grad is None
    assert torch.equal(x.detach(), before)
    assert classifier[1].weight.grad is None
    assert not grad.requires_grad


def test_classifier_guidance_works_under_no_grad():
    with torch.no_grad():
        grad, _ = ClassifierGuidance(_linear_classifier()).gradient(torch.randn(2, *SHAPE), torch.tensor([0, 1]))
    assert grad.abs().sum() > 0


def test_classifier_guidance_input_selection():
    x_t, x0 = torch.randn(1, *SHAPE), torch.randn(1, *SHAPE)
    assert ClassifierGuidance(_linear_classifier()).select_input(x_t, x0) is x0
    assert ClassifierGuidance(_linear_classifier(), input="xt").select_input(x_t, x0) is x_t
    with pytest.raises(ValueError, match="'x0' or 'xt'"):
        ClassifierGuidance(_linear_classifier(), input="x_t")


class _TimeScaledLinear(nn.Module):
    """f(x, t) = (1 + t)·W·vec(x): a noise-aware classifier with a known gradient."""

    def __init__(self, linear):
        super().__init__()
        self.linear = linear

    def forward(self, x, t):
        return (1 + t.float())[:, None] * self.linear(x)


def test_time_conditioned_classifier_receives_t():
    classifier = _linear_classifier()
    w = classifier[1].weight.detach().double().numpy()
    guidance = ClassifierGuidance(_TimeScaledLinear(classifier), 1.0, 0.0, time_conditioned=True)
    x = torch.randn(2, *SHAPE)
    grad, _ = guidance.gradient(x, torch.tensor([1, 2]), torch.tensor([0, 4]))
    np.testing.assert_allclose(grad.reshape(2, -1).numpy(), np.array([1.0, 5.0])[:, None] * w[[1, 2]], atol=1e-5)
    with pytest.raises(ValueError, match="needs the timestep t"):
        guidance.gradient(x, torch.tensor([1, 2]))


# ----------------------------------------------------------------------------
# Schedules

def test_sine_bump_hand_values():
    assert sine_bump(125, 250, 0.3) == pytest.approx(0.3)
    assert sine_bump(0, 250, 0.3) == 0.0
    assert sine_bump(249, 250, 0.3) == pytest.approx(0.3 * math.sin(249 * math.pi / 250))
    assert sine_bump(50, 250, 0.0) == 0.0
    assert sine_bump(50, 250, -0.3) == 0.0  # max(·, 0): never a negative weight


def test_adm_guidance_weight_hand_values():
    variance = torch.tensor([[0.01, 0.02], [0.03, 0.04]]).view(1, 1, 2, 2)
    sigma_max = 0.0775
    mid = adm_guidance_weight(variance, 125, 250, sigma_max, 0.3)
    torch.testing.assert_close(mid, variance + 0.3 * sigma_max)
    end = adm_guidance_weight(variance, 0, 250, sigma_max, 0.3)
    torch.testing.assert_close(end, variance)
    quarter = adm_guidance_weight(variance, 62, 250, sigma_max, 0.3)
    torch.testing.assert_close(quarter, variance + 0.3 * math.sin(62 * math.pi / 250) * sigma_max)
    assert mid.shape == variance.shape


def test_edm_step_size_hand_values():
    w, gamma, n = 0.004, 0.3, 10
    assert edm_step_size(0, n, w, gamma) == pytest.approx(0.004)
    assert edm_step_size(5, n, w, gamma) == pytest.approx(0.004 * 6 / 11 + 0.004 * 0.3)
    assert edm_step_size(9, n, w, gamma) == pytest.approx(0.004 * 2 / 11 + math.sin(0.9 * math.pi) * 0.004 * 0.3)
    assert edm_step_size(3, n, w, 0.0) == pytest.approx(0.004 * 8 / 11)
    assert edm_step_size(0, n, 1e-7, 0.0) == pytest.approx(1e-5)  # floor of the linear term


# ----------------------------------------------------------------------------
# SwitchedGuidance

def test_switched_guidance_switches_at_switch_step():
    early, late = ClassifierGuidance(_linear_classifier(0)), ClassifierGuidance(_linear_classifier(1))
    switched = SwitchedGuidance(early, late, switch_step=50)
    assert switched.at(249) is early
    assert switched.at(50) is early
    assert switched.at(49) is late
    assert switched.at(0) is late
    assert guidance_at(switched, 50) is early and guidance_at(switched, 49) is late
    assert guidance_at(early, 0) is early


def test_one_set_of_paper_defaults_documented_where_defaults_differ():
    """offshelf.guide() defaults to the paper's calibrated DDPM values (PAPER_DDPM), as do the
    shipped configs' `calibrated` bases; the low-level classes default to neutral values and say so."""
    import inspect

    from offshelf.config import read_config
    from offshelf.guidance import PAPER_DDPM, ClassifierGuidance, Guidance
    from offshelf.integrations.diffusers import guide
    from workflow_utils import REPO

    signature = inspect.signature(guide).parameters
    assert {key: signature[key].default for key in PAPER_DDPM} == PAPER_DDPM
    for path in (REPO / "config.yaml", REPO / "config" / "ci.yaml", REPO / "config" / "imagenet128_ddpm.yaml"):
        base = read_config(path)["bases"]["calibrated"]
        assert {key: float(base[key]) for key in PAPER_DDPM if key != "scale"} == \
            {key: value for key, value in PAPER_DDPM.items() if key != "scale"}, path
    for cls in (ClassifierGuidance, Guidance):
        assert "Defaults are neutral, not the paper's" in cls.__doc__ and "PAPER_DDPM" in cls.__doc__
    readme = (REPO / "README.md").read_text()
    assert "| τ2 (marginal) | 0.5 | 0.5 | 1.0 (uncalibrated) |" in readme
