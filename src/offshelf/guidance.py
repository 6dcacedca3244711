"""Calibrated off-the-shelf classifier guidance (Ma et al., ICLR 2024, Sec. 4).

The pieces a sampler combines:

* :func:`calibrated_log_prob` -- ``τ1·f_y − logsumexp(τ2·f)`` (Eq. 4). As in the
  official code the "temperatures" *multiply* the logits.
* :class:`ClassifierGuidance` -- classifier + input adapter (x̂0 or x_t, optional
  resize / normalisation) + temperatures; returns ``∇ log p̃(y | input)`` for a batch.
* :func:`calibrated_gradient` -- ``∇_x`` of Eq. 4 for any map ``x -> logits`` (a classifier, a
  classifier after a VAE decoder, or after the denoiser): the one gradient every sampler uses.
* the schedules: :func:`adm_guidance_weight` (DDPM, Eq. 5: ``Σ_t + γ·sin(πt/T)·Σ_max``),
  :func:`edm_step_size` (Algorithm 2: linear decay plus the same sine bump) and
  :func:`dit_guidance_weight` (Algorithm 3).
* :class:`Guidance` -- the one value carrying every sampler's guidance knobs;
  :func:`cfg_combine` -- the one classifier-free combination ``ε_u + w·(ε_c − ε_u)``.
* :class:`FiniteGuard` -- samplers stop at the first NaN or inf instead of writing black images,
  read back once per batch rather than once per step; :func:`check_finite` -- the one-off check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

InputKind = Literal["x0", "xt"]


def calibrated_log_prob(logits: torch.Tensor, y: torch.Tensor, joint_temperature: float = 1.0,
                        marginal_temperature: float = 1.0) -> torch.Tensor:
    """Per-sample ``τ1·f_y(x) − log Σ_j exp(τ2·f_j(x))`` in fp32.

    With ``τ1 == τ2 == 1`` this is ``log_softmax(f)_y``. With ``τ2 < τ1`` the joint energy
    ``f_y`` outweighs the marginal one (paper Eq. 4); with ``τ2 == 0`` the marginal term is
    the constant ``log K`` and the gradient is that of the raw target logit (the EDM setting).
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be [batch, classes], got shape {tuple(logits.shape)}")
    if y.shape != logits.shape[:1]:
        raise ValueError(f"labels must be [batch]={logits.shape[0]}, got shape {tuple(y.shape)}")
    logits = logits.float()
    joint = joint_temperature * logits.gather(1, y.long()[:, None])[:, 0]
    marginal = torch.logsumexp(marginal_temperature * logits, dim=1)
    return joint - marginal


def calibrated_probs(logits: torch.Tensor, marginal_temperature: float = 1.0) -> torch.Tensor:
    """The class probabilities the calibrated classifier reports: ``softmax(τ2·f)``.

    Used for calibration (ECE); for ``τ1 == τ2`` it is the normalised version of
    :func:`calibrated_log_prob`.
    """
    return torch.softmax(marginal_temperature * logits.float(), dim=1)


# The paper's calibrated DDPM guidance (ImageNet 128, the official guided_sample.sh; docs/method.md
# §1-§3): what offshelf.guide() and the configs' `calibrated` bases use. The classes below default
# to neutral values instead (τ2 = 1, γ = 0), so that a field left out changes nothing.
PAPER_DDPM = {"scale": 1.0, "softplus_beta": 3.0, "joint_temperature": 1.0, "marginal_temperature": 0.5,
              "sine_factor": 0.3}


@dataclass
class InputAdapter:
    """What the classifier sees. The official DDPM code feeds the clamped x̂0 at the
    diffusion resolution, unnormalised, in [-1, 1]; ``resize`` / ``mean``+``std`` are the
    principled variant (torchvision's preprocessing) and are off by default."""

    resize: int | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize is not None and tuple(x.shape[-2:]) != (self.resize, self.resize):
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear",
                              align_corners=False, antialias=True)
        if self.mean is not None or self.std is not None:
            if self.mean is None or self.std is None:
                raise ValueError("InputAdapter needs both mean and std, or neither")
            mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            x = ((x + 1) / 2 - mean) / std  # [-1,1] -> [0,1] -> standardised
        return x


@dataclass
class ClassifierGuidance:
    """``∇ log p̃(y | input)`` for a batch, from any classifier.

    Defaults are neutral, not the paper's: ``marginal_temperature=1.0`` is plain log-softmax; the
    paper's calibrated DDPM value is τ2 = 0.5 (:data:`PAPER_DDPM`, what ``offshelf.guide`` uses).

    ``classifier(x) -> logits`` for an off-the-shelf network; set ``time_conditioned`` for a
    noise-aware classifier called as ``classifier(x_t, t)`` (ADM's fine-tuned baseline).
    ``input`` chooses x̂0 (paper default) or x_t. The returned gradient is w.r.t. the
    *detached* classifier input: no backprop through the denoiser (official code); the
    sampler decides how to use it.
    """

    classifier: nn.Module | Callable
    joint_temperature: float = 1.0
    marginal_temperature: float = 1.0
    input: InputKind = "x0"
    adapter: InputAdapter = field(default_factory=InputAdapter)
    time_conditioned: bool = False

    def __post_init__(self):
        if self.input not in ("x0", "xt"):
            raise ValueError(f"guidance input must be 'x0' or 'xt', got {self.input!r}")

    def logits(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        x = self.adapter(x.float())
        if self.time_conditioned:
            if t is None:
                raise ValueError("a time-conditioned classifier needs the timestep t")
            return self.classifier(x, t).float()
        return self.classifier(x).float()

    def select_input(self, x_t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return x0 if self.input == "x0" else x_t

    def gradient(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(∇_x log p̃(y|x), logits)`` with ``x`` treated as a leaf."""
        return calibrated_gradient(x.float(), y, lambda u: self.logits(u, t), self.joint_temperature,
                                   self.marginal_temperature)


@dataclass
class SwitchedGuidance:
    """Table 2's "combined" classifier: ``early`` while the spaced step index is at least
    ``switch_step`` (high noise), ``late`` below it (the paper: ResNet for 250→50, the
    fine-tuned classifier for 50→0)."""

    early: ClassifierGuidance
    late: ClassifierGuidance
    switch_step: int

    def at(self, step: int) -> ClassifierGuidance:
        return self.early if step >= self.switch_step else self.late


def calibrated_gradient(x: torch.Tensor, y: torch.Tensor, logits_of: Callable[[torch.Tensor], torch.Tensor],
                        joint_temperature: float = 1.0, marginal_temperature: float = 1.0,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(∇_x [τ1·f_y − logsumexp(τ2·f)], logits)`` with ``f = logits_of(x)`` and ``x`` a fresh leaf.

    ``logits_of`` is whatever lies between ``x`` and the logits: the classifier on x̂0 (Algorithm 1,
    the official code: no backprop through the denoiser), the classifier after the VAE decoder
    (Algorithm 3), or the denoiser and the x̂0 formula too (the "through the denoiser" variant)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = logits_of(x)
        log_p = calibrated_log_prob(logits, y, joint_temperature, marginal_temperature)
        (grad,) = torch.autograd.grad(log_p.sum(), x)
    return grad, logits.detach()


def guidance_at(guidance, step: int) -> ClassifierGuidance:
    return guidance.at(step) if isinstance(guidance, SwitchedGuidance) else guidance


SigmaMaxMode = Literal["official", "first_beta"]
DiTSchedule = Literal["adm", "sine"]


@dataclass(frozen=True, eq=False)
class Guidance:
    """Every classifier-guidance knob of every sampler, in one value: pass it as ``guidance=`` to
    :func:`~offshelf.samplers.ddpm.ddpm_sample`, :func:`~offshelf.samplers.edm.edm_sample` or
    :func:`~offshelf.samplers.dit.dit_sample` (``guidance=None``: unguided).

    * ``classifier`` -- the :class:`ClassifierGuidance` (or :class:`SwitchedGuidance`) giving
      ``∇ log p̃(y | u)``.
    * ``scale`` -- s: the official ``classifier_scale`` (DDPM), w of Algorithm 2 (EDM), the weight
      of the normalised gradient (DiT).
    * ``sine_factor`` -- γ of Eq. 5's sine bump ``max(γ·sin(πk/T), 0)`` (all three algorithms).
    * ``sigma_max_mode`` -- Σ_max of Eq. 5: ``'official'`` (DDPM's default: running max of
      Σ[0,0,0,0] along the trajectory, as the official code) or ``'first_beta'`` (β of the first
      step, batch-independent; DiT's only and default mode); ``None``: the family's default.
    * ``schedule`` -- DiT's weight s_k: ``'adm'`` (Eq. 5, the default) or ``'sine'``; DDPM's
      weight is Eq. 5 (``'adm'``); ``None``: the family's default.
    * ``through_denoiser`` -- DDPM only: backpropagate through the network and the x̂0 formula.
    * ``label`` -- the target class per sample; ``None``: the sampler's class condition
      (DDPM/DiT ``y``, EDM ``argmax(y)``).

    A sampler refuses (ValueError naming the field) a value it cannot honour: see :meth:`require`.

    Defaults are neutral, not the paper's: ``sine_factor=0.0`` adds no bump; the paper's
    calibrated DDPM values are s = 1, γ = 0.3 (:data:`PAPER_DDPM`, what ``offshelf.guide`` uses).
    """

    classifier: "ClassifierGuidance | SwitchedGuidance"
    scale: float = 1.0
    sine_factor: float = 0.0
    sigma_max_mode: SigmaMaxMode | None = None
    schedule: DiTSchedule | None = None
    through_denoiser: bool = False
    label: torch.Tensor | None = None

    def __post_init__(self):
        if self.sigma_max_mode not in (None, "official", "first_beta"):
            raise ValueError(f"Guidance.sigma_max_mode must be 'official', 'first_beta' or None, "
                             f"got {self.sigma_max_mode!r}")
        if self.schedule not in (None, "adm", "sine"):
            raise ValueError(f"Guidance.schedule must be 'adm', 'sine' or None, got {self.schedule!r}")

    def require(self, sampler: str, **supported: tuple) -> None:
        """Raise a ValueError naming the first field whose value is not in ``supported[field]``:
        ``guidance.require("edm_sample", through_denoiser=(False,))``."""
        for name, values in supported.items():
            value = getattr(self, name)
            if not any(value is v or value == v for v in values):
                raise ValueError(f"{sampler} cannot honour Guidance.{name}={value!r} "
                                 f"(supported: {', '.join(repr(v) for v in values)})")

    def at(self, step: int) -> ClassifierGuidance:
        """The classifier guiding at spaced step ``step`` (``SwitchedGuidance`` switches)."""
        return guidance_at(self.classifier, step)


@dataclass
class CFGOutput:
    """One classifier-free-guided evaluation: ``output = [ε_cfg, rest of the conditional output]``
    for p_mean_variance, and the pieces guidance needs."""

    output: torch.Tensor
    eps_uncond: torch.Tensor | None  # ε_u on the CFG channels
    delta: torch.Tensor | None  # Δε = ε_c − ε_u on the CFG channels


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, cfg_scale: float, cfg_channels: int) -> CFGOutput:
    """The classifier-free combination ``ε_u + w·(ε_c − ε_u)`` on channels ``[:cfg_channels]``; the
    remaining channels (further ε channels, variance channels) from the conditional branch. The one
    CFG formula of Algorithm 1 (all ε channels) and Algorithm 3 (DiT's ``forward_with_cfg``)."""
    eps_u, delta = uncond[:, :cfg_channels], cond[:, :cfg_channels] - uncond[:, :cfg_channels]
    output = torch.cat([eps_u + cfg_scale * delta, cond[:, cfg_channels:]], dim=1)
    return CFGOutput(output, eps_u, delta)


def sine_bump(step: int, num_steps: int, sine_factor: float) -> float:
    """``max(γ·sin(π·t/T), 0)``, γ = ``sine_factor``: the added schedule term of Eq. 5 before scaling by Σ_max."""
    return max(sine_factor * math.sin(math.pi * step / num_steps), 0.0)


def adm_guidance_weight(variance: torch.Tensor, step: int, num_steps: int, sigma_max: float,
                        sine_factor: float) -> torch.Tensor:
    """Eq. 5 as the official DDPM code computes it: ``Σ_t + max(γ·sin(πt/T)·Σ_max, 0)``.

    ``variance`` is the per-pixel (learned or fixed) posterior variance Σ_t; ``sigma_max`` the
    running max of the reference variance along this trajectory; ``step`` the spaced index
    t ∈ {T−1..0}.
    """
    bump = sine_bump(step, num_steps, sine_factor)
    # without a bump the sum is Σ_t itself (Σ_t > 0, Σ_max finite): one pass over the image saved
    return variance if bump == 0 else variance + bump * sigma_max


def edm_step_size(step: int, num_steps: int, scale: float, sine_factor: float) -> float:
    """Algorithm 2's step size w_i: ``max(w·(N+1−i)/(N+1), 1e−5) + sin(πi/N)·w·γ``, ``w = scale``,
    γ = ``sine_factor``."""
    linear = max(scale * (num_steps + 1 - step) / (num_steps + 1), 1e-5)
    return linear + math.sin(math.pi * step / num_steps) * scale * sine_factor


def dit_guidance_weight(schedule: DiTSchedule, scale: float, sine_factor: float, step: int, num_steps: int,
                        variance: torch.Tensor, sigma_max: float) -> torch.Tensor | float:
    """Algorithm 3's weight s_k of the normalised gradient: ``scale·(1 + max(γ·sin(πk/T), 0))``
    (``sine``, a scalar) or ``scale·(Σ_k + max(γ·sin(πk/T), 0)·Σ_max)`` (``adm``: Eq. 5, per pixel),
    γ = ``sine_factor``."""
    bump = sine_bump(step, num_steps, sine_factor)
    if schedule == "sine":
        return scale * (1.0 + bump)
    if schedule == "adm":
        return scale * (variance + bump * sigma_max)
    raise ValueError(f"DiT guidance schedule must be 'adm' or 'sine', got {schedule!r}")


class NonFiniteError(FloatingPointError):
    """A sampler met NaN or inf: the message names the step and the tensor (and, once a backend
    adds it, the setting). Raised instead of letting the value become a black image."""


def check_finite(name: str, tensor: torch.Tensor | None, step: int) -> None:
    """Raise :class:`NonFiniteError` naming ``name`` and ``step`` if ``tensor`` holds NaN or inf.

    Reads the answer back to the host at once (a device sync on a GPU): for one-off checks. A
    sampling loop records its tensors in a :class:`FiniteGuard` instead and reads them once."""
    if tensor is not None and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise NonFiniteError(f"step {step}: {name} has {bad} non-finite value(s) of {tensor.numel()} "
                             f"(shape {tuple(tensor.shape)})")


class FiniteGuard:
    """The non-finite guard of a sampling loop, without a host sync per step.

    :meth:`watch` reduces a tensor to one number on its own device, ``sum(t · 0)``: exactly 0 when
    every value is finite (x · 0 = ±0), NaN as soon as one is NaN or ±inf (inf · 0 = NaN), and
    writes it into a preallocated slot. No value comes back to the host, so a GPU's queue never
    waits and the step stays capturable; only the name, step and shape of each slot are kept on
    the host. (Two elementwise passes: ``isfinite`` is four on a CPU, and several times slower.)
    :meth:`check` reads every slot written since the last check in one transfer and raises the
    :class:`NonFiniteError` of the *first* watched tensor holding NaN or inf, in the order they
    were watched: the step and tensor :func:`check_finite` called at each watch would have named.

    The samplers check once per batch, before returning the images (nothing non-finite is ever
    returned, so never written), and before each callback (which may read the values). Once per
    batch rather than every k steps: the images are read back at the end of the batch anyway, so the
    check costs no extra sync; a NaN only wastes the rest of that batch's steps, and only when it
    already fails.
    """

    def __init__(self, capacity: int = 64):
        self._capacity = max(1, int(capacity))
        self._sums: torch.Tensor | None = None  # float64 sum(t·0) per slot, on the watched tensors' device
        self._watched: list[tuple[str, int, tuple[int, ...]]] = []  # name, step, shape per slot

    def watch(self, name: str, tensor: torch.Tensor | None, step: int) -> None:
        """Record whether ``tensor`` is all finite, for :meth:`check` (None: nothing to watch)."""
        if tensor is None:
            return
        slot = len(self._watched)
        sums = self._sums
        if sums is None or sums.device != tensor.device:
            if sums is not None and slot:
                self.check()  # slots live on one device; a tensor on another (rare) flushes them first
                slot = 0
            sums = self._sums = torch.empty(self._capacity, dtype=torch.float64, device=tensor.device)
        elif slot == sums.numel():  # grow on the device: a copy, not a read
            grown = torch.empty(2 * slot, dtype=torch.float64, device=tensor.device)
            grown[:slot] = sums
            sums = self._sums = grown
        sums[slot] = (tensor.detach() * 0).sum()
        self._watched.append((name, step, tuple(tensor.shape)))

    def check(self) -> None:
        """Raise :class:`NonFiniteError` for the first watched tensor that held NaN or inf (one host
        read for all slots since the last check), then start over with no slots."""
        watched, self._watched = self._watched, []
        if not watched:
            return
        sums = self._sums[:len(watched)].tolist()
        for (name, step, shape), total in zip(watched, sums):
            if total != 0:  # NaN: the sum of zeros is zero
                raise NonFiniteError(f"step {step}: {name} has non-finite value(s) (NaN or inf; shape {shape})")
