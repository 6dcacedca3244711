"""Discrete-time Gaussian diffusion (DDPM / ADM): β schedules, ADM's timestep respacing and the
posterior ``p(x_{t-1} | x_t)`` with fixed or learned-range variance.

Coefficients are computed in float64 and applied in float32, exactly as guided-diffusion's
``_extract_into_tensor`` does, so the respaced posterior matches ADM to ~1e-6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

VarianceType = Literal["learned_range", "fixed_small", "fixed_large"]


def beta_schedule(name: str, num_steps: int) -> np.ndarray:
    """ADM's named β schedules (``linear`` scaled to any T; ``cosine`` of Nichol & Dhariwal)."""
    if name == "linear":
        scale = 1000 / num_steps
        return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)
    if name == "cosine":
        f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return np.array([min(1 - f((i + 1) / num_steps) / f(i / num_steps), 0.999)
                         for i in range(num_steps)], dtype=np.float64)
    raise ValueError(f"unknown beta schedule {name!r}; expected 'linear' or 'cosine'")


def space_timesteps(num_steps: int, spacing: str | int | list[int]) -> list[int]:
    """The original timesteps kept by ADM's respacing, sorted ascending.

    ``spacing`` is ADM's ``timestep_respacing``: ``"250"`` (one section), ``"10,15,20"``
    (sections with their own counts, strides rounded with Python ``round``), or ``"ddimN"``
    (a constant integer stride giving exactly N steps).
    """
    if isinstance(spacing, int):
        spacing = str(spacing)
    if isinstance(spacing, str):
        if spacing == "":
            return list(range(num_steps))
        if spacing.startswith("ddim"):
            desired = int(spacing[len("ddim"):])
            for stride in range(1, num_steps):
                if len(range(0, num_steps, stride)) == desired:
                    return list(range(0, num_steps, stride))
            raise ValueError(f"cannot create exactly {desired} steps with an integer stride from {num_steps}")
        counts = [int(c) for c in spacing.split(",")]
    else:
        counts = [int(c) for c in spacing]
    size_per, extra = divmod(num_steps, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0  # accumulated, not multiplied: ADM rounds the running sum (ties differ)
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


@dataclass
class PosteriorStep:
    """One reverse step's quantities, as ADM's ``p_mean_variance`` returns them."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_xstart: torch.Tensor
    eps: torch.Tensor


class GaussianDiffusion:
    """A (respaced) DDPM. Index ``k`` is the spaced step (T−1 … 0); ``timestep_map[k]`` is the
    original timestep the network was trained with."""

    def __init__(self, betas: np.ndarray, timestep_map: list[int] | None = None,
                 variance_type: VarianceType = "learned_range"):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array in (0, 1]")
        if variance_type not in ("learned_range", "fixed_small", "fixed_large"):
            raise ValueError(f"variance_type must be learned_range, fixed_small or fixed_large, got {variance_type!r}")
        self.betas = betas
        self.num_steps = len(betas)
        self.timestep_map = list(range(self.num_steps)) if timestep_map is None else list(timestep_map)
        self.variance_type = variance_type
        alphas = 1.0 - betas
        self.alphas = alphas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        ac, acp = self.alphas_cumprod, self.alphas_cumprod_prev
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / ac)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / ac - 1)
        self.posterior_variance = betas * (1.0 - acp) / (1.0 - ac)
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(acp) / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - acp) * np.sqrt(alphas) / (1.0 - ac)
        self.log_betas = np.log(betas)
        self.fixed_large_variance = np.append(self.posterior_variance[1], betas[1:])
        self.fixed_large_log_variance = np.log(self.fixed_large_variance)
        # float32 copies of the schedule arrays, one per (array, device), made on first use: a step
        # then reads its coefficients by indexing instead of building ~8 new tensors (same values)
        self._tensors: dict[tuple[int, str], tuple[np.ndarray, torch.Tensor]] = {}

    @classmethod
    def respaced(cls, num_train_steps: int = 1000, spacing: str | int = "250", schedule: str = "linear",
                 variance_type: VarianceType = "learned_range") -> "GaussianDiffusion":
        """ADM's ``SpacedDiffusion``: keep ``space_timesteps`` and recompute
        ``β_k = 1 − ᾱ_{τ_k} / ᾱ_{τ_{k−1}}``."""
        base_ac = np.cumprod(1.0 - beta_schedule(schedule, num_train_steps))
        kept = space_timesteps(num_train_steps, spacing)
        last, betas = 1.0, []
        for t in kept:
            betas.append(1 - base_ac[t] / last)
            last = base_ac[t]
        return cls(np.array(betas), kept, variance_type)

    def _at(self, arr: np.ndarray, k: int, like: torch.Tensor) -> torch.Tensor:
        """``arr[k]`` as a float32 0-dim tensor on ``like``'s device (rounded from float64, as ADM's
        ``_extract_into_tensor``). ``arr`` is one of this schedule's own arrays."""
        key = (id(arr), str(like.device))
        cached = self._tensors.get(key)
        if cached is None or cached[0] is not arr:  # the array is kept in the entry: its id stays its own
            cached = self._tensors[key] = (arr, torch.tensor(arr, dtype=torch.float64).float().to(like.device))
        return cached[1][k]

    def model_timesteps(self, k: int, batch: int, device) -> torch.Tensor:
        return torch.full((batch,), self.timestep_map[k], dtype=torch.long, device=device)

    def q_sample(self, x0: torch.Tensor, k: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_k = sqrt(ᾱ_k)·x0 + sqrt(1−ᾱ_k)·ε`` for per-sample spaced indices ``k``."""
        ac = torch.as_tensor(self.alphas_cumprod, device=x0.device)[k].float().view(-1, *([1] * (x0.ndim - 1)))
        return ac.sqrt() * x0 + (1 - ac).sqrt() * noise

    def renoise(self, x_prev: torch.Tensor, k: int, noise: torch.Tensor) -> torch.Tensor:
        """One forward step back up, ``x_k = sqrt(α_k)·x_{k−1} + sqrt(1−α_k)·z`` (Universal
        Guidance's recurrence)."""
        a = self._at(self.alphas, k, x_prev)
        return a.sqrt() * x_prev + (1 - a).sqrt() * noise

    def predict_xstart(self, x_t: torch.Tensor, k: int, eps: torch.Tensor) -> torch.Tensor:
        return self._at(self.sqrt_recip_alphas_cumprod, k, x_t) * x_t - self._at(self.sqrt_recipm1_alphas_cumprod, k, x_t) * eps

    def posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, k: int) -> torch.Tensor:
        return self._at(self.posterior_mean_coef1, k, x_t) * x0 + self._at(self.posterior_mean_coef2, k, x_t) * x_t

    def p_mean_variance(self, model_output: torch.Tensor, x_t: torch.Tensor, k: int,
                        clip_denoised: bool = True) -> PosteriorStep:
        """Split the network output (ε, and the variance channels for ``learned_range``) and
        return the posterior mean/variance and the (clamped) predicted x̂0."""
        c = x_t.shape[1]
        if self.variance_type == "learned_range":
            if model_output.shape[1] != 2 * c:
                raise ValueError(f"learned_range variance needs {2 * c} output channels, got {model_output.shape[1]}")
            eps, v = model_output[:, :c], model_output[:, c:]
            min_log = self._at(self.posterior_log_variance_clipped, k, x_t)
            max_log = self._at(self.log_betas, k, x_t)
            frac = (v + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            if model_output.shape[1] != c:
                raise ValueError(f"{self.variance_type} variance needs {c} output channels, got {model_output.shape[1]}")
            eps = model_output
            if self.variance_type == "fixed_large":
                var, log_var = self.fixed_large_variance, self.fixed_large_log_variance
            else:
                var, log_var = self.posterior_variance, self.posterior_log_variance_clipped
            variance = self._at(var, k, x_t).expand_as(x_t)
            log_variance = self._at(log_var, k, x_t).expand_as(x_t)
        x0 = self.predict_xstart(x_t, k, eps)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        return PosteriorStep(self.posterior_mean(x0, x_t, k), variance, log_variance, x0, eps)
