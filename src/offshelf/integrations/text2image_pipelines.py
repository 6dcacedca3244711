"""Off-the-shelf guidance for latent text-to-image pipelines in diffusers: Stable Diffusion, SDXL,
SD3, Flux and any pipeline on the same pattern (a UNet or transformer, a scheduler, a VAE).

:func:`guide_text2image` (reached through ``offshelf.guide(pipe, objective, ...)``) returns a
copy of the pipeline whose denoiser is a :class:`GuidedDenoiser`; the copy keeps the pipeline's
own call (prompts, negative prompts, its CFG, ``generator``, ``num_inference_steps``,
``callback_on_step_end``, ``output_type``) and the user's pipeline is not changed. Per denoiser
call at scheduler step i of N (Algorithm 3's path, docs/diffusers.md):

    pred     = the denoiser's output; with the pipeline's CFG (a doubled batch [uncond, cond]):
               pred_cfg = u + w·(c − u), w the pipeline's guidance_scale; with SD/SDXL's
               guidance_rescale φ > 0, pred_cfg = rescale_noise_cfg(pred_cfg, c, φ), what the
               scheduler integrates
    (x̂0, ε)  = pred_cfg read in the scheduler's parameterisation (ε, v, flow velocity) for the
               model input a·x0 + b·ε (offshelf.integrations.diffusers.noise_levels)
    g        = ∇_{ẑ0} J(D(ẑ0)) at ẑ0 = x̂0: J the objective (calibrated classifier log-probability,
               CLIP similarity, a reward), D the VAE decoder (or TAESD), through the decoder
    κ        = the library's weight of that step (SchedulerGuidance.x0_weight: Eq. 5 with the sine
               bump γ·sin(πk/N), or the score schedule)
    pred'    = the prediction of (x̂0 + κ·g, ε − (a/b)·κ·g); Δ = pred' − pred_cfg is added to every
               branch, so the pipeline's own CFG combination yields pred_cfg + Δ = pred'

At ``scale=0``, outside the guidance window and between every-k-th steps the denoiser's output is
returned untouched: the pipeline's own output, bitwise. Flux's "true CFG" calls the transformer
twice per step (positive, then negative prompt): Δ is computed on the first call of a step and
added to both, so the combination moves by Δ too. With ``guidance_rescale`` φ > 0 (SD, SDXL) x̂0
is read after the rescale and both branches return pred' itself: the pipeline combines two equal
predictions into pred' and rescales it by std(pred')/std(pred') = 1, so the scheduler integrates
pred' (up to rounding), the correction applied after the pipeline's CFG and rescale.

Schedulers that call the model twice per step or repeat timesteps (Heun, KDPM2, PNDM, any with
``order > 1``) are refused by name, by ``guide`` and again at call time if swapped in later: a
correction computed once per step index cannot be applied to two calls at two noise levels.

No host read per step (a GPU's queue never drains mid-loop; :class:`PipelineCall`): the step
index is the first denoiser call's (looked up once: img2img starts mid-schedule) plus the number
of ``scheduler.step`` calls since, which every pipeline makes once per step (denoiser calls are
not counted: Flux's true CFG and SD3's skip-layer guidance call the model twice in a step); the
last call's timestep is checked against its index once, at the end. NaN or inf in the denoiser
output, the guidance gradient or the guided prediction is recorded in a
:class:`~offshelf.guidance.FiniteGuard`, read before any callback (the pipeline's
``callback_on_step_end`` / ``callback``, ``observe``, offshelf's ``callback``) and at the end of
the call: the run stops with one line naming the first bad step and tensor, and no callback and
no caller sees a non-finite value.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field

import torch
from torch import nn

from offshelf.guidance import FiniteGuard
from offshelf.integrations.diffusers import (SchedulerGuidance, check_scheduler, denoiser_signature, from_x0_eps,
                                             step_index, to_x0_eps)
from offshelf.integrations.objectives import Objective, chunked_gradient, objective_from

#: TAESD decoders (AutoencoderTiny) per pipeline family, for ``decoder="tiny"`` (downloaded by
#: diffusers into its cache on first use; pass an AutoencoderTiny module to stay offline).
TINY_DECODERS = {"StableDiffusionXL": "madebyollin/taesdxl", "StableDiffusion3": "madebyollin/taesd3",
                 "Flux": "madebyollin/taef1", "": "madebyollin/taesd"}


@dataclass(frozen=True)
class Text2ImageGuidance:
    """The knobs of one guided pipeline. ``scale`` s and ``sine_factor`` γ as in Algorithm 1;
    ``schedule`` ``"adm"`` (Eq. 5) or ``"score"`` (SchedulerGuidance); ``window`` the (start, end)
    fraction of the steps that are guided; ``every`` guide every k-th step; ``decoder_chunk`` the
    decoder's backward in chunks of that many images; ``checkpoint`` gradient checkpointing in the
    decoder during the backward (memory for compute)."""

    scale: float = 1.0
    sine_factor: float = 0.3
    schedule: str = "adm"
    variance: str | None = None
    sigma_max: float | None = None
    window: tuple[float, float] = (0.0, 1.0)
    every: int = 1
    decoder_chunk: int | None = None
    checkpoint: bool = False

    def __post_init__(self):
        start, end = self.window
        if not 0 <= start < end <= 1:
            raise ValueError(f"window must be (start, end) fractions of the steps with 0 <= start < end <= 1, "
                             f"got {self.window}")
        if int(self.every) != self.every or self.every < 1:
            raise ValueError(f"every must be a positive integer, got {self.every!r}")
        if self.decoder_chunk is not None and self.decoder_chunk < 1:
            raise ValueError(f"decoder_chunk must be a positive number of images, got {self.decoder_chunk}")
        if self.schedule not in ("adm", "score"):
            raise ValueError(f"schedule must be 'adm' or 'score', got {self.schedule!r}")

    def active(self, i: int, n: int) -> bool:
        """Whether step ``i`` of ``n`` is guided."""
        start, end = self.window
        return self.scale != 0 and start * n <= i < end * n and i % self.every == 0


def find_step(scheduler, timestep) -> int:
    """Index of the denoiser call's ``timestep`` in ``scheduler.timesteps``: as given (SD, SDXL,
    SD3), or ×1000 (Flux passes t/1000)."""
    try:
        return step_index(scheduler, timestep)
    except ValueError:
        return step_index(scheduler, torch.as_tensor(timestep).detach().double() * 1000)


def flux_grid(img_ids: torch.Tensor) -> tuple[int, int]:
    """The (rows, columns) of Flux's 2×2 latent patches from ``img_ids`` (row, column in channels
    1 and 2): a host read."""
    ids = img_ids.reshape(-1, img_ids.shape[-1])
    return int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1


def unpack_flux_latents(z: torch.Tensor, img_ids: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Flux's packed latents (B, (H/2)·(W/2), 4C) as (B, C, H, W) on the grid of ``img_ids``
    (:func:`flux_grid`, unless ``grid`` is given), as diffusers' FluxPipeline unpacks them before
    decoding."""
    h2, w2 = grid or flux_grid(img_ids)
    b, seq, c4 = z.shape
    if seq != h2 * w2 or c4 % 4:
        raise ValueError(f"packed latents {tuple(z.shape)} do not fit a {h2}×{w2} grid of 2×2 patches")
    return z.view(b, h2, w2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, 2 * h2, 2 * w2)


def decode_latents(decoder: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Images in [−1, 1] (at least fp32, differentiable) from the pipeline's latents ``z``:
    ``clamp(D(z / scaling_factor + shift_factor), −1, 1)`` with the decoder's own config (an
    AutoencoderTiny has scaling 1 and shift 0: it decodes the pipeline's latents directly)."""
    config = decoder.config
    latent = z / config.scaling_factor + (config.get("shift_factor") or 0.0)
    dtype = next(decoder.parameters()).dtype
    image = decoder.decode(latent.to(dtype)).sample
    return image.to(torch.promote_types(image.dtype, torch.float32)).clamp(-1, 1)


@dataclass
class PipelineCall:
    """What the guided denoiser knows of one pipeline call, kept without reading the device per
    step. Step i of a denoiser call is ``first`` (the first call's timestep, looked up once)
    plus the number of ``scheduler.step`` calls so far; ``guard`` records the non-finite checks,
    read before every callback and at the end. Outside a pipeline call (the denoiser called by a
    loop of its own) a fresh one per denoiser call looks the step up and reads its guard at once."""

    guard: FiniteGuard = field(default_factory=FiniteGuard)
    pipeline_callback: bool = False  # the call has callback_on_step_end / callback, which may read the latents
    steps_done: int = 0
    first: int | None = None
    last: tuple | None = None  # (step, timestep) of the last guided or observed denoiser call
    cfg_batch: int | None = None  # the batch of the doubled [uncond, cond] calls; 0: none
    weights: SchedulerGuidance | None = None
    _grid: tuple | None = field(default=None, repr=False)  # (img_ids, its grid)

    def step(self, scheduler, timestep) -> int:
        if self.first is None:
            self.first = find_step(scheduler, timestep)
        i = self.first + self.steps_done
        if i >= len(scheduler.timesteps):
            raise ValueError(f"denoiser call after the last of {type(scheduler).__name__}'s {len(scheduler.timesteps)} "
                             "steps: the pipeline calls scheduler.step more than once per step")
        self.last = (i, timestep)
        return i

    def check_steps(self, scheduler) -> None:
        """The one host read of the step count: the last call's timestep is that of its index."""
        if self.last is not None:
            i, timestep = self.last
            found = find_step(scheduler, timestep)
            if found != i:
                raise RuntimeError(f"step {i}: the denoiser's timestep is step {found} of {type(scheduler).__name__}: "
                                   "the pipeline does not call scheduler.step once per step")

    def is_cfg_batch(self, pipe, sample: torch.Tensor) -> bool:
        """Whether ``sample`` is the pipeline's doubled CFG batch: its halves compared once per call
        (a host read), then by batch size (SD3's skip-layer call has the undoubled batch)."""
        if not getattr(pipe, "do_classifier_free_guidance", False) or len(sample) % 2:
            return False
        if self.cfg_batch is None:
            half = len(sample) // 2
            self.cfg_batch = len(sample) if torch.equal(sample[:half], sample[half:]) else 0
        return len(sample) == self.cfg_batch

    def flux_grid(self, img_ids: torch.Tensor) -> tuple[int, int]:
        # the pipeline passes the same img_ids at every step: read once
        if self._grid is None or self._grid[0] is not img_ids:
            self._grid = (img_ids, flux_grid(img_ids))
        return self._grid[1]


class GuidedDenoiser(nn.Module):
    """A pipeline's UNet or transformer whose output carries the objective's guidance (module
    docstring). Attributes it lacks (``config``, ``dtype``, ``add_embedding``, ...) are the
    model's, so the pipeline uses it in the model's place. ``last`` holds what the last guided
    step computed (``step``, ``value``: J per image, ``grad``, ``weight``)."""

    def __init__(self, model: nn.Module, objective: Objective, decoder: nn.Module, settings: Text2ImageGuidance,
                 own_decoder: bool = False):
        super().__init__()
        self.model = model
        self.objective = objective
        if own_decoder:
            self.decoder = decoder
        else:  # the pipeline's VAE: a pipeline component, not a second copy in this module's state
            self.__dict__["decoder"] = decoder
        self.settings = settings
        self._signature, self._sample_name = denoiser_signature(model)
        self.__dict__["pipeline"] = None
        self.context: dict = {}
        self._cache: dict = {}
        self._call: PipelineCall | None = None
        self._own_step = None
        self.last: dict = {}

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)

    def begin(self, context: dict, pipeline_callback: bool = False) -> None:
        """A pipeline call starts: its prompts (for CLIP); the per-step cache is cleared. The
        scheduler is checked again: one swapped in after ``guide`` (``guided.scheduler = ...``)
        is refused as ``guide`` refuses it. Until :meth:`end` the scheduler's ``step`` counts the
        steps and, with a ``pipeline_callback``, reads the guard first (the callback comes after it)."""
        scheduler = self.pipeline.scheduler
        check_scheduler(scheduler)
        self.context = context
        self._cache = {}
        self.last = {}
        if self.settings.scale != 0:
            self.objective.prepare(context)
        call = self._call = PipelineCall(pipeline_callback=pipeline_callback)
        step = scheduler.step

        def counted_step(*args, **kwargs):
            if call.pipeline_callback:
                call.guard.check()
            call.steps_done += 1
            return step(*args, **kwargs)

        self._own_step = scheduler.__dict__.get("step")  # the user's own patch, if any, comes back at end()
        scheduler.step = counted_step

    def end(self, completed: bool) -> None:
        """The pipeline call is over: the scheduler's ``step`` is its own again; after a completed
        call the guard and the step count are read (once) and raise for the first bad step."""
        scheduler = self.pipeline.scheduler
        if self._own_step is None:
            del scheduler.step
        else:
            scheduler.step = self._own_step
        call, self._call = self._call, None
        if completed:
            call.guard.check()
            call.check_steps(scheduler)

    def forward(self, *args, **kwargs):
        out = self.model(*args, **kwargs)
        observe = self.context.get("observe")
        if self.settings.scale == 0 and observe is None:
            return out
        pipe = self.pipeline
        scheduler = pipe.scheduler
        bound = self._signature.bind(*args, **kwargs)
        sample, timestep = bound.arguments[self._sample_name], bound.arguments.get("timestep")
        call = self._call or PipelineCall()
        i = call.step(scheduler, timestep)
        active = self.settings.active(i, len(scheduler.timesteps))
        if (i in self._cache and self._cache[i] is None) or (not active and observe is None):
            return out  # not guided, and this step was observed already (Flux's second true-CFG call)
        prediction = out[0] if isinstance(out, tuple) else out.sample
        if prediction.shape != sample.shape:
            raise ValueError(f"{type(self.model).__name__} output {tuple(prediction.shape)} does not fit its input "
                             f"{tuple(sample.shape)}: learned-variance denoisers are not supported here")
        half = len(sample) // 2
        cfg = call.is_cfg_batch(pipe, sample)
        rescaled = cfg and self._rescale(pipe) > 0
        if i not in self._cache:
            if cfg:
                combined = self._combine_cfg(pipe, prediction[:half].float(), prediction[half:].float())
                x = sample[half:]
            else:
                combined, x = prediction.float(), sample
            x0, eps, a, b, a_all, b_all, kind = self._read(combined, x.float(), i, scheduler, call)
            if observe is not None:
                call.guard.check()  # the observer may read x̂0
                with torch.no_grad():
                    observe(step=i, pred_xstart=x0, decode=self._decoding(bound.arguments, self.pipeline.vae, call))
            delta = self._delta(combined, x0, eps, a, b, a_all, b_all, kind, i, call,
                                bound.arguments) if active else None
            # with the rescale on, the guided prediction itself (see _combine_cfg), else Δ to add
            self._cache = {i: None if delta is None else (combined + delta if rescaled else delta)}
        if self._call is None:  # no pipeline call to read the guard at its end: read it now
            call.guard.check()
        correction = self._cache[i]
        if correction is None:
            return out
        if cfg:
            correction = torch.cat([correction, correction])
        if correction.shape != prediction.shape:
            raise ValueError(f"step {i}: a second denoiser call with batch {len(prediction)} after one with "
                             f"{len(correction) // (2 if cfg else 1)}: cannot apply the step's guidance")
        corrected = (correction if rescaled else prediction.float() + correction).to(prediction.dtype)
        if isinstance(out, tuple):
            return (corrected,) + tuple(out[1:])
        out.sample = corrected
        return out

    @staticmethod
    def _rescale(pipe) -> float:
        return float(getattr(pipe, "guidance_rescale", 0.0) or 0.0)

    @classmethod
    def _combine_cfg(cls, pipe, uncond: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The prediction the pipeline's scheduler integrates: its CFG combination, then (SD, SDXL)
        its ``guidance_rescale`` φ (Lin et al. 2024, Sec. 3.4) when that is on. The guidance reads
        x̂0 from it. With φ > 0 both branches then return the guided prediction pred' itself, not
        branch + Δ: the pipeline's combination of two equal predictions is pred' and its rescale
        multiplies by std(pred')/std(pred') = 1, so the correction lands after the pipeline's CFG
        and rescale, as without the rescale (adding Δ to both branches would have the pipeline
        rescale Δ as well)."""
        combined = uncond + float(pipe.guidance_scale) * (cond - uncond)
        rescale = cls._rescale(pipe)
        if rescale > 0:
            from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import rescale_noise_cfg

            combined = rescale_noise_cfg(combined, cond, guidance_rescale=rescale)
        return combined

    def _read(self, prediction: torch.Tensor, x: torch.Tensor, i: int, scheduler, call: PipelineCall):
        """``(x̂0, ε, a, b, a_all, b_all, kind)`` of the step's prediction for the model input ``x``."""
        if call.weights is None or call.weights.scheduler is not scheduler:
            s = self.settings
            call.weights = SchedulerGuidance(scheduler, None, s.scale, s.sine_factor, s.schedule, s.variance,
                                             s.sigma_max)
        kind = call.weights.kind
        a_all, b_all, a_list, b_list = call.weights.levels()  # read from the scheduler once per set_timesteps
        a, b = a_list[i], b_list[i]
        call.guard.watch("denoiser output", prediction, i)
        x0, eps = to_x0_eps(prediction, x, a, b, kind)
        return x0, eps, a, b, a_all, b_all, kind

    def _decoding(self, arguments: dict, decoder: nn.Module, call: PipelineCall):
        """Latents (packed for Flux) → images in [−1, 1] through ``decoder``."""
        img_ids = arguments.get("img_ids")

        def decode(u):
            if u.ndim == 3:  # packed
                if img_ids is None:
                    raise ValueError(f"{type(self.model).__name__}: packed (B, tokens, C) latents without img_ids "
                                     "to unpack")
                u = unpack_flux_latents(u, img_ids, call.flux_grid(img_ids))
            return decode_latents(decoder, u)
        return decode

    def _delta(self, prediction: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, a: float, b: float,
               a_all: torch.Tensor, b_all: torch.Tensor, kind: str, i: int, call: PipelineCall, arguments: dict
               ) -> torch.Tensor:
        decode = self._decoding(arguments, self.decoder, call)
        with self._checkpointing():
            grad, value = chunked_gradient(self.objective, x0, decode, dict(self.context, step=i),
                                           self.settings.decoder_chunk)
        call.guard.watch("guidance gradient", grad, i)
        weight = call.weights.x0_weight(i, a_all, b_all, None, 1, 1)
        guided = from_x0_eps(x0 + weight * grad, eps - (a / b) * weight * grad, a, b, kind)
        call.guard.watch("guided prediction", guided, i)
        self.last = dict(step=i, value=value, grad=grad, weight=weight, pred_xstart=x0)
        callback = self.context.get("callback")
        if callback is not None:
            call.guard.check()  # the callback may read the gradient and x̂0
            callback(**self.last)
        return guided - prediction

    def _checkpointing(self):
        decoder = self.decoder
        settings = self.settings

        class _Toggle:
            def __enter__(self):
                self.was = bool(getattr(decoder, "is_gradient_checkpointing", False))
                if settings.checkpoint and not self.was:
                    decoder.enable_gradient_checkpointing()

            def __exit__(self, *exc):
                if settings.checkpoint and not self.was:
                    decoder.disable_gradient_checkpointing()
        return _Toggle()


def _arguments(signature: inspect.Signature, args, kwargs) -> dict:
    """A pipeline call's arguments by name (those it takes through ``**kwargs`` too, as SD's
    legacy ``callback``); {} when they do not bind (the pipeline's own call then says why)."""
    try:
        bound = signature.bind(None, *args, **kwargs)
    except TypeError:
        return {}
    return {**bound.arguments, **bound.kwargs}


def _prompts(arguments: dict) -> list[str] | None:
    """One text per image of a pipeline call (``prompt`` × ``num_images_per_prompt``), or None
    when the call gives embeddings only."""
    prompt = arguments.get("prompt")
    if prompt is None:
        return None
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    n = arguments.get("num_images_per_prompt") or 1
    return [p for p in prompts for _ in range(n)]


_GUIDED_CLASSES: dict[type, type] = {}


def _guided_class(cls: type) -> type:
    """``cls`` with a ``__call__`` that tells the guided denoiser the call's prompts and whether it
    has a callback first, and lets it read its guard when the call is over."""
    if cls not in _GUIDED_CLASSES:
        signature = inspect.signature(cls.__call__)

        def __call__(self, *args, **kwargs):
            denoiser = self.offshelf_denoiser
            arguments = _arguments(signature, args, kwargs)
            denoiser.begin({"prompts": _prompts(arguments), "callback": self.offshelf_callback,
                            "observe": self.offshelf_observe},
                           pipeline_callback=any(arguments.get(name) is not None
                                                 for name in ("callback_on_step_end", "callback")))
            try:
                result = cls.__call__(self, *args, **kwargs)
            except BaseException:
                denoiser.end(completed=False)
                raise
            denoiser.end(completed=True)
            return result

        __call__.__signature__ = signature
        __call__.__doc__ = cls.__call__.__doc__
        _GUIDED_CLASSES[cls] = type(f"Guided{cls.__name__}", (cls,), {"__call__": __call__,
                                                                      "__module__": __name__})
    return _GUIDED_CLASSES[cls]


def _family(pipe) -> str:
    name = type(pipe).__name__
    return next((key for key in TINY_DECODERS if key and name.startswith(key)), "")


def _decoder(pipe, decoder) -> tuple[nn.Module, bool]:
    """``(decoder module, whether it is not the pipeline's VAE)``."""
    if decoder in (None, "vae"):
        if getattr(pipe, "vae", None) is None:
            raise ValueError(f"{type(pipe).__name__} has no .vae to decode x̂0 with")
        return pipe.vae, False
    if decoder == "tiny":
        from diffusers import AutoencoderTiny

        model = AutoencoderTiny.from_pretrained(TINY_DECODERS[_family(pipe)], torch_dtype=pipe.vae.dtype)
        return model.to(pipe.vae.device).eval().requires_grad_(False), True
    if isinstance(decoder, nn.Module) and hasattr(decoder, "decode"):
        return decoder.eval().requires_grad_(False), True
    raise ValueError(f"decoder must be 'vae', 'tiny' or a diffusers autoencoder module, got {decoder!r}")


def _copy_pipeline(cls: type, pipe, **replace):
    """A ``cls`` sharing ``pipe``'s components (and its config values), ``replace`` swapped in.
    Not ``DiffusionPipeline.from_pipe``: that casts every shared module to one dtype (float32 by
    default), which would change the user's fp16 pipeline and an fp32-upcast VAE."""
    modules, optional = cls._get_signature_keys(pipe)
    kwargs = {name: getattr(pipe, name, None) for name in modules}
    kwargs.update({name: pipe.config[name] for name in optional if name in pipe.config})
    kwargs.update(replace)
    return cls(**kwargs)


def guide_text2image(pipe, objective, *, scale: float = 1.0, target=None, softplus_beta: float = 3.0,
                     joint_temperature: float = 1.0, marginal_temperature: float = 0.5, sine_factor: float = 0.3,
                     schedule: str = "adm", variance: str | None = None, sigma_max: float | None = None,
                     adapter=None, clip=None, texts=None, decoder="vae", window: tuple[float, float] = (0.0, 1.0),
                     every: int = 1, decoder_chunk: int | None = None, checkpoint: bool = False, callback=None,
                     observe=None):
    """A copy of the text-to-image pipeline ``pipe`` guided by ``objective`` (module docstring);
    ``pipe`` is not changed. ``objective``: a classifier with ``target=`` (its class, one or one
    per image; Softplus β, τ1, τ2 as in the paper), ``"clip"`` with ``clip=`` (similarity to
    ``texts``, the prompts by default), a callable ``reward(images in [−1, 1]) -> [batch]``, or
    an :class:`~offshelf.integrations.objectives.Objective` (see ``objective_from``).
    ``decoder``: ``"vae"`` (default), ``"tiny"`` (TAESD for the family, from the hub cache) or an
    ``AutoencoderTiny`` module. ``window``, ``every``, ``decoder_chunk``, ``checkpoint``: cost
    controls (:class:`Text2ImageGuidance`). ``callback(step=, value=, grad=, weight=,
    pred_xstart=)`` sees every guided step. The copy's ``offshelf_denoiser.last`` holds the last one.
    ``observe(step=, pred_xstart=, decode=)`` sees every step, guided or not (scale 0 included),
    before its correction: x̂0 read from the prediction the pipeline integrates (after its CFG and
    ``guidance_rescale``) and ``decode`` (the pipeline's VAE, latents → images in [−1, 1]); it
    changes nothing (the CLIP score per step of ``offshelf.integrations.clip_schedules``)."""
    check_scheduler(pipe.scheduler)
    attribute = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
    model = getattr(pipe, attribute, None)
    if model is None:
        raise ValueError(f"{type(pipe).__name__}: expected a .unet or .transformer denoiser")
    if isinstance(model, GuidedDenoiser):
        raise ValueError(f"{type(pipe).__name__} is already guided: guide the original pipeline")
    settings = Text2ImageGuidance(scale, sine_factor, schedule, variance, sigma_max, tuple(window), every,
                                  decoder_chunk, checkpoint)
    objective = objective_from(objective, target=target, softplus_beta=softplus_beta,
                               joint_temperature=joint_temperature, marginal_temperature=marginal_temperature,
                               adapter=adapter, clip=clip, texts=texts)
    decoder_module, own = _decoder(pipe, decoder)
    denoiser = GuidedDenoiser(model, objective, decoder_module, settings, own_decoder=own)
    guided_cls = _guided_class(type(pipe))
    guided = _copy_pipeline(guided_cls, pipe, **{attribute: denoiser, "scheduler": copy.deepcopy(pipe.scheduler)})
    denoiser.__dict__["pipeline"] = guided
    guided.offshelf_denoiser = denoiser
    guided.offshelf_guidance = settings
    guided.offshelf_callback = callback
    guided.offshelf_observe = observe
    guided.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    return guided


__all__ = ["GuidedDenoiser", "PipelineCall", "TINY_DECODERS", "Text2ImageGuidance", "decode_latents", "find_step",
           "flux_grid", "guide_text2image", "unpack_flux_latents"]
