"""Calibrated off-the-shelf classifier guidance for diffusers models and schedulers
(docs/diffusers.md).

:class:`GuidedModel` wraps a diffusers denoiser (``UNet2DModel``, ``DiTTransformer2DModel``,
``SD3Transformer2DModel``, ...) and returns its output corrected by the guidance, in the
scheduler's own ``prediction_type``, so the scheduler's unchanged ``step`` samples the guided
model. :func:`guide` turns a ``DDPMPipeline``-style (pixel UNet) or ``DiTPipeline``-style (latent
transformer + VAE) pipeline into a :class:`ClassifierGuidedPipeline`.

Per model call at scheduler step i of N (k = N − 1 − i, the spaced index of Algorithm 1):

    x_in    = a·x0 + b·ε          the model input; (a, b) from the scheduler's own ᾱ_t or σ_t:
                                   ᾱ: (√ᾱ, √(1−ᾱ)); σ (Euler, DPM-Solver): (1, σ)/√(1+σ²);
                                   flow σ: (1−σ, σ)
    ᾱ       = a²/(a²+b²)          the variance-preserving ᾱ of that noise level (any scheduler)
    (x̂0, ε) = the prediction read in its ``prediction_type`` (epsilon, sample, v_prediction, flow)
    g       = ∇_u [τ1·f_y(u) − logsumexp(τ2·f(u))] at u = x̂0, detached (or decoded by the VAE:
              offshelf.samplers.dit.decoder_gradient); input="xt": u = x_in/√(a²+b²)
    x̂0'     = x̂0 + κ·g,   ε' = ε − (a/b)·κ·g   (x_in = a·x̂0' + b·ε' still holds)
    output  = (x̂0', ε') written back in the ``prediction_type``

As in offshelf's DDPM sampler (docs/method.md §3) the gradient taken at x̂0 is used as if it
were the gradient with respect to the variance-preserving x_t: no backpropagation through the
denoiser. κ comes from one of two schedules:

* ``"adm"`` (default), Eq. 5 as Algorithm 1 applies it: the DDPM step between this noise level
  and the scheduler's next one has β = 1 − ᾱ/ᾱ_next, posterior variance Σ (fixed_small β̃,
  fixed_large β or the model's learned range, with ADM's clipping at the last step) and
  posterior-mean coefficient c1 = β·√ᾱ_next/(1−ᾱ) on x̂0. κ = s·(Σ + max(γ·sin(πk/N), 0)·Σ_max)/c1
  moves the DDPM posterior mean by exactly s·(Σ + bump)·g, Algorithm 1's μ' = μ + (Σ+bump)·s·g:
  with ``DDPMScheduler`` the wrapper reproduces ``offshelf.samplers.ddpm.ddpm_step``. Σ_max is β
  of the first sampling step (the DDPM sampler's ``Guidance(sigma_max_mode="first_beta")``): a wrapper sees one
  call at a time and must not tie a sample to its batch.
* ``"score"``: a score increment λ = s·(1 + max(γ·sin(πk/N), 0)), i.e. ε' = ε − √(1−ᾱ)·λ·g
  (score = −ε/√(1−ᾱ)): with an exact noisy classifier and s = 1, γ = 0 every scheduler samples
  p(x | y) exactly. At zero signal (ᾱ = 0) a score increment has no finite x̂0, and is skipped.

Where this departs from the paper's DDPM formula: the paper adds s·Σ·g to the *posterior mean*
of an ancestral DDPM step. A diffusers scheduler owns its update, so the wrapper can only change
the prediction; the ``"adm"`` weight is the one that makes a DDPM step's mean move by exactly
s·(Σ+bump)·g. Other schedulers (DDIM, DPM-Solver, Euler, flow matching) integrate the same
corrected prediction with their own update, so there the shift of their next sample is not
Σ·g: the guidance strength is that of the DDPM step between the same two noise levels, expressed
as a change of x̂0 and ε. Σ_max = β of the first step is 1 when the schedule starts at zero signal
(flow matching's σ = 1), where the bump is correspondingly larger than with ADM's 250 steps.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from offshelf.guidance import ClassifierGuidance, FiniteGuard, adm_guidance_weight, sine_bump

Schedule = Literal["adm", "score"]
Variance = Literal["fixed_small", "fixed_large", "learned_range"]
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow")
_FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
#: Schedulers that call the model more than once per timestep, or repeat a timestep (PNDM's
#: Runge-Kutta / linear-multistep warm-up): a wrapper that corrects one call at a time cannot
#: guide them as the library does, so they are refused by name (``order > 1`` catches the rest).
REFUSED_SCHEDULERS = ("PNDMScheduler", "HeunDiscreteScheduler", "FlowMatchHeunDiscreteScheduler",
                      "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler")


def _require_diffusers():
    try:
        import diffusers
    except ImportError as e:  # pragma: no cover - environment problem
        raise ImportError("offshelf.integrations.diffusers needs the 'diffusers' extra: "
                          "pip install 'offshelf[diffusers]'") from e
    return diffusers


# --- what a scheduler says about its noise levels and its prediction ---------------------------

def check_scheduler(scheduler) -> None:
    """Refuse, in one line naming it, a scheduler that calls the model twice per step (Heun,
    KDPM2) or repeats timesteps (PNDM): :data:`REFUSED_SCHEDULERS`."""
    name = type(scheduler).__name__
    if name in REFUSED_SCHEDULERS or int(getattr(scheduler, "order", 1) or 1) > 1:
        raise ValueError(f"{name} is not supported by offshelf guidance: it calls the model more than once per step "
                         "or repeats timesteps; swap it, e.g. pipe.scheduler = "
                         "diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config) (or DDIMScheduler, "
                         "DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler for flow models)")


def copy_scheduler(scheduler, **overrides):
    """A fresh scheduler of the same class and config, with ``overrides``. diffusers'
    ``from_config`` drops a config entry listed in ``_use_default_values`` (every argument the
    scheduler was built without, e.g. ``DDPMScheduler()``'s ``clip_sample``), so that list goes."""
    config = {k: v for k, v in dict(scheduler.config).items() if k != "_use_default_values"}
    config.update(overrides)
    return type(scheduler).from_config(config)


def prediction_type(scheduler) -> str:
    """The scheduler's ``prediction_type`` as one of :data:`PREDICTION_TYPES` (flow-matching
    schedulers have none: their model predicts the velocity ε − x0)."""
    config = scheduler.config
    if type(scheduler).__name__ in _FLOW_SCHEDULERS:
        return "flow"
    kind = config.get("prediction_type")
    kind = {"original_sample": "sample", "flow_prediction": "flow"}.get(kind, kind)
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"{type(scheduler).__name__}.config.prediction_type={config.get('prediction_type')!r}: "
                         f"expected one of {PREDICTION_TYPES}")
    return kind


def noise_levels(scheduler) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)``, float64, one entry per step of ``scheduler.timesteps`` plus the level after the
    last step: the model input at step i is ``a[i]·x0 + b[i]·ε``. Read from the scheduler's own
    ``sigmas`` (Euler, DPM-Solver, flow matching) or ``alphas_cumprod`` (DDPM, DDIM)."""
    name = type(scheduler).__name__
    timesteps = getattr(scheduler, "timesteps", None)
    if timesteps is None:
        raise ValueError(f"{name} has no timesteps: call scheduler.set_timesteps(...) first")
    n = len(timesteps)
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None:
        sigmas = torch.as_tensor(sigmas).detach().cpu().double().flatten()
        if len(sigmas) != n + 1:
            raise ValueError(f"{name}: {len(sigmas)} sigmas for {n} timesteps; offshelf supports schedulers with one "
                             "model call per timestep and a final sigma (DDPM, DDIM, DPM-Solver multistep, Euler, "
                             "flow-matching Euler)")
        if name in _FLOW_SCHEDULERS or scheduler.config.get("use_flow_sigmas", False):
            return 1 - sigmas, sigmas
        a = torch.where(torch.isinf(sigmas), torch.zeros_like(sigmas), 1 / torch.sqrt(1 + sigmas ** 2))
        b = torch.where(torch.isinf(sigmas), torch.ones_like(sigmas), sigmas * a)
        return a, b
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if alphas_cumprod is None:
        raise ValueError(f"{name} has neither sigmas nor alphas_cumprod: not a diffusion scheduler offshelf can read")
    ac = torch.as_tensor(alphas_cumprod).detach().cpu().double()[torch.as_tensor(timesteps).cpu().long()]
    ac = torch.cat([ac, torch.ones(1, dtype=torch.float64)])  # after the last step: the clean sample
    return ac.sqrt(), (1 - ac).clamp_min(0).sqrt()


def step_index(scheduler, timestep) -> int:
    """Index of ``timestep`` (a number or a batch of equal values) in ``scheduler.timesteps``;
    where it occurs twice, the scheduler's own ``step_index`` decides."""
    t = torch.as_tensor(timestep).detach().cpu().double().flatten()
    if t.numel() == 0 or not bool((t == t[0]).all()):
        raise ValueError(f"one timestep per model call expected, got {t.tolist()}")
    schedule = torch.as_tensor(scheduler.timesteps).detach().cpu().double()
    matches = torch.nonzero((schedule - t[0]).abs() <= 1e-4 * max(1.0, abs(float(t[0])))).flatten().tolist()
    if not matches:
        raise ValueError(f"timestep {float(t[0])} is not one of {type(scheduler).__name__}.timesteps "
                         f"({schedule[:3].tolist()}...): guide with the scheduler that samples, after its set_timesteps")
    current = getattr(scheduler, "step_index", None)
    return current if current in matches else matches[0]


def to_x0_eps(prediction: torch.Tensor, x: torch.Tensor, a: float, b: float, kind: str
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x̂0, ε)`` of a prediction for the model input ``x = a·x0 + b·ε``."""
    if kind == "epsilon":
        return (x - b * prediction) / a, prediction
    if kind == "sample":
        return prediction, (x - a * prediction) / b
    if kind == "v_prediction":  # v = a·ε − b·x0 with a² + b² = 1
        return a * x - b * prediction, b * x + a * prediction
    if kind == "flow":  # v = ε − x0 with a = 1 − b
        return x - b * prediction, x + a * prediction
    raise ValueError(f"prediction type {kind!r}: expected one of {PREDICTION_TYPES}")


def from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, a: float, b: float, kind: str) -> torch.Tensor:
    """The prediction of ``kind`` whose ``(x̂0, ε)`` are the given ones (inverse of :func:`to_x0_eps`)."""
    return {"epsilon": lambda: eps, "sample": lambda: x0, "v_prediction": lambda: a * eps - b * x0,
            "flow": lambda: eps - x0}[kind]()


# --- the correction ---------------------------------------------------------------------------

@dataclass
class SchedulerGuidance:
    """Calibrated classifier guidance as one diffusers scheduler sees it (module docstring).

    ``guidance`` is the library's :class:`~offshelf.guidance.ClassifierGuidance` (classifier,
    τ1, τ2, x̂0 or x_t input); ``scale`` s and ``sine_factor`` γ as in Algorithm 1. ``variance``
    (``"adm"`` schedule only): Σ of the DDPM step; default the scheduler's ``variance_type`` where
    it has one, else the learned range when the model outputs 2·C channels, else fixed_small.
    ``sigma_max``: Σ_max of Eq. 5, default β of the first sampling step. ``clip_denoised``
    (pixel models): the classifier sees clamp(x̂0, −1, 1) and the returned prediction is that of
    the clamped x̂0 plus guidance, ADM's ``clip_denoised``; give the scheduler ``clip_sample=False``
    so the guidance is not clamped away. ``vae``: latent model; x̂0 is decoded as
    ``vae.decode(x̂0 / latent_scale)`` before the classifier, and the gradient taken through it.
    """

    scheduler: object
    guidance: ClassifierGuidance
    scale: float = 1.0
    sine_factor: float = 0.3
    schedule: Schedule = "adm"
    variance: Variance | None = None
    sigma_max: float | None = None
    clip_denoised: bool = False
    vae: nn.Module | None = None
    latent_scale: float | None = None
    kind: str = field(init=False)
    # the scheduler's noise levels and ᾱ, read once per set_timesteps (a host read each) instead of every step
    _levels: tuple | None = field(default=None, init=False, repr=False)
    _abar: tuple | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.schedule not in ("adm", "score"):
            raise ValueError(f"schedule must be 'adm' or 'score', got {self.schedule!r}")
        if self.variance not in (None, "fixed_small", "fixed_large", "learned_range"):
            raise ValueError(f"variance must be fixed_small, fixed_large or learned_range, got {self.variance!r}")
        if self.vae is not None:
            if self.latent_scale is None:
                self.latent_scale = float(self.vae.config.scaling_factor)
            if self.clip_denoised:
                raise ValueError("clip_denoised clamps x̂0 to [-1, 1]: for pixel models only, not latents (vae given)")
        check_scheduler(self.scheduler)
        if self.guidance is not None and not isinstance(self.guidance, ClassifierGuidance):
            raise TypeError(f"guidance must be an offshelf.guidance.ClassifierGuidance, got {type(self.guidance).__name__}")
        self.kind = prediction_type(self.scheduler)
        if self.clip_denoised and (self.scheduler.config.get("clip_sample") or self.scheduler.config.get("thresholding")):
            raise ValueError(f"clip_denoised=True with {type(self.scheduler).__name__}.config.clip_sample/thresholding "
                             "on clamps x̂0 twice and cuts the guidance: make the scheduler with clip_sample=False")

    def _variance_type(self, channels: int, out_channels: int) -> str:
        if self.variance is not None:
            chosen = self.variance
        else:
            own = self.scheduler.config.get("variance_type")
            own = {"fixed_small_log": "fixed_small", "fixed_large_log": "fixed_large"}.get(own, own)
            if own is not None:
                chosen = own
            else:
                chosen = "learned_range" if out_channels == 2 * channels else "fixed_small"
        if chosen not in ("fixed_small", "fixed_large", "learned_range"):
            raise ValueError(f"variance_type {chosen!r} is not one of fixed_small, fixed_large, learned_range")
        if chosen == "learned_range" and out_channels != 2 * channels:
            raise ValueError(f"learned_range variance needs the model's {2 * channels} output channels "
                             f"(ε and v), got {out_channels}")
        return chosen

    def x0_weight(self, i: int, a: torch.Tensor, b: torch.Tensor, variance_channels: torch.Tensor | None,
                  channels: int, out_channels: int) -> torch.Tensor | float:
        """κ_i: how far x̂0 moves per unit of gradient at step ``i`` (module docstring)."""
        n = len(a) - 1
        k = n - 1 - i  # Algorithm 1's spaced index: T−1 at the first step, 0 at the last
        if self._abar is None or self._abar[0] is not a or self._abar[1] is not b:
            self._abar = (a, b, (a ** 2 / (a ** 2 + b ** 2)).tolist())
        abar = self._abar[2]
        if self.schedule == "score":
            if abar[i] <= 0:
                return 0.0
            return self.scale * (1 + sine_bump(k, n, self.sine_factor)) * (1 - abar[i]) / math.sqrt(abar[i])

        def beta(j):  # the DDPM step from level j to level j+1
            return 1 - abar[j] / abar[j + 1]

        def beta_tilde(j):
            return beta(j) * (1 - abar[j + 1]) / (1 - abar[j])

        b_i = beta(i)
        if not 0 < b_i <= 1:
            raise ValueError(f"step {i}: noise levels ᾱ={abar[i]:.6g} → {abar[i + 1]:.6g} do not decrease the noise")
        # ADM's clipping: at the last step β̃ = 0, so its log (learned range) and fixed_large take β̃ of the step before.
        clipped = beta_tilde(i) if i < n - 1 or n < 2 else beta_tilde(n - 2)
        variance_type = self._variance_type(channels, out_channels)
        if variance_type == "fixed_small":
            sigma = beta_tilde(i)
        elif variance_type == "fixed_large":
            sigma = b_i if i < n - 1 or n < 2 else clipped
        else:
            frac = (variance_channels.float() + 1) / 2
            # float32 coefficients applied to float32 tensors, as guided-diffusion's _extract_into_tensor
            max_log = torch.tensor(math.log(b_i), dtype=torch.float32)
            min_log = torch.tensor(math.log(clipped), dtype=torch.float32)
            sigma = torch.exp(frac * max_log + (1 - frac) * min_log)
        sigma_max = self.sigma_max if self.sigma_max is not None else beta(0)
        weight = adm_guidance_weight(torch.as_tensor(sigma), k, n, sigma_max, self.sine_factor)
        c1 = b_i * math.sqrt(abar[i + 1]) / (1 - abar[i])
        return self.scale * weight / c1

    def levels(self) -> tuple[torch.Tensor, torch.Tensor, list[float], list[float]]:
        """``(a, b)`` of :func:`noise_levels` and the same as lists of floats, read from the scheduler
        once per ``set_timesteps`` (which replaces ``scheduler.timesteps``)."""
        timesteps = getattr(self.scheduler, "timesteps", None)
        if self._levels is None or self._levels[0] is not timesteps:
            a, b = noise_levels(self.scheduler)
            self._levels = (timesteps, a, b, a.tolist(), b.tolist())
        return self._levels[1:]

    def gradient(self, x0: torch.Tensor, x: torch.Tensor, c: float, target: torch.Tensor, t: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.vae is not None:
            from offshelf.samplers.dit import decoder_gradient

            return decoder_gradient(self.guidance, self.vae, x0, target, t, self.latent_scale)
        return self.guidance.gradient(self.guidance.select_input(x / c, x0), target, t)

    def correct(self, prediction: torch.Tensor, sample: torch.Tensor, timestep, target, *, step: int | None = None,
                guard: FiniteGuard | None = None) -> tuple[torch.Tensor, dict]:
        """The guided prediction for model input ``sample`` at ``timestep``, toward labels ``target``.
        Channels beyond the sample's (a learned variance) pass through unchanged. Returns
        ``(prediction, info)``; ``info`` holds pred_xstart, grad, logits, weight.

        ``step``: the index of ``timestep`` in ``scheduler.timesteps`` where the caller knows it
        (else it is looked up, a host read of the timestep). A NaN or inf in the denoiser output,
        the logits, the gradient or the guided prediction raises
        :class:`~offshelf.guidance.NonFiniteError` naming the step and tensor: at once, or, given the
        sampling loop's ``guard`` (:class:`~offshelf.guidance.FiniteGuard`), when the loop checks it."""
        channels = sample.shape[1]
        if prediction.shape[0] != sample.shape[0] or prediction.shape[2:] != sample.shape[2:] \
                or prediction.shape[1] < channels:
            raise ValueError(f"model output {tuple(prediction.shape)} does not fit the sample {tuple(sample.shape)}")
        if target is None:
            raise ValueError("guidance needs target labels: pass class labels or guidance_label")
        target = torch.as_tensor(target, device=sample.device).long().reshape(-1)
        if target.shape != sample.shape[:1]:
            raise ValueError(f"target labels must be [batch]={sample.shape[0]}, got shape {tuple(target.shape)}")
        i = step_index(self.scheduler, timestep) if step is None else step
        a_all, b_all, a_list, b_list = self.levels()
        a, b = a_list[i], b_list[i]
        own_guard = guard is None
        guard = FiniteGuard() if own_guard else guard
        c = math.hypot(a, b)
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(sample.shape[0])
        pred, extra = prediction[:, :channels].float(), prediction[:, channels:]
        x = sample.float()
        guard.watch("denoiser output", pred, i)
        x0, eps = to_x0_eps(pred, x, a, b, self.kind)
        if self.clip_denoised:
            x0 = x0.clamp(-1, 1)
            eps = (x - a * x0) / b
        grad, logits = self.gradient(x0, x, c, target, t)
        guard.watch("classifier logits", logits, i)
        guard.watch("guidance gradient", grad, i)
        weight = self.x0_weight(i, a_all, b_all, extra if extra.shape[1] else None, channels, prediction.shape[1])
        guided_x0 = x0 + weight * grad
        guided_eps = eps - (a / b) * weight * grad
        out = from_x0_eps(guided_x0, guided_eps, a, b, self.kind)
        guard.watch("guided prediction", out, i)
        if own_guard:
            guard.check()
        out = torch.cat([out.to(prediction.dtype), extra], dim=1)
        return out, dict(pred_xstart=x0, grad=grad, logits=logits, weight=weight)


# --- a diffusers model with guidance ----------------------------------------------------------

def denoiser_signature(model) -> tuple[inspect.Signature, str]:
    """The signature of a diffusers denoiser's ``forward`` and the name of its sample argument (its
    first); a module without a ``timestep`` argument is not a diffusers denoiser."""
    signature = inspect.signature(model.forward)
    params = list(signature.parameters)
    if not params or "timestep" not in params:
        raise TypeError(f"{type(model).__name__}.forward has no 'timestep' argument: not a diffusers denoiser")
    return signature, params[0]


class GuidedModel(nn.Module):
    """A diffusers denoiser whose output carries the guidance: call it exactly like the model
    (``unet(x, t)``, ``transformer(z, timestep=t, class_labels=y)``, SD3's keyword call); it
    returns the same output type with the prediction corrected by ``guidance``
    (:class:`SchedulerGuidance`). The target class comes from the ``guidance_label`` keyword,
    else ``self.target``, else the call's ``class_labels``. Attributes it lacks (``config``,
    ``dtype``, ``device``) are the model's, so a pipeline can use it in the model's place."""

    def __init__(self, model: nn.Module, guidance: SchedulerGuidance, target: torch.Tensor | None = None):
        super().__init__()
        self.model = model
        self.guidance = guidance
        self.target = target
        self._signature, self._sample_name = denoiser_signature(model)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)

    def forward(self, *args, guidance_label: torch.Tensor | None = None, **kwargs):
        bound = self._signature.bind(*args, **kwargs)
        sample, timestep = bound.arguments[self._sample_name], bound.arguments.get("timestep")
        if timestep is None:
            raise ValueError("the model call needs a timestep")
        target = guidance_label if guidance_label is not None else self.target
        if target is None:
            target = bound.arguments.get("class_labels")
        with torch.no_grad():
            out = self.model(*args, **kwargs)
        prediction = out[0] if isinstance(out, tuple) else out.sample
        corrected, _ = self.guidance.correct(prediction, sample, timestep, target)
        if isinstance(out, tuple):
            return (corrected,) + tuple(out[1:])
        out.sample = corrected
        return out


# --- pipelines --------------------------------------------------------------------------------

def scale_model_input(scheduler, x: torch.Tensor, t) -> torch.Tensor:
    """The model input for sample ``x`` (Euler's 1/√(σ²+1); flow-matching schedulers have no such step)."""
    scale = getattr(scheduler, "scale_model_input", None)
    return x if scale is None else scale(x, t)


def _step_kwargs(scheduler, generator) -> dict:
    return {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}


def _scheduler_input(scheduler, prediction: torch.Tensor, channels: int) -> torch.Tensor:
    """The learned-variance channels only for schedulers that read them (DDPM's learned range)."""
    if prediction.shape[1] == channels or scheduler.config.get("variance_type") in ("learned", "learned_range"):
        return prediction
    return prediction[:, :channels]


try:  # the base class of what guide() returns; the module is imported only when guide() is used
    from diffusers import DiffusionPipeline as _DiffusionPipeline
except ImportError:  # pragma: no cover - environment problem, reported by _require_diffusers
    _DiffusionPipeline = object


def is_text_to_image(pipe) -> bool:
    """A pipeline whose denoiser is conditioned on text (Stable Diffusion, SDXL, SD3, Flux, ...):
    it has a text encoder, or its UNet cross-attends (``cross_attention_dim``) / its transformer
    takes a joint text stream (``joint_attention_dim``)."""
    if getattr(pipe, "text_encoder", None) is not None or getattr(pipe, "text_encoder_2", None) is not None:
        return True
    model = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    config = getattr(model, "config", None) or {}
    return config.get("joint_attention_dim") is not None or (
        config.get("cross_attention_dim") is not None and getattr(pipe, "vae", None) is not None)


class ClassifierGuidedPipeline(_DiffusionPipeline):
    """Sampling with calibrated off-the-shelf guidance from a diffusers pipeline's parts (made by
    :func:`guide`): a ``DiffusionPipeline`` (``.to(...)``, ``progress_bar``, ``callback_on_step_end``).
    Pixel style (``pipe.unet``, as ``DDPMPipeline``) or latent style (``pipe.transformer`` +
    ``pipe.vae``, as ``DiTPipeline``, with DiT's classifier-free guidance on the first
    ``cfg_channels`` latent channels: ``offshelf.samplers.dit.cfg_denoise``). The pipe's scheduler
    is copied, not changed; a pixel scheduler's ``clip_sample`` becomes the guidance's
    ``clip_denoised`` (ADM's order: clamp x̂0, then guide)."""

    _optional_components = ["unet", "transformer", "vae"]

    def __init__(self, scheduler, unet=None, transformer=None, vae=None):
        super().__init__()
        self.register_modules(scheduler=scheduler, unet=unet, transformer=transformer, vae=vae)

    @classmethod
    def from_parts(cls, pipe, guidance: ClassifierGuidance, scale: float = 1.0, sine_factor: float = 0.3,
                   schedule: Schedule = "adm", variance: Variance | None = None, sigma_max: float | None = None,
                   cfg_scale: float = 1.0, cfg_channels: int = 3) -> "ClassifierGuidedPipeline":
        _require_diffusers()
        latent = getattr(pipe, "transformer", None) is not None and getattr(pipe, "vae", None) is not None
        unet = getattr(pipe, "unet", None)
        if not latent and unet is None:
            raise ValueError(f"{type(pipe).__name__}: expected a pixel pipeline with .unet (DDPMPipeline-style) or "
                             "a latent one with .transformer and .vae (DiTPipeline-style)")
        if is_text_to_image(pipe) or (unet is not None and unet.config.get("cross_attention_dim") is not None
                                      and "encoder_hidden_states" in inspect.signature(unet.forward).parameters
                                      and unet.config.get("num_class_embeds") is None):
            raise ValueError(f"{type(pipe).__name__} is a text-to-image pipeline (its denoiser takes "
                             "encoder_hidden_states), not a pixel DDPMPipeline-style one: guide it with "
                             "offshelf.guide(pipe, objective, ...), which keeps the pipeline's own call")
        check_scheduler(pipe.scheduler)
        config = dict(pipe.scheduler.config)
        clip_denoised = not latent and bool(config.get("clip_sample")) and not config.get("thresholding")
        scheduler = copy_scheduler(pipe.scheduler, **({"clip_sample": False} if clip_denoised else {}))
        self = cls(scheduler, unet=None if latent else unet, transformer=pipe.transformer if latent else None,
                   vae=pipe.vae if latent else None)
        self.latent, self.clip_denoised = latent, clip_denoised
        self.guidance = SchedulerGuidance(scheduler, guidance, scale, sine_factor, schedule, variance, sigma_max,
                                          clip_denoised, vae=pipe.vae if latent else None)
        self.cfg_scale, self.cfg_channels = cfg_scale, cfg_channels
        self.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
        return self

    def to(self, *args, **kwargs):
        """``DiffusionPipeline.to`` for the pipeline's modules, and the classifier with them."""
        super().to(*args, **kwargs)
        classifier = self.guidance.guidance.classifier
        if isinstance(classifier, nn.Module):
            classifier.to(*args, **kwargs)
        return self

    @torch.no_grad()
    def __call__(self, class_labels=None, num_inference_steps: int = 50, generator=None, output_type: str = "pil",
                 callback=None, *, batch_size: int | None = None, latents: torch.Tensor | None = None,
                 return_dict: bool = True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=("latents",)):
        """Images for ``class_labels`` (the classifier's targets; also the DiT condition; one int
        is repeated ``batch_size`` times), as ``ImagePipelineOutput(images=...)``: ``"pil"``
        (default, as diffusers), ``"np"`` NHWC in [0, 1], ``"pt"`` NCHW in [0, 1]. ``latents``:
        the initial noise (multiplied by the scheduler's ``init_noise_sigma``, as diffusers'
        pipelines do). ``callback(step=i, timestep=t, sample=x, **info)`` sees every step;
        ``callback_on_step_end(pipe, i, t, {"latents": x})`` may return new ``latents``."""
        diffusers = _require_diffusers()
        from diffusers.utils.torch_utils import randn_tensor

        if output_type not in ("pt", "np", "pil"):
            raise ValueError(f"output_type must be 'pt', 'np' or 'pil', got {output_type!r}")
        if class_labels is None:
            raise ValueError("class_labels are needed: the classifier's target class per image (an int is repeated "
                             "batch_size times)")
        unknown = set(callback_on_step_end_tensor_inputs) - {"latents"}
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs may only name 'latents', got {sorted(unknown)}")
        model = self.transformer if self.latent else self.unet
        device = model.device
        y = torch.as_tensor(class_labels, device=device).long().reshape(-1)
        if len(y) == 1 and batch_size is not None:
            y = y.expand(batch_size)
        if batch_size is not None and len(y) != batch_size:
            raise ValueError(f"batch_size={batch_size} but {len(y)} class labels")
        size = model.config.sample_size
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        channels = model.config.in_channels
        scheduler = self.scheduler
        scheduler.set_timesteps(num_inference_steps, device=device)
        shape = (len(y), channels, *size)
        if latents is None:
            x = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
            x = latents.to(device=device, dtype=torch.float32)
        x = x * getattr(scheduler, "init_noise_sigma", 1.0)
        denoise = self._latent_denoiser(model, y) if self.latent else self._pixel_denoiser(model, y)
        # recorded on the device and read once, before decoding and before each callback (which may read values)
        guard = FiniteGuard(capacity=4 * len(scheduler.timesteps))
        for i, t in enumerate(self.progress_bar(scheduler.timesteps)):
            x_in = scale_model_input(scheduler, x, t)
            prediction = denoise(x_in, t)
            prediction, info = self.guidance.correct(prediction, x_in, t, y, step=i, guard=guard)
            if callback is not None:
                guard.check()
                callback(step=i, timestep=t, sample=x, **info)
            x = scheduler.step(_scheduler_input(scheduler, prediction, channels), t, x,
                               **_step_kwargs(scheduler, generator)).prev_sample
            if callback_on_step_end is not None:
                guard.check()
                x = (callback_on_step_end(self, i, t, {"latents": x}) or {}).get("latents", x)
        guard.check()
        if self.latent:
            from offshelf.samplers.dit import decode

            x = decode(self.vae, x, self.guidance.latent_scale)
        images = ((x.float() + 1) / 2).clamp(0, 1)
        if output_type != "pt":
            images = images.cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        if not return_dict:
            return (images,)
        return diffusers.ImagePipelineOutput(images=images)

    def _pixel_denoiser(self, unet, y):
        conditional = unet.config.get("num_class_embeds") is not None or unet.config.get("class_embed_type") is not None
        extra = {"class_labels": y} if conditional else {}
        return lambda x, t: unet(x.to(unet.dtype), t, **extra).sample.float()

    def _latent_denoiser(self, transformer, y):
        from offshelf.backbones.dit import DiTDenoiser
        from offshelf.samplers.dit import cfg_denoise

        denoiser = DiTDenoiser(transformer)

        def denoise(z, t):
            tt = torch.as_tensor(t, device=z.device).reshape(-1).expand(z.shape[0])
            if self.cfg_scale == 1.0:
                return denoiser(z, tt, y)
            return cfg_denoise(denoiser, z, tt, y, denoiser.null_label, self.cfg_scale, self.cfg_channels).output
        return denoise


def guide(pipe, classifier, scale: float = 1.0, softplus_beta: float = 3.0, joint_temperature: float = 1.0,
          marginal_temperature: float = 0.5, sine_factor: float = 0.3, *, schedule: Schedule = "adm",
          variance: Variance | None = None, sigma_max: float | None = None, cfg_scale: float = 1.0,
          cfg_channels: int = 3, adapter=None) -> ClassifierGuidedPipeline:
    """Calibrated off-the-shelf guidance for a pixel (``DDPMPipeline``-style) or class-conditional
    latent (``DiTPipeline``-style) diffusers pipeline. Defaults are the paper's DDPM ones (s = 1,
    Softplus β = 3, τ1 = 1, τ2 = 0.5, γ = 0.3); ``softplus_beta=inf`` keeps the ReLUs.
    ``classifier(x) -> logits`` sees x̂0 in [−1, 1] (decoded, for latent pipelines); ``adapter``
    an optional :class:`~offshelf.guidance.InputAdapter` (resize / normalise). Text-to-image
    pipelines (:func:`is_text_to_image`) are refused here: ``offshelf.guide`` sends them to
    :func:`offshelf.integrations.text2image_pipelines.guide_text2image`."""
    if is_text_to_image(pipe):
        raise ValueError(f"{type(pipe).__name__} is a text-to-image pipeline: guide it with offshelf.guide(pipe, "
                         "objective, ...) (offshelf.integrations.text2image_pipelines.guide_text2image)")
    from offshelf.classifiers.softplus import softplus_surgery
    from offshelf.guidance import InputAdapter

    classifier = softplus_surgery(classifier, softplus_beta).eval().requires_grad_(False)
    guidance = ClassifierGuidance(classifier, joint_temperature, marginal_temperature, input="x0",
                                  adapter=adapter or InputAdapter())
    return ClassifierGuidedPipeline.from_parts(pipe, guidance, scale, sine_factor, schedule, variance, sigma_max,
                                               cfg_scale, cfg_channels)


__all__ = ["ClassifierGuidedPipeline", "GuidedModel", "REFUSED_SCHEDULERS", "SchedulerGuidance", "check_scheduler",
           "copy_scheduler", "from_x0_eps", "guide", "is_text_to_image", "noise_levels", "prediction_type",
           "step_index", "to_x0_eps"]
