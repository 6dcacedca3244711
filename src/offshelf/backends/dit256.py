"""DiT-XL/2 ImageNet 256×256 with the sd-vae-ft-ema decoder: classifier-free guidance (the
baseline, ``Setting.cfg_scale``) plus Algorithm 3, off-the-shelf guidance through the decoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from offshelf.backends.capabilities import Capability
from offshelf.backends.guides import guidance_for
from offshelf.backends.imagenet import ImageNetBackend
from offshelf.diffusion import GaussianDiffusion
from offshelf.images import to_uint8_nhwc
from offshelf.levers import levers_of
from offshelf.guidance import Guidance
from offshelf.samplers.dit import dit_diffusion, dit_sample
from offshelf.seeding import StackedRandomGenerator, draw_labels
from offshelf.settings import Setting


@dataclass
class DiTModels:
    denoiser: torch.nn.Module  # DiTDenoiser: latent ε and variance
    vae: torch.nn.Module
    diffusion: GaussianDiffusion
    offshelf: torch.nn.Module | None
    device: torch.device
    schedule: str = "adm"

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.denoiser.in_channels, self.denoiser.latent_size, self.denoiser.latent_size)


class DiT256Backend(ImageNetBackend):
    num_train_timesteps = 1000
    name = "dit256"
    seed_labels = "draw_labels"  # sample(): draw_labels(seeds, ...)
    denoiser_checkpoint = "dit_xl2_256"
    default_reference = "ref_imagenet256"
    capabilities = ImageNetBackend.capabilities | {Capability.COST, Capability.RESPACING, Capability.CHOSEN_CLASSES}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, 256, 256)

    def unsupported(self, setting: Setting) -> str | None:
        if setting.method == "guided" and setting.input != "x0":
            return "Algorithm 3 differentiates the decoded x̂0 (input: x0)"
        return super().unsupported(setting)

    def load(self, files: Mapping[str, str], sampling: Mapping[str, Any], setting: Setting | None = None) -> DiTModels:
        from offshelf.backbones.dit import DiTDenoiser, load_dit, load_vae

        device = self.device
        levers, clock = levers_of(sampling)
        model = DiTDenoiser(load_dit(files["denoiser"], device=device))
        vae = load_vae(self.imagenet.get("vae", "stabilityai/sd-vae-ft-ema"), device=device)
        return DiTModels(levers.denoiser(model, clock), levers.decoder(vae), dit_diffusion(sampling["respacing"]),
                         levers.classifier(self.load_offshelf(files, setting), clock), device,
                         self.imagenet.get("dit_schedule", "adm"))

    def sample(self, models: DiTModels, setting: Setting, seeds: list[int], progress: bool = False,
               labels: torch.Tensor | None = None):
        """Algorithm 3 for one batch: CFG scale ``setting.cfg_scale`` (method ``cfg``: the DiT
        baseline; ``guided``: plus off-the-shelf guidance through the VAE decoder)."""
        labels = (draw_labels(seeds, models.denoiser.num_classes) if labels is None
                  else torch.as_tensor(labels)).to(models.device)
        rng = StackedRandomGenerator(seeds, models.device)
        guidance = guidance_for(setting, models.offshelf)  # input x̂0 (unsupported() refuses x_t)
        cfg_scale = 1.0 if setting.method == "unguided" else setting.cfg_scale
        if guidance is not None:
            guidance = Guidance(guidance, scale=setting.scale, sine_factor=setting.sine_factor,
                                schedule=models.schedule)
        x = dit_sample(models.denoiser, rng, models.diffusion, guidance=guidance, progress=progress, vae=models.vae,
                       latent_shape=models.latent_shape, y=labels, cfg_scale=cfg_scale)
        return x, labels

    def work_per_sample(self, setting: Setting, sampling) -> dict[str, int]:
        """Per step one DiT call, two (the CFG pair) unless unguided; guided, one gradient of the
        classifier through the VAE decoder (count it at the decoder's cost: it dominates)."""
        from offshelf.diffusion import space_timesteps

        steps = len(space_timesteps(self.num_train_timesteps, sampling["respacing"]))
        pair = setting.method != "unguided"  # guidance needs the CFG difference even at scale 1
        return {"denoiser": steps * (2 if pair else 1), "classifier": steps if setting.method == "guided" else 0}

    def to_uint8(self, images: torch.Tensor) -> np.ndarray:
        return to_uint8_nhwc(images, "edm")  # DiT's sample.py: clamp(127.5·x + 128, 0, 255) → uint8
