"""EDM ImageNet 64×64 (ADM architecture trained with EDM's preconditioning): the Heun sampler
with Algorithm 2. ``Setting.num_steps`` is N (18 when 0), ``Setting.scale`` is w; ``S_churn`` > 0
(with ``S_min``, ``S_max``, ``S_noise``) makes it EDM's stochastic sampler (Table C.1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from offshelf.backends.capabilities import Capability
from offshelf.backends.guides import guidance_for
from offshelf.backends.imagenet import ImageNetBackend
from offshelf.images import to_uint8_nhwc
from offshelf.levers import denoiser_fp16, levers_of
from offshelf.guidance import Guidance
from offshelf.samplers.edm import edm_sample
from offshelf.seeding import StackedRandomGenerator
from offshelf.settings import Setting


@dataclass
class EDMModels:
    denoiser: torch.nn.Module  # D(x; σ, y), EDMPrecond
    offshelf: torch.nn.Module | None
    device: torch.device


class EDM64Backend(ImageNetBackend):
    name = "edm64"
    denoiser_checkpoint = "edm_imagenet64_cond"
    default_reference = "ref_imagenet64_edm"
    capabilities = ImageNetBackend.capabilities | {Capability.COST, Capability.STOCHASTIC, Capability.CHOSEN_CLASSES}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, 64, 64)

    def unsupported(self, setting: Setting) -> str | None:
        if setting.method == "cfg":
            return "EDM's ImageNet model is not trained for classifier-free guidance"
        if setting.method == "guided" and setting.input != "xt":
            return "Algorithm 2 feeds the classifier the noisy sample (input: xt)"
        return super().unsupported(setting)

    def load(self, files: Mapping[str, str], sampling: Mapping[str, Any], setting: Setting | None = None) -> EDMModels:
        from offshelf.backbones.edm import load_edm_pickle

        levers, clock = levers_of(sampling)
        net = load_edm_pickle(files["denoiser"], device=self.device)
        net.use_fp16 = denoiser_fp16(levers, net.use_fp16, self.device)  # EDMPrecond's own fp16 (CUDA only)
        return EDMModels(levers.denoiser(net, clock), levers.classifier(self.load_offshelf(files, setting), clock),
                         self.device)

    def sample(self, models: EDMModels, setting: Setting, seeds: list[int], progress: bool = False,
               labels: torch.Tensor | None = None):
        """Algorithm 2 for one batch, drawn as NVlabs' ``generate.py`` draws it, so a seed gives the
        official image: each seed's generator draws its latent, *then* its class
        (``rnd.randint(label_dim, size=[batch])``: one scalar per generator, after its ``randn``),
        then the sampler's per-step noise. Every draw comes from the sample's own generator, so any
        split of the seeds into batches gives the same labels and images."""
        net = models.denoiser
        rng = StackedRandomGenerator(seeds, models.device, seed_bits=32)
        latents = rng.randn((net.img_channels, net.img_resolution, net.img_resolution))
        drawn = rng.randint(net.label_dim)  # drawn even when `labels` is given: the noise stream stays the seed's
        labels = drawn if labels is None else torch.as_tensor(labels).to(drawn.device)
        # generate.py: torch.eye(label_dim)[labels], i.e. a float32 one-hot
        one_hot = torch.nn.functional.one_hot(labels, net.label_dim).float()
        guidance = guidance_for(setting, models.offshelf)  # input x_t (unsupported() refuses x0)
        if guidance is not None:
            guidance = Guidance(guidance, scale=setting.scale, sine_factor=setting.sine_factor)
        x = edm_sample(net, latents, setting.num_steps or 18, guidance=guidance, progress=progress, y=one_hot,
                       rng=rng, **setting.churn())
        return x, labels

    def work_per_sample(self, setting: Setting, sampling) -> dict[str, int]:
        """Heun: 2N − 1 denoiser calls; guided, one classifier gradient per step."""
        n = setting.num_steps or 18
        return {"denoiser": 2 * n - 1, "classifier": n if setting.method == "guided" else 0}

    def to_uint8(self, images: torch.Tensor) -> np.ndarray:
        return to_uint8_nhwc(images, "edm")
