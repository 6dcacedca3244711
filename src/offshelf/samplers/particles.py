"""Spending N trajectories per image instead of a gradient per step: Best-of-N and particle SMC
(FK steering) on Algorithm 1's DDPM step, behind the samplers' one calling contract.

Both take the guiding classifier as the one :class:`~offshelf.guidance.Guidance` value: its
classifier (with its temperatures τ1, τ2 and input x̂0 or x_t) and target ``label`` give the
calibrated log-probability ``r(u) = log p̃(y | u)`` (Eq. 4) that scores candidates (Best-of-N) or
makes the potential (SMC). The proposals are **unguided** DDPM trajectories (no classifier
gradient), so these methods need no classifier backward at all.

**Seeds.** Candidate (particle) ``j`` of the image with seed ``s`` draws all its noise from
:func:`candidate_seed` ``(s, j) = s + j·2^24``: ``j = 0`` is ``s`` itself (candidate 0 *is* the
plain unguided sample of that seed, so a method's images pair with the unguided row's). SMC's
resampling draws come from a generator of the image's own, seed ``s + 255·2^24``
(:func:`resampling_seed`). The streams differ in the seed's low 32 bits, the only bits torch's CPU
generator (mt19937) keys on (``manual_seed(s)`` and ``manual_seed(s + 2^32)`` draw the same
numbers), so image seeds must stay below 2^24 and candidates below 255: both are checked.
Everything is per image: a batch of any size gives the same images.

**Best-of-N** (:func:`best_of_n_sample`): N unguided candidates per image; the one with the highest
``r(x_0)`` on its final sample is kept. Its ``guidance.scale`` changes nothing (an argmax).

**Particle SMC** (:func:`smc_sample`), FK steering's difference potential: k particles per image
follow the DDPM transition. After spaced step k (``(T − k) mod m = 0``, k > 0) each particle's
potential increment is ``Δ = λ·(r(x̂0(x_k)) − r_prev)``, with ``λ = guidance.scale``, ``r_prev`` the
value of the particle's ancestor at the previous resampling point (0 at the first), and the k
particles are resampled multinomially with weights ``exp(Δ) / Σ exp(Δ)`` (a pair (x_k, x_{k−1}) is
resampled by x_k's weight; x_{k−1}'s noise is independent of it, so this is a valid SMC move). At
the end one particle is drawn with the last increment, taken on the final sample itself. The
increments telescope: the product of all weights is ``exp(λ·r(x_0))``, so as k grows the output
follows ``p(x_0)·p̃(y | x_0)^λ``; with the exact posterior and λ = 1 that is ``p(x_0 | y)``.
"""

from __future__ import annotations

import torch

from offshelf.diffusion import GaussianDiffusion
from offshelf.guidance import Guidance, calibrated_log_prob, check_finite
from offshelf.samplers.ddpm import StepCallback, ddpm_sample, ddpm_step
from offshelf.seeding import StackedRandomGenerator

#: candidate j of image s draws from seed s + j·CANDIDATE_STRIDE; image seeds stay below it
CANDIDATE_STRIDE = 1 << 24
#: candidates per image: j < MAX_CANDIDATES; j = MAX_CANDIDATES is the image's resampling stream
MAX_CANDIDATES = 255


def candidate_seed(seed: int, j: int) -> int:
    """The seed of candidate (particle) ``j`` of the image with seed ``seed`` (module docstring)."""
    if not 0 <= int(seed) < CANDIDATE_STRIDE:
        raise ValueError(f"image seed {seed}: Best-of-N and SMC derive their candidates' seeds from image seeds "
                         f"in [0, 2^24); use a smaller sampling.seed_offset")
    if not 0 <= j < MAX_CANDIDATES:
        raise ValueError(f"candidate {j}: at most {MAX_CANDIDATES} candidates (particles) per image")
    return int(seed) + j * CANDIDATE_STRIDE


def resampling_seed(seed: int) -> int:
    """The seed of the generator of SMC's resampling draws for the image with seed ``seed``."""
    candidate_seed(seed, 0)  # checks the seed's range
    return int(seed) + MAX_CANDIDATES * CANDIDATE_STRIDE


def particle_seeds(seeds: list[int], count: int) -> list[int]:
    """Image-major: the ``count`` candidates of image 0, then those of image 1, ..."""
    return [candidate_seed(s, j) for s in seeds for j in range(count)]


def calibrated_score(guidance: Guidance, x_t: torch.Tensor, x0: torch.Tensor, label: torch.Tensor,
                     timesteps: torch.Tensor) -> torch.Tensor:
    """``r = log p̃(label | u)`` per sample (Eq. 4 with the classifier's τ1, τ2), u = x̂0 or x_t as the
    classifier takes it; one classifier forward, no gradient."""
    classifier = guidance.at(0)
    with torch.no_grad():
        logits = classifier.logits(classifier.select_input(x_t, x0), timesteps)
    return calibrated_log_prob(logits, label, classifier.joint_temperature, classifier.marginal_temperature)


def _target(guidance: Guidance, y: torch.Tensor | None, sampler: str) -> torch.Tensor:
    guidance.require(sampler, through_denoiser=(False,), schedule=(None, "adm"))
    target = guidance.label if guidance.label is not None else y
    if target is None:
        raise ValueError(f"{sampler}: the guiding classifier needs a target label: pass y or Guidance(label=)")
    return target


def _check_count(name: str, value: int) -> None:
    if not (isinstance(value, int) and value >= 1):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def best_of_n_sample(model, rng: StackedRandomGenerator, diffusion: GaussianDiffusion, *,
                     guidance: Guidance | None = None, callback: StepCallback | None = None, progress: bool = False,
                     shape: tuple[int, ...], y: torch.Tensor | None = None, num_candidates: int = 1,
                     cfg_scale: float | None = None, null_label: int | None = None,
                     clip_denoised: bool = True) -> torch.Tensor:
    """``len(rng)`` images: for each, ``num_candidates`` unguided DDPM samples (seeds:
    :func:`candidate_seed` of its seed), the one the guiding classifier scores highest kept
    (``r(x_0)``, :func:`calibrated_score`, on the final sample). ``guidance=None``: candidate 0,
    the plain sample. ``callback`` sees every step of the candidates' batch (image-major)."""
    _check_count("num_candidates", num_candidates)
    n = num_candidates if guidance is not None else 1
    label = _target(guidance, y, "best_of_n_sample") if guidance is not None else None
    candidates = StackedRandomGenerator(particle_seeds(rng.seeds, n), rng.device)
    y_all = None if y is None else y.repeat_interleave(n)
    x = ddpm_sample(model, candidates, diffusion, callback=callback, progress=progress, shape=shape, y=y_all,
                    cfg_scale=cfg_scale, null_label=null_label, clip_denoised=clip_denoised)
    if guidance is None:
        return x
    t0 = diffusion.model_timesteps(0, x.shape[0], x.device)
    scores = calibrated_score(guidance, x, x, label.repeat_interleave(n), t0).view(-1, n)
    check_finite("best-of-N scores", scores, 0)
    best = scores.argmax(dim=1)
    return x.view(-1, n, *x.shape[1:])[torch.arange(len(best), device=x.device), best]


def resampling_weights(increments: torch.Tensor) -> torch.Tensor:
    """``exp(Δ) / Σ_particles exp(Δ)`` per image, for increments ``Δ`` of shape [images, particles]."""
    return torch.softmax(increments.double(), dim=1)


def smc_sample(model, rng: StackedRandomGenerator, diffusion: GaussianDiffusion, *,
               guidance: Guidance | None = None, callback: StepCallback | None = None, progress: bool = False,
               shape: tuple[int, ...], y: torch.Tensor | None = None, num_particles: int = 1,
               resample_every: int = 1, cfg_scale: float | None = None, null_label: int | None = None,
               clip_denoised: bool = True) -> torch.Tensor:
    """``len(rng)`` images by particle SMC with FK steering's difference potential (module
    docstring): ``num_particles`` unguided particles per image, resampled after every
    ``resample_every``-th step with weights ``softmax(λ·Δr)``, λ = ``guidance.scale``.
    ``guidance=None``: particle 0, the plain sample. ``callback`` sees every step of the particle
    batch, with the family extras ``increments``, ``weights`` ([images, particles]) and
    ``ancestors`` at a resampling step (else None)."""
    _check_count("num_particles", num_particles)
    _check_count("resample_every", resample_every)
    if guidance is None:
        return best_of_n_sample(model, rng, diffusion, callback=callback, progress=progress, shape=shape, y=y,
                                cfg_scale=cfg_scale, null_label=null_label, clip_denoised=clip_denoised)
    label = _target(guidance, y, "smc_sample")
    k_particles, images, device = num_particles, len(rng), rng.device
    particles = StackedRandomGenerator(particle_seeds(rng.seeds, k_particles), device)
    resampling = [torch.Generator(device).manual_seed(resampling_seed(s)) for s in rng.seeds]
    y_all = None if y is None else y.repeat_interleave(k_particles)
    label_all = label.repeat_interleave(k_particles)
    steps = range(diffusion.num_steps - 1, -1, -1)
    if progress:
        from offshelf.extras import needs
        needs(f"{__name__} (progress=True)", "tqdm")
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="smc", leave=False)

    previous = torch.zeros(images, k_particles, dtype=torch.float64, device=device)  # r at the last resampling
    x_next = particles.randn(shape)
    for k in steps:
        x_cur = x_next
        x_next, info, _ = ddpm_step(model, diffusion, x_cur, k, particles, y=y_all, cfg_scale=cfg_scale,
                                    null_label=null_label, clip_denoised=clip_denoised)
        extras = dict(increments=None, weights=None, ancestors=None)
        if k > 0 and (diffusion.num_steps - k) % resample_every == 0:
            t = diffusion.model_timesteps(k, x_cur.shape[0], device)
            current = calibrated_score(guidance, x_cur, info["pred_xstart"], label_all, t).double()
            current = current.view(images, k_particles)
            increments = guidance.scale * (current - previous)
            check_finite("SMC potential increments", increments, k)
            weights = resampling_weights(increments)
            ancestors = torch.stack([torch.multinomial(w, k_particles, replacement=True, generator=g)
                                     for w, g in zip(weights, resampling)])
            flat = (ancestors + k_particles * torch.arange(images, device=device)[:, None]).flatten()
            x_next, previous = x_next[flat], current.gather(1, ancestors)
            extras = dict(increments=increments, weights=weights, ancestors=ancestors)
        if callback is not None:
            callback(step=k, x_t=x_cur, **info, **extras)
    t0 = diffusion.model_timesteps(0, x_next.shape[0], device)
    final = calibrated_score(guidance, x_next, x_next, label_all, t0).double().view(images, k_particles)
    increments = guidance.scale * (final - previous)
    check_finite("SMC final potential increments", increments, 0)
    chosen = torch.stack([torch.multinomial(w, 1, generator=g)[0]
                          for w, g in zip(resampling_weights(increments), resampling)])
    return x_next.view(images, k_particles, *x_next.shape[1:])[torch.arange(images, device=device), chosen]


__all__ = ["best_of_n_sample", "calibrated_score", "candidate_seed", "particle_seeds", "resampling_seed",
           "resampling_weights", "smc_sample"]
