"""Algorithm 2: EDM's 2nd-order Heun sampler with off-the-shelf classifier guidance.

Time grid (EDM Eq. 5), rounded by the network, with t_N = 0 appended:

    t_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ,   i = 0 … N−1

Per step i (official EluCD ``generate.py``), in float64 like NVlabs' ``edm_sampler``:

    r      = RMS(x_i)                                         # per sample
    u      = x_i / r  if r > 1  else  x_i                     # classifier input: the noisy sample
    g      = ∇_u log p̃(y | u)                                 # τ1·f_y − logsumexp(τ2·f), detached u
    w_i    = max(w·(N+1−i)/(N+1), 1e−5) + sin(πi/N)·w·γ       # linear decay + sine bump
    g      = g / RMS(g) · r · w_i                             # displacement of RMS w_i·RMS(x_i)
    t̂      = t_i + γ_churn·t_i;   x̂ = x_i + sqrt(t̂² − t_i²)·S_noise·z + g
    d      = (x̂ − D(x̂; t̂, y)) / t̂;   x_{i+1} = x̂ + (t_{i+1} − t̂)·d          # Euler
    if i < N−1:  d' = (x_{i+1} − D(x_{i+1}; t_{i+1}, y)) / t_{i+1}
                 x_{i+1} = x̂ + (t_{i+1} − t̂)·(d + d')/2                      # Heun correction

Guidance is applied once per step, before the ODE step (not inside d or d'). NFE = 2N − 1.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from offshelf.guidance import FiniteGuard, Guidance, SwitchedGuidance, edm_step_size
from offshelf.seeding import StackedRandomGenerator

StepCallback = Callable[..., None]


def _rms(x: torch.Tensor) -> torch.Tensor:
    """Per-sample RMS in x's own precision (float64 along the trajectory), shaped to broadcast."""
    return x.pow(2).flatten(1).mean(1).sqrt().view(-1, *([1] * (x.ndim - 1)))


def time_steps(net, num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80, rho: float = 7,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """``[t_0, …, t_{N−1}, 0]`` in float64 (EDM Eq. 5), σ range clipped to what the net supports."""
    if num_steps < 2:
        raise ValueError(f"EDM's time grid needs num_steps >= 2, got {num_steps}")
    sigma_min = max(sigma_min, net.sigma_min)
    sigma_max = min(sigma_max, net.sigma_max)
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    t = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([net.round_sigma(t), torch.zeros_like(t[:1])])


def guidance_displacement(guidance, x_cur: torch.Tensor, y: torch.Tensor, step_size: float):
    """Algorithm 2's guidance on the current sample: returns ``(g, u, g_raw, logits)`` where
    ``g = g_raw / RMS(g_raw) · RMS(x_cur) · step_size`` and ``g_raw = ∇_u log p̃(y | u)`` with
    ``u = x_cur / RMS(x_cur)`` for samples whose RMS exceeds 1, else ``u = x_cur``."""
    r = _rms(x_cur)
    u = torch.where(r > 1, x_cur / r, x_cur)
    g_raw, logits = guidance.gradient(u, y)
    g_raw = g_raw.to(x_cur.dtype)
    # A zero gradient (saturated classifier) gives no push instead of 0/0.
    g = g_raw / _rms(g_raw).clamp_min(torch.finfo(g_raw.dtype).tiny) * r * step_size
    return g, u, g_raw, logits


def edm_sample(net, latents: torch.Tensor, num_steps: int = 18, *, guidance: Guidance | None = None,
               callback: StepCallback | None = None, progress: bool = False, y: torch.Tensor | None = None,
               sigma_min: float = 0.002, sigma_max: float = 80, rho: float = 7, S_churn: float = 0,
               S_min: float = 0, S_max: float = float("inf"), S_noise: float = 1,
               rng: StackedRandomGenerator | None = None) -> torch.Tensor:
    """Sample from ``net`` (an :class:`~offshelf.backbones.edm.EDMPrecond`) starting at
    ``latents ~ N(0, I)`` scaled by t_0, on the ``num_steps``-point time grid (module docstring,
    knobs named as NVlabs' ``edm_sampler``); returns float64 images in about [-1, 1].

    ``y`` are the one-hot class conditions (NVlabs' ``class_labels``); ``guidance`` an optional
    :class:`~offshelf.guidance.Guidance` whose classifier has ``input="xt"``, guiding toward
    ``guidance.label`` (default ``argmax(y)``) with step size
    ``edm_step_size(i, N, guidance.scale, guidance.sine_factor)`` (``scale`` is w of Algorithm 2);
    Σ_max modes, a DiT schedule and ``through_denoiser`` are refused. ``S_churn > 0`` adds EDM's
    stochastic churn, drawn from ``rng``; when ``rng`` is given its noise is drawn every step as
    the official script does, even if multiplied by zero. ``callback(step=i, sigma=, x_t=,
    pred_xstart=, grad=, logits=, guidance_input=, displacement=)`` sees every step. A NaN or inf
    in the logits, the guidance displacement or a denoiser output raises
    :class:`~offshelf.guidance.NonFiniteError` naming the first such step and tensor (recorded on
    the device by a :class:`~offshelf.guidance.FiniteGuard`, read before returning and before each
    callback).
    """
    if guidance is not None:
        guidance.require("edm_sample", sigma_max_mode=(None,), schedule=(None,), through_denoiser=(False,))
        if isinstance(guidance.classifier, SwitchedGuidance):  # its switch_step counts DDPM's steps down
            raise ValueError("edm_sample cannot honour Guidance.classifier=SwitchedGuidance (a step switch "
                             "counted on DDPM's spaced steps); pass one ClassifierGuidance")
        if getattr(guidance.classifier, "input", "xt") != "xt":
            raise ValueError(f"EDM guidance (Algorithm 2) feeds the classifier the noisy sample: "
                             f"use ClassifierGuidance(input='xt'), got input={guidance.classifier.input!r}")
        if y is None and guidance.label is None:
            raise ValueError("classifier guidance needs y (one-hot) or Guidance(label=) to pick the target class")
    if S_churn > 0 and rng is None:
        raise ValueError("S_churn > 0 needs rng (a StackedRandomGenerator) for the churn noise")
    if rng is not None and len(rng) != latents.shape[0]:
        raise ValueError(f"rng has {len(rng)} generators for a batch of {latents.shape[0]}")
    class_labels = y
    target = None
    if guidance is not None:
        target = guidance.label if guidance.label is not None else class_labels.argmax(dim=1)

    t_steps = time_steps(net, num_steps, sigma_min, sigma_max, rho, device=latents.device)
    # The grid on the host once, for the churn window's comparisons: a comparison of a tensor
    # element in the loop would read it back (a host sync) at every step.
    t_host = t_steps.tolist()
    guard = FiniteGuard(capacity=4 * num_steps)
    x_next = latents.to(torch.float64) * t_steps[0]
    steps = list(enumerate(zip(t_steps[:-1], t_steps[1:])))
    if progress:
        from offshelf.extras import needs
        needs(f"{__name__} (progress=True)", "tqdm")
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="edm", leave=False)
    for i, (t_cur, t_next) in steps:
        x_cur = x_next

        g = u = g_raw = logits = None
        if guidance is not None:
            w_i = edm_step_size(i, num_steps, guidance.scale, guidance.sine_factor)
            g, u, g_raw, logits = guidance_displacement(guidance.classifier, x_cur, target, w_i)
            guard.watch("classifier logits", logits, i)
            guard.watch("guidance gradient", g, i)

        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= t_host[i] <= S_max else 0
        t_hat = net.round_sigma(t_cur + gamma * t_cur)
        x_hat = x_cur
        if rng is not None:
            x_hat = x_hat + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * rng.randn_like(x_cur).to(x_cur.device)
        if g is not None:
            x_hat = x_hat + g

        with torch.no_grad():
            denoised = net(x_hat, t_hat, class_labels).to(torch.float64)
            guard.watch("denoiser output", denoised, i)
            d_cur = (x_hat - denoised) / t_hat
            x_next = x_hat + (t_next - t_hat) * d_cur
            if i < num_steps - 1:
                denoised_next = net(x_next, t_next, class_labels).to(torch.float64)
                guard.watch("denoiser output (Heun correction)", denoised_next, i)
                d_prime = (x_next - denoised_next) / t_next
                x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)

        if callback is not None:
            guard.check()  # a callback may read the values: it never sees a NaN
            callback(step=i, sigma=t_host[i], x_t=x_cur, pred_xstart=denoised, grad=g_raw, logits=logits,
                     guidance_input=u, displacement=g)
    guard.check()
    return x_next
