"""Algorithm 3: DiT (latent diffusion, classifier-free guidance) with off-the-shelf classifier
guidance through the VAE decoder.

The baseline is DiT's own ``sample.py``: the 1000-step linear schedule respaced to 250 DDPM
steps, learned-range variance, ``clip_denoised=False`` (latents are unbounded), and CFG as
DiT's ``forward_with_cfg``: on the first ``m = 3`` latent ε channels only; the 4th ε channel
and the variance channels come from the conditional branch.

The paper gives Algorithm 3 only in prose ("guidance as the gradient of the composite
classifier∘decoder"; "normalize the guidance and add the normalized [gradient] to the
conditional and unconditional noise difference"); no official code exists (docs/method.md §5). What is
implemented, per spaced step k = T−1 … 0 with τ_k the original timestep and w = cfg_scale:

    out_c, out_u = model(z_k, τ_k, y), model(z_k, τ_k, ∅)          # one batched call, ∅ = null class
    Δε      = ε_c[:m] − ε_u[:m]
    ε_cfg   = [ε_u[:m] + w·Δε,  ε_c[m:C]],   v = out_c[C:]
    ẑ0      = z_k/sqrt(ᾱ_k) − sqrt(1/ᾱ_k − 1)·ε_cfg               # not clamped
    x       = clamp(D(ẑ0 / 0.18215), −1, 1)                       # VAE decoder, RGB in [−1, 1]
    g       = ∇_{ẑ0} [τ1·f_y(x) − logsumexp(τ2·f(x))]              # backprop through f and D
    ĝ       = g[:m] · ‖Δε‖ / ‖g[:m]‖                               # per-sample L2 norms over [:m]
    s_k     = scale·(1 + max(γ·sin(πk/T), 0))                      # schedule="sine"
         or   scale·(Σ_k[:m] + max(γ·sin(πk/T), 0)·Σ_max)          # schedule="adm" (Eq. 5), default
    ε̃[:m]   = ε_u[:m] + w·(Δε − s_k·ĝ)  = ε_cfg[:m] − w·s_k·ĝ
    μ, Σ_k  = posterior mean and learned-range variance from (ε̃, v)
    z_{k−1} = μ + 1[k>0]·sqrt(Σ_k)·n

The score is −ε/σ, so moving ε by −w·s_k·ĝ moves ẑ0 by +sqrt(1/ᾱ_k − 1)·w·s_k·ĝ: uphill in
log p̃. Σ_k is the learned per-pixel variance; Σ_max is β of the first (noisiest) sampling
step, a batch-independent stand-in for the DDPM code's running max (docs/method.md §3), so every
sample depends on its own seed only. The ``adm`` schedule with γ = 0.3 mirrors the only
concrete hint (a normalised g·‖Δε‖/‖g‖·(Σ_t + add(t)), docs/method.md §5) and the DDPM algorithm; its scale and γ
for DiT are not published in legible form [UNCONFIRMED]. Finally x = clamp(D(z_0/0.18215), −1, 1).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch

from offshelf.backbones.dit import LATENT_SCALE
from offshelf.diffusion import GaussianDiffusion
from offshelf.guidance import (CFGOutput, FiniteGuard, Guidance, calibrated_gradient, cfg_combine,
                               dit_guidance_weight)
from offshelf.seeding import StackedRandomGenerator



def cfg_denoise(model, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor, null_label: int,
                cfg_scale: float, cfg_channels: int = 3) -> CFGOutput:
    """DiT's ``forward_with_cfg``: one batched call on (y, ∅), then
    :func:`~offshelf.guidance.cfg_combine`: ε_u + w·(ε_c − ε_u) on channels ``[:cfg_channels]``;
    the remaining ε channels and the variance channels from the conditional branch."""
    c = z.shape[1]
    if not 0 < cfg_channels <= c:
        raise ValueError(f"cfg_channels must be in 1..{c}, got {cfg_channels}")
    both = model(torch.cat([z, z]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_label)]))
    cond, uncond = both.chunk(2)
    return cfg_combine(cond, uncond, cfg_scale, cfg_channels)


def decode(vae, z: torch.Tensor, latent_scale: float = LATENT_SCALE) -> torch.Tensor:
    """``clamp(D(z / latent_scale), −1, 1)`` in float32 (differentiable)."""
    dtype = next(vae.parameters()).dtype
    return vae.decode((z / latent_scale).to(dtype)).sample.float().clamp(-1, 1)


def _per_sample_norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1).view(-1, *([1] * (x.ndim - 1)))


#: Loss scale of the backward pass through an fp16 decoder. The gradient reaching the decoder's
#: output is small per pixel and its fp16 copy underflows (tests/unit/test_precision.py: cosine 0.87 with the
#: fp32 gradient unscaled, 1.0000 scaled), as in mixed-precision training. A power of two, so
#: scaling and unscaling are exact; an overflow would be caught as a non-finite gradient.
FP16_DECODER_LOSS_SCALE = 2.0 ** 10


class _ScaleBackward(torch.autograd.Function):
    """Identity forward; the backward multiplies the incoming gradient by ``factor``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def decoder_gradient(guidance, vae, x0: torch.Tensor, target: torch.Tensor, t: torch.Tensor,
                     latent_scale: float = LATENT_SCALE) -> tuple[torch.Tensor, torch.Tensor]:
    """``(∇_{ẑ0} log p̃(y | clamp(D(ẑ0/s), −1, 1)), logits)``: the composite classifier∘decoder.
    Through an fp16 decoder the backward is loss-scaled (:data:`FP16_DECODER_LOSS_SCALE`)."""
    if guidance.input != "x0":
        raise ValueError("latent guidance differentiates the decoded x̂0; guidance.input must be 'x0'")
    if next(vae.parameters()).dtype != torch.float16:
        return calibrated_gradient(x0.float(), target, lambda z: guidance.logits(decode(vae, z, latent_scale), t),
                                   guidance.joint_temperature, guidance.marginal_temperature)
    scale = FP16_DECODER_LOSS_SCALE

    def logits_of(z: torch.Tensor) -> torch.Tensor:  # backward: ×scale into the decoder, ÷scale out of it
        image = decode(vae, _ScaleBackward.apply(z, 1 / scale), latent_scale)
        return guidance.logits(_ScaleBackward.apply(image, scale), t)

    return calibrated_gradient(x0.float(), target, logits_of, guidance.joint_temperature,
                               guidance.marginal_temperature)


def dit_step(model, vae, diffusion: GaussianDiffusion, z: torch.Tensor, k: int, y: torch.Tensor,
             noise: torch.Tensor, *, guidance: Guidance | None = None, cfg_scale: float = 1.5,
             cfg_channels: int = 3, sigma_max: float | None = None,
             latent_scale: float = LATENT_SCALE, guard: FiniteGuard | None = None) -> tuple[torch.Tensor, dict]:
    """One reverse step z_k → z_{k−1} (module docstring). ``sigma_max``: Σ_max (default β of the
    first step). Returns ``(z_prev, info)`` with ``info``: pred_xstart (ẑ0 from ε_cfg),
    guided_xstart (from ε̃), grad (ĝ), logits, weight. ``guard``: the loop's
    :class:`~offshelf.guidance.FiniteGuard`, which records the step's tensors for the caller to
    check; without one the step checks its own before returning."""
    t = diffusion.model_timesteps(k, z.shape[0], z.device)
    null_label = getattr(model, "null_label", None)
    if null_label is None:
        raise ValueError("model needs a null_label attribute (the unconditional class); wrap DiT in DiTDenoiser")
    own_guard = guard is None
    guard = FiniteGuard() if own_guard else guard
    with torch.no_grad():
        if cfg_scale == 1.0 and guidance is None:
            cfg = CFGOutput(model(z, t, y), None, None)
        else:
            cfg = cfg_denoise(model, z, t, y, null_label, cfg_scale, cfg_channels)
        guard.watch("denoiser output", cfg.output, k)
        out = diffusion.p_mean_variance(cfg.output, z, k, clip_denoised=False)
    info = dict(pred_xstart=out.pred_xstart, guided_xstart=out.pred_xstart, grad=None, logits=None, weight=None)
    if guidance is not None:
        target = y if guidance.label is None else guidance.label
        grad, logits = decoder_gradient(guidance.at(k), vae, out.pred_xstart, target, t, latent_scale)
        guard.watch("classifier logits", logits, k)
        guard.watch("guidance gradient", grad, k)
        grad = grad[:, :cfg_channels]
        grad = grad * _per_sample_norm(cfg.delta) / _per_sample_norm(grad).clamp_min(1e-12)
        sigma_max = float(diffusion.betas[-1]) if sigma_max is None else sigma_max
        weight = dit_guidance_weight(guidance.schedule or "adm", guidance.scale, guidance.sine_factor, k,
                                     diffusion.num_steps, out.variance[:, :cfg_channels], sigma_max)
        eps = cfg.eps_uncond + cfg_scale * (cfg.delta - weight * grad)
        guided = torch.cat([eps, cfg.output[:, cfg_channels:]], dim=1)
        out = diffusion.p_mean_variance(guided, z, k, clip_denoised=False)
        info.update(guided_xstart=out.pred_xstart, grad=grad, logits=logits, weight=weight)
    z_prev = out.mean + (k > 0) * torch.exp(0.5 * out.log_variance) * noise
    if own_guard:
        guard.check()
    return z_prev.detach(), info


def dit_sample(model, rng: StackedRandomGenerator, diffusion: GaussianDiffusion, *,
               guidance: Guidance | None = None, callback: Callable[..., None] | None = None,
               progress: bool = False, vae, latent_shape: tuple[int, int, int], y: torch.Tensor,
               cfg_scale: float = 1.5, cfg_channels: int = 3, latent_scale: float = LATENT_SCALE,
               return_latents: bool = False):
    """Sample ``len(rng)`` images with DiT (``model`` a :class:`~offshelf.backbones.dit.DiTDenoiser`,
    ``vae`` its decoder), latents of ``latent_shape`` drawn from ``rng``, on the respaced
    ``diffusion``; decoded to [−1, 1]. ``y``: the class per seed; ``cfg_scale`` w of CFG.
    ``guidance``: a :class:`~offshelf.guidance.Guidance` whose classifier (``ClassifierGuidance``
    or ``SwitchedGuidance``) sees the decoded x̂0, toward ``guidance.label`` (default ``y``), with
    weight ``schedule`` ('adm' by default, or 'sine'), ``scale`` and ``sine_factor``; Σ_max is β
    of the first step (``sigma_max_mode`` None or 'first_beta'; ``through_denoiser`` is refused).
    ``None`` gives the DiT baseline. ``callback(step=k, x_t=z_k, pred_xstart=, guided_xstart=,
    grad=, logits=, weight=)`` sees every step. With ``return_latents`` returns ``(images, z_0)``."""
    if guidance is not None:
        guidance.require("dit_sample", sigma_max_mode=(None, "first_beta"), through_denoiser=(False,))
    if len(latent_shape) != 3:
        raise ValueError(f"latent_shape must be (C, h, w), got {latent_shape}")
    if diffusion.variance_type != "learned_range":
        raise ValueError("DiT predicts a learned-range variance; build the diffusion with 'learned_range'")
    z = rng.randn(latent_shape)
    y = torch.as_tensor(y, device=z.device).long()
    if y.shape != (len(rng),):
        raise ValueError(f"y must hold one label per seed ({len(rng)}), got shape {tuple(y.shape)}")
    if guidance is not None and guidance.label is not None:
        guidance = replace(guidance, label=torch.as_tensor(guidance.label, device=z.device).long())
    sigma_max = float(diffusion.betas[-1])
    guard = FiniteGuard(capacity=3 * diffusion.num_steps)
    steps = range(diffusion.num_steps - 1, -1, -1)
    if progress:
        from offshelf.extras import needs
        needs(f"{__name__} (progress=True)", "tqdm")
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="dit", leave=False)
    for k in steps:
        z_prev, info = dit_step(model, vae, diffusion, z, k, y, rng.randn_like(z), guidance=guidance,
                                cfg_scale=cfg_scale, cfg_channels=cfg_channels, sigma_max=sigma_max,
                                latent_scale=latent_scale, guard=guard)
        if callback is not None:
            guard.check()  # a callback may read the values: it never sees a NaN
            callback(step=k, x_t=z, **info)
        z = z_prev
    guard.check()
    with torch.no_grad():
        images = decode(vae, z, latent_scale)
    return (images, z) if return_latents else images


def dit_diffusion(spacing: str | int = "250") -> GaussianDiffusion:
    """DiT's sampling diffusion: the 1000-step linear schedule respaced, learned-range variance."""
    return GaussianDiffusion.respaced(1000, spacing, "linear", "learned_range")


__all__ = ["CFGOutput", "cfg_denoise", "decode", "decoder_gradient", "dit_step",
           "dit_sample", "dit_diffusion"]
