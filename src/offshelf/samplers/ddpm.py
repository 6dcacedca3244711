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

from typing import Callable

import torch

from offshelf.diffusion import GaussianDiffusion
from offshelf.guidance import FiniteGuard, Guidance, adm_guidance_weight, calibrated_gradient, cfg_combine
from offshelf.seeding import StackedRandomGenerator

StepCallback = Callable[..., None]


def model_output(model, diffusion: GaussianDiffusion, x: torch.Tensor, k: int, y: torch.Tensor | None,
                 cfg_scale: float | None = None, null_label: int | None = None) -> torch.Tensor:
    """Algorithm 1's network evaluation at spaced step k: ``model(x_k, τ_k, y)``; with ``cfg_scale``
    the classifier-free combination ε_u + w·(ε_c − ε_u) (:func:`~offshelf.guidance.cfg_combine`
    on all ε channels), keeping the conditional variance channels."""
    t = diffusion.model_timesteps(k, x.shape[0], x.device)
    if cfg_scale is None:
        return model(x, t, y)
    if null_label is None:
        raise ValueError("classifier-free guidance needs the model's null label")
    both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_label)]))
    cond, uncond = both.chunk(2)
    return cfg_combine(cond, uncond, cfg_scale, x.shape[1]).output


def ddpm_sample(model, rng: StackedRandomGenerator, diffusion: GaussianDiffusion, *,
                guidance: Guidance | None = None, callback: StepCallback | None = None, progress: bool = False,
                shape: tuple[int, ...], y: torch.Tensor | None = None, recurrent_steps: int = 1,
                cfg_scale: float | None = None, null_label: int | None = None,
                clip_denoised: bool = True) -> torch.Tensor:
    """Sample ``len(rng)`` images of ``shape`` (C, H, W) with Algorithm 1 (module docstring).

    ``model(x, t, y)`` is the denoiser (ε, plus variance channels for learned-range models);
    ``rng`` draws x_T and every step's noise per sample; ``diffusion`` the (respaced) schedule;
    ``y`` the class condition (None for an unconditional model). ``guidance``: a
    :class:`~offshelf.guidance.Guidance` (scale s, sine_factor γ, Σ_max mode, through_denoiser)
    guiding toward ``guidance.label`` (default ``y``); its ``schedule`` must be ``'adm'`` or None.
    ``cfg_scale`` (with the model's ``null_label``): classifier-free guidance. ``recurrent_steps``:
    r passes per step. ``callback(step=k, x_t=, pred_xstart=, grad=, logits=)`` sees every step,
    for calibration and gradient figures. A NaN or inf in the network output, the logits, the
    gradient or the guided mean raises :class:`~offshelf.guidance.NonFiniteError` naming the first
    such step and tensor: recorded on the device (:class:`~offshelf.guidance.FiniteGuard`) and read
    once per batch, before returning, and before each callback.
    """
    if recurrent_steps < 1:
        raise ValueError(f"recurrent_steps must be >= 1, got {recurrent_steps}")
    if guidance is not None:
        guidance.require("ddpm_sample", schedule=(None, "adm"))
        if guidance.label is None and y is None:
            raise ValueError("guidance needs a target label: pass y or Guidance(label=)")
    # Σ_max: the official running max starts at 0; 'first_beta' fixes it to β of the first step.
    first_beta = guidance is not None and guidance.sigma_max_mode == "first_beta"
    sigma_max = float(diffusion.betas[-1]) if first_beta else 0.0
    steps = range(diffusion.num_steps - 1, -1, -1)
    if progress:
        from offshelf.extras import needs
        needs(f"{__name__} (progress=True)", "tqdm")
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="ddpm", leave=False)

    guard = FiniteGuard(capacity=4 * recurrent_steps * diffusion.num_steps)
    x_next = rng.randn(shape)
    for k in steps:
        x_cur = x_next
        for r in range(recurrent_steps):
            x_next, info, sigma_max = ddpm_step(model, diffusion, x_cur, k, rng, y=y, guidance=guidance,
                                                sigma_max=sigma_max, cfg_scale=cfg_scale, null_label=null_label,
                                                clip_denoised=clip_denoised, guard=guard)
            if r + 1 == recurrent_steps or k == 0:
                break
            # Time travel (Universal Guidance): re-noise x_{k-1} back to x_k and take the step again.
            x_cur = diffusion.renoise(x_next, k, rng.randn_like(x_next))
        if callback is not None:
            guard.check()  # a callback may read the values: it never sees a NaN
            callback(step=k, x_t=x_cur, **info)
    guard.check()
    return x_next


def ddpm_step(model, diffusion: GaussianDiffusion, x_cur: torch.Tensor, k: int, rng: StackedRandomGenerator, *,
              y: torch.Tensor | None = None, guidance: Guidance | None = None, sigma_max: float = 0.0,
              cfg_scale: float | None = None, null_label: int | None = None,
              clip_denoised: bool = True, guard: FiniteGuard | None = None,
              ) -> tuple[torch.Tensor, dict, float | torch.Tensor]:
    """One step x_k → x_{k−1} of Algorithm 1. Returns ``(x_{k−1}, info, Σ_max)``; ``info`` holds
    ``pred_xstart``, ``grad`` and ``logits`` for callbacks. ``sigma_max`` is Σ_max so far (the
    running max with ``sigma_max_mode`` 'official' or None, else held fixed); the running max is
    kept as a 0-dim float64 tensor on x's device, since reading Σ[0,0,0,0] would sync the host.
    ``guard``: the loop's :class:`~offshelf.guidance.FiniteGuard`, which records the step's tensors
    for the caller to check; without one the step checks its own before returning."""
    t = diffusion.model_timesteps(k, x_cur.shape[0], x_cur.device)
    g = guidance.at(k) if guidance is not None else None
    target = (guidance.label if guidance.label is not None else y) if guidance is not None else None
    grad = logits = None
    own_guard = guard is None
    guard = FiniteGuard() if own_guard else guard

    def posterior(x_in):  # (ε, v) = model(x_k, τ_k, y); x̂0 clamped; μ, Σ of q(x_{k−1} | x̂0, x_k)
        output = model_output(model, diffusion, x_in, k, y, cfg_scale, null_label)
        guard.watch("denoiser output", output, k)
        return diffusion.p_mean_variance(output, x_in, k, clip_denoised)

    if g is not None and guidance.through_denoiser:
        # g = ∇_{x_k} log p̃(y | u(x_k)): backprop through the classifier, the x̂0 formula and the network.
        kept = {}

        def logits_through_denoiser(x_in):
            kept["out"] = posterior(x_in)
            return g.logits(g.select_input(x_in, kept["out"].pred_xstart), t)

        grad, logits = calibrated_gradient(x_cur, target, logits_through_denoiser, g.joint_temperature,
                                           g.marginal_temperature)
        out = _detach(kept["out"])
    else:
        with torch.no_grad():
            out = posterior(x_cur)
        if g is not None:
            # g = ∇_u log p̃(y | u) at u = x̂0 (or x_k), detached: no backprop through the network.
            grad, logits = g.gradient(g.select_input(x_cur, out.pred_xstart), target, t)

    mean = out.mean
    if grad is not None:
        guard.watch("classifier logits", logits, k)
        guard.watch("guidance gradient", grad, k)
        # Eq. 5: μ' = μ + (Σ_k + max(γ·sin(πk/T)·Σ_max, 0)) ⊙ s·g, Σ_max a running max of Σ[0,0,0,0],
        # taken in float64 on the device: the same number as Python's max of the float32 value.
        if guidance.sigma_max_mode in (None, "official"):
            variance_now = out.variance[0, 0, 0, 0].double()
            sigma_max = (torch.maximum(sigma_max, variance_now) if torch.is_tensor(sigma_max)
                         else variance_now.clamp_min(sigma_max))
        weight = adm_guidance_weight(out.variance, k, diffusion.num_steps, sigma_max, guidance.sine_factor)
        mean = mean + weight * (guidance.scale * grad)
        guard.watch("guided mean", mean, k)
    # x_{k−1} = μ' + 1[k>0]·sqrt(Σ_k)·z
    noise = rng.randn_like(x_cur)
    noise_scale = torch.exp(0.5 * out.log_variance)
    if k == 0:  # multiplied out rather than skipped: a non-finite Σ still reaches x_0, as 0·inf = NaN
        noise_scale = 0 * noise_scale
    x_prev = mean + noise_scale * noise
    if own_guard:
        guard.check()
    return x_prev.detach(), dict(pred_xstart=out.pred_xstart, grad=grad, logits=logits), sigma_max


def _detach(out):
    for name in ("mean", "variance", "log_variance", "pred_xstart", "eps"):
        setattr(out, name, getattr(out, name).detach())
    return out


__all__ = ["ddpm_sample", "ddpm_step", "model_output"]
