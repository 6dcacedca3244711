"""Algorithm 1: DDPM ancestral sampling with calibrated off-the-shelf classifier guidance.

Per spaced step k = T−1 … 0 (official ``p_sample``):

    (ε, v)  = model(x_k, τ_k, y)                         # one network call (two with CFG)
    x̂0      = clamp(x_k/sqrt(ᾱ_k) − sqrt(1/ᾱ_k − 1)·ε, −1, 1)
    μ, Σ    = posterior mean and (learned-range or fixed) variance
    g       = s·∇_u log p̃(y | u),  u = x̂0 (or x_k), detached  # no backprop through the network
    Σ_max   = running max of Σ[0,0,0,0] along this trajectory
    μ'      = μ + (Σ + max(γ·sin(πk/T)·Σ_max, 0)) ⊙ g
    x_{k−1} = μ' + 1[k>0]·sqrt(Σ)·z

``recurrent_steps = r > 1`` is Universal Guidance's time travel: after computing x_{k−1} the
step is re-noised back to x_k and repeated, r passes in total (paper Table 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

from offshelf.diffusion import GaussianDiffusion
from offshelf.guidance import adm_guidance_weight, calibrated_log_prob, guidance_at
from offshelf.seeding import StackedRandomGenerator

SigmaMaxMode = Literal["official", "first_beta"]


@dataclass
class DDPMGuidanceConfig:
    """How the guidance gradient enters the mean. ``scale`` is the official
    ``classifier_scale``; ``sine_factor`` is γ of Eq. 5. ``sigma_max='official'`` tracks the
    running max of one scalar of Σ (batch element 0, channel 0, pixel 0) as the official code
    does; ``'first_beta'`` uses β of the first step, a batch-independent near-equivalent.
    ``through_denoiser`` backpropagates through the network and the x̂0 formula to x_k
    (the expensive variant, for comparison)."""

    scale: float = 1.0
    sine_factor: float = 0.0
    sigma_max: SigmaMaxMode = "official"
    through_denoiser: bool = False


StepCallback = Callable[..., None]


def _model_output(model, diffusion: GaussianDiffusion, x: torch.Tensor, k: int, y: torch.Tensor | None,
                  cfg_scale: float | None, null_label: int | None) -> torch.Tensor:
    """One network evaluation; with ``cfg_scale`` the classifier-free combination
    ε_u + w·(ε_c − ε_u), keeping the conditional variance channels."""
    t = diffusion.model_timesteps(k, x.shape[0], x.device)
    if cfg_scale is None:
        return model(x, t, y)
    if null_label is None:
        raise ValueError("classifier-free guidance needs the model's null label")
    both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_label)]))
    cond, uncond = both.chunk(2)
    c = x.shape[1]
    eps = uncond[:, :c] + cfg_scale * (cond[:, :c] - uncond[:, :c])
    return torch.cat([eps, cond[:, c:]], dim=1)


def ddpm_sample(model, diffusion: GaussianDiffusion, rng: StackedRandomGenerator, shape: tuple[int, ...],
                y: torch.Tensor | None = None, guidance=None, config: DDPMGuidanceConfig | None = None,
                recurrent_steps: int = 1, cfg_scale: float | None = None, null_label: int | None = None,
                guidance_label: torch.Tensor | None = None, clip_denoised: bool = True,
                callback: StepCallback | None = None, progress: bool = False) -> torch.Tensor:
    """Sample ``len(rng)`` images of ``shape`` (C, H, W).

    ``model(x, t, y)`` is the denoiser (ε, plus variance channels for learned-range models);
    ``y`` its class condition (None for an unconditional model); ``guidance`` an optional
    :class:`~offshelf.guidance.ClassifierGuidance` or ``SwitchedGuidance`` guiding toward
    ``guidance_label`` (default ``y``). ``callback(step=k, x_t=, pred_xstart=, grad=, logits=)``
    sees every step, for calibration and gradient figures.
    """
    if recurrent_steps < 1:
        raise ValueError(f"recurrent_steps must be >= 1, got {recurrent_steps}")
    config = config or DDPMGuidanceConfig()
    target = guidance_label if guidance_label is not None else y
    if guidance is not None and target is None:
        raise ValueError("guidance needs a target label: pass y or guidance_label")
    x = rng.randn(shape)
    T = diffusion.num_steps
    sigma_max = float(diffusion.betas[-1]) if config.sigma_max == "first_beta" else 0.0
    steps = range(T - 1, -1, -1)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="ddpm", leave=False)
    for k in steps:
        for r in range(recurrent_steps):
            x_prev, info = _guided_step(model, diffusion, x, k, y, target, guidance, config, sigma_max,
                                        rng, cfg_scale, null_label, clip_denoised)
            sigma_max = info.pop("sigma_max")
            if r + 1 < recurrent_steps and k > 0:
                x = diffusion.renoise(x_prev, k, rng.randn_like(x_prev))
            else:
                break
        if callback is not None:
            callback(step=k, x_t=x, **info)
        x = x_prev
    return x


def _guided_step(model, diffusion, x, k, y, target, guidance, config, sigma_max, rng, cfg_scale,
                 null_label, clip_denoised):
    grad = logits = None
    if guidance is not None and config.through_denoiser:
        g = guidance_at(guidance, k)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            out = diffusion.p_mean_variance(_model_output(model, diffusion, x_in, k, y, cfg_scale, null_label),
                                            x_in, k, clip_denoised)
            u = g.select_input(x_in, out.pred_xstart)
            logits = g.logits(u, diffusion.model_timesteps(k, x.shape[0], x.device))
            log_p = calibrated_log_prob(logits, target, g.joint_temperature, g.marginal_temperature)
            (grad,) = torch.autograd.grad(log_p.sum(), x_in)
        out = _detach(out)
        logits = logits.detach()
    else:
        with torch.no_grad():
            out = diffusion.p_mean_variance(_model_output(model, diffusion, x, k, y, cfg_scale, null_label),
                                            x, k, clip_denoised)
        if guidance is not None:
            g = guidance_at(guidance, k)
            u = g.select_input(x, out.pred_xstart)
            grad, logits = g.gradient(u, target, diffusion.model_timesteps(k, x.shape[0], x.device))
    mean = out.mean
    if grad is not None:
        if config.sigma_max == "official":
            sigma_max = max(sigma_max, float(out.variance[0, 0, 0, 0]))
        weight = adm_guidance_weight(out.variance, k, diffusion.num_steps, sigma_max, config.sine_factor)
        mean = mean + weight * (config.scale * grad)
    noise = rng.randn_like(x)
    x_prev = mean + (k > 0) * torch.exp(0.5 * out.log_variance) * noise
    info = dict(pred_xstart=out.pred_xstart, grad=grad, logits=logits, sigma_max=sigma_max)
    return x_prev.detach(), info


def _detach(out):
    for name in ("mean", "variance", "log_variance", "pred_xstart", "eps"):
        setattr(out, name, getattr(out, name).detach())
    return out
