"""What every DDPM-family backend shares (digits, adm128): Algorithm 1 on a respaced Gaussian
diffusion, guidance built from a setting, calibration profiles and Figure 4's gradient panels."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

from offshelf.backends.capabilities import Capability
from offshelf.backends.guides import guidance_for
from offshelf.calibration import CalibrationRecorder
from offshelf.diffusion import GaussianDiffusion
from offshelf.guidance import Guidance
from offshelf.samplers.ddpm import ddpm_sample
from offshelf.samplers.particles import best_of_n_sample, smc_sample
from offshelf.seeding import StackedRandomGenerator, draw_labels
from offshelf.settings import Setting


@dataclass
class DDPMModels:
    """The networks of a DDPM-family job: the denoiser ``model(x, t, y)``, its diffusion, the
    image shape and label space, and the guiding classifiers (clean-image and noise-aware)."""

    denoiser: Callable
    diffusion: GaussianDiffusion
    image_shape: tuple[int, int, int]
    num_classes: int
    offshelf: torch.nn.Module | None = None
    finetuned: torch.nn.Module | None = None
    null_label: int | None = None
    device: str = "cpu"


def build_guidance(setting: Setting, models: DDPMModels):
    """The guidance ``setting`` describes with the models' classifiers (:func:`guidance_for`)."""
    return guidance_for(setting, models.offshelf, models.finetuned)


def sample_batch(setting: Setting, models: DDPMModels, seeds: list[int], callback=None, progress: bool = False,
                 guidance=None, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 for one batch: images in [-1, 1] and their target labels, reproducible per seed.
    ``labels``: the classes to sample (default: each seed's own, ``draw_labels``)."""
    labels = (draw_labels(seeds, models.num_classes) if labels is None else torch.as_tensor(labels)).to(models.device)
    rng = StackedRandomGenerator(seeds, models.device)
    guidance = build_guidance(setting, models) if guidance is None else guidance
    y = labels if (setting.regime == "cond" or setting.method == "cfg") else None
    cfg_scale = setting.cfg_scale if setting.method == "cfg" else None
    common = dict(guidance=None, callback=callback, progress=progress, shape=models.image_shape, y=y)
    if setting.method == "best_of_n":  # the classifier scores; candidates are unguided (samplers.particles)
        common["guidance"] = Guidance(guidance, label=labels)
        return best_of_n_sample(models.denoiser, rng, models.diffusion, **common,
                                num_candidates=setting.num_candidates), labels
    if setting.method == "smc":  # the potential λ·log p̃(y | x̂0), λ = the setting's scale
        common["guidance"] = Guidance(guidance, scale=setting.scale, label=labels)
        return smc_sample(models.denoiser, rng, models.diffusion, **common, num_particles=setting.num_particles,
                          resample_every=setting.resample_every), labels
    if guidance is not None:
        common["guidance"] = Guidance(guidance, scale=setting.scale, sine_factor=setting.sine_factor, label=labels,
                                      through_denoiser=setting.through_denoiser)
    x = ddpm_sample(models.denoiser, rng, models.diffusion, **common, recurrent_steps=setting.recurrent_steps,
                    cfg_scale=cfg_scale, null_label=models.null_label)
    return x, labels


class DDPMSampling:
    """Backend methods of the DDPM family (mixed into :class:`~offshelf.backends.base.Backend`)."""

    #: what the mixin brings; a backend using it adds these to its own ``capabilities``
    capabilities = frozenset({Capability.CALIBRATION, Capability.GRADIENTS, Capability.COST,
                              Capability.ANALYTIC_FIGURES, Capability.CHOSEN_CLASSES, Capability.PARTICLES,
                              Capability.THROUGH_DENOISER})
    analytic_figures = ("figure3", "figure5")
    #: :func:`sample_batch` draws sample i's label with ``draw_labels`` from seed i
    seed_labels = "draw_labels"

    def work_per_sample(self, setting: Setting, sampling) -> dict[str, int]:
        """Algorithm 1 and the particle samplers, counted by :func:`offshelf.compute.ddpm_work`:
        ``denoiser`` evaluations, ``classifier`` (forward) evaluations and every count of
        :class:`offshelf.compute.Work`."""
        from offshelf.compute import ddpm_work, legacy_work
        from offshelf.diffusion import space_timesteps

        steps = len(space_timesteps(self.num_train_timesteps, sampling["respacing"]))
        return legacy_work(ddpm_work(setting, steps))

    def sample(self, models: DDPMModels, setting: Setting, seeds: list[int], progress: bool = False,
               labels: torch.Tensor | None = None):
        return sample_batch(setting, models, seeds, progress=progress, labels=labels)

    def calibration_profile(self, models: DDPMModels, probe: Setting, seeds: list[int], batch_size: int,
                            num_bins: int = 15, guided: bool = False, judge=None):
        """Per-step ECE of the probe's classifier along *unguided conditional* trajectories: one
        trajectory distribution for every classifier, so their curves compare (Figures 1 and 2).

        ``guided``: along the trajectories ``probe`` samples itself instead (its regime, scale,
        τ1, τ2, γ): the sampler is :func:`sample_batch`, and the recorder measures the very guidance
        object that guides it, so it sees each step's x̂0 (or x_t) as the guidance does (§6).
        ``judge``: correct = the class it sees in the step's x̂0, not the trajectory's label."""
        if guided:
            if probe.method != "guided":
                raise ValueError(f"calibration along guided trajectories needs a guided setting, got {probe.name}")
            evaluator = build_guidance(probe, models)
            trajectory = probe
        else:
            measured = Setting(classifier=probe.classifier, input=probe.input, softplus_beta=probe.softplus_beta,
                               switch_step=probe.switch_step)
            evaluator = build_guidance(measured, models)
            trajectory = Setting(regime="cond", method="unguided")
        merged = None
        for i in range(0, len(seeds), batch_size):
            batch = seeds[i:i + batch_size]
            labels = None if judge is not None else draw_labels(batch, models.num_classes).to(models.device)
            recorder = CalibrationRecorder(evaluator, labels, models.diffusion.model_timesteps, judge=judge)
            sample_batch(trajectory, models, batch, callback=recorder, guidance=evaluator if guided else None)
            if merged is None:
                merged = recorder
            else:
                for step in recorder.confidence:
                    merged.confidence[step] += recorder.confidence[step]
                    merged.correct[step] += recorder.correct[step]
        return merged.table(num_bins, models.diffusion.num_steps)

    def gradient_trajectories(self, models: DDPMModels, base: Setting, marginal_temperatures: dict[str, float],
                              label: int, steps: list[int], seed: int = 0) -> dict[str, list[np.ndarray]]:
        """Figure 4: x̂0 and the classifier gradient of one sample at chosen steps, for each named
        marginal temperature (τ2 = τ1: conditional direction; τ2 < τ1: joint strengthened)."""
        panels: dict[str, list[np.ndarray]] = {}
        for name, tau2 in marginal_temperatures.items():
            setting = replace(base, marginal_temperature=tau2)
            record: dict[int, tuple[np.ndarray, np.ndarray]] = {}

            def callback(step, pred_xstart, grad, **_):
                if step in steps:
                    record[step] = (pred_xstart[0, 0].cpu().numpy(), grad[0, 0].cpu().numpy())

            labels = torch.tensor([label], device=models.device)
            guidance = Guidance(build_guidance(setting, models), scale=setting.scale,
                                sine_factor=setting.sine_factor, label=labels)
            ddpm_sample(models.denoiser, StackedRandomGenerator([seed], models.device), models.diffusion,
                        guidance=guidance, callback=callback, shape=models.image_shape,
                        y=labels if setting.regime == "cond" else None)
            panels[f"{name} x̂0"] = [record[s][0] for s in steps]
            panels[f"{name} gradient"] = [record[s][1] for s in steps]
        return panels


__all__ = ["DDPMModels", "DDPMSampling", "build_guidance", "sample_batch"]
