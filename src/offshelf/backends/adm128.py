"""ADM (guided-diffusion) ImageNet 128×128: the conditional UNet on the 1000-step linear schedule,
respaced (250 steps), learned-range variance, Algorithm 1. Off-the-shelf classifier: torchvision
ResNet-50/101 V2; fine-tuned baseline: ADM's noise-aware ``EncoderUNetModel`` called as ``(x_t, t)``.
The conditional model has no null label, so classifier-free rows are reported as not run."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from offshelf.backends.base import Pretrained
from offshelf.backends.capabilities import Capability, UnsupportedError
from offshelf.backends.ddpm import DDPMModels, DDPMSampling
from offshelf.backends.imagenet import ImageNetBackend
from offshelf.diffusion import GaussianDiffusion
from offshelf.images import to_uint8_nhwc
from offshelf.levers import denoiser_fp16, levers_of
from offshelf.settings import Setting

#: role -> the guided-diffusion preset of the official file (``imagenet.adm_flags`` may replace
#: it with explicit guided-diffusion flags: small stand-ins in tests and rehearsals)
ADM_PRESETS = {"denoiser": "adm_imagenet128_cond_diffusion", "finetuned": "adm_imagenet128_classifier"}


def load_adm_network(path: str, preset_or_flags: str | Mapping[str, Any], device: torch.device,
                     fp16: bool) -> torch.nn.Module:
    """An ADM network from an official preset name or explicit guided-diffusion flags, loaded strictly;
    ``fp16`` converts its convolutions as guided-diffusion's ``use_fp16`` does (on CUDA:
    ``adm.on_device``)."""
    from offshelf.backbones import adm

    if isinstance(preset_or_flags, str):
        return adm.load_adm(path, preset_or_flags, device, use_fp16=fp16).requires_grad_(False)
    model = adm.create_from_flags(dict(preset_or_flags))
    model.load_state_dict(adm.read_state_dict(path), strict=True)
    return adm.on_device(model, device, use_fp16=fp16).requires_grad_(False)


class ADM128Backend(DDPMSampling, ImageNetBackend):
    num_train_timesteps = 1000
    name = "adm128"
    denoiser_checkpoint = ADM_PRESETS["denoiser"]
    default_reference = "ref_imagenet128"
    capabilities = ImageNetBackend.capabilities | DDPMSampling.capabilities | {Capability.TUNING, Capability.RESPACING}

    @property
    def architectures(self) -> dict[str, str | dict]:
        return {**ADM_PRESETS, **self.imagenet.get("adm_flags", {})}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        flags = self.architectures["denoiser"]
        return (3, int(flags["image_size"]), int(flags["image_size"])) if isinstance(flags, Mapping) else (3, 128, 128)

    def files(self, setting: Setting) -> dict[str, Pretrained]:
        names = super().files(setting)
        if setting.uses_classifier and setting.classifier in ("finetuned", "combined"):
            names["finetuned"] = Pretrained(ADM_PRESETS["finetuned"])
        return names

    def unsupported(self, setting: Setting) -> str | None:
        if setting.method == "cfg":
            return "needs a CFG-trained model"
        return None

    def load(self, files: Mapping[str, str], sampling: Mapping[str, Any], setting: Setting | None = None) -> DDPMModels:
        device, arch = self.device, self.architectures
        levers, clock = levers_of(sampling)
        fp16 = denoiser_fp16(levers, self.imagenet.get("fp16", True), device)
        denoiser = load_adm_network(files["denoiser"], arch["denoiser"], device, fp16)
        # guided-diffusion's ImageNet-128 command runs the noise-aware classifier in fp32
        # (classifier_use_fp16 is false there), whatever the UNet does
        finetuned = load_adm_network(files["finetuned"], arch["finetuned"], device, fp16=False) \
            if "finetuned" in files else None
        diffusion = GaussianDiffusion.respaced(1000, sampling["respacing"], "linear",
                                               sampling.get("variance", "learned_range"))
        return DDPMModels(levers.denoiser(denoiser, clock), diffusion, self.image_shape, self.num_classes,
                          levers.classifier(self.load_offshelf(files, setting), clock),
                          levers.classifier(finetuned, clock), None, str(device))

    def to_uint8(self, images: torch.Tensor) -> np.ndarray:
        return to_uint8_nhwc(images, "adm")

    def held_out_images(self, count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The labelled file ``imagenet.held_out`` names (ImageNet validation images, which no
        network here trained on, built by ``offshelf held-out``; :mod:`offshelf.held_out`)."""
        from offshelf.held_out import load_held_out

        path = self.imagenet.get("held_out")
        if not path:
            raise UnsupportedError("config key 'imagenet.held_out' is not set: offshelf tune's calibration stage needs "
                                   "labelled ImageNet validation images; build the file with `offshelf held-out "
                                   f"--folder <ImageNet val> --resolution {self.image_shape[1]} --out FILE`")
        x, y = load_held_out(path, self.image_shape, self.num_classes, "imagenet.held_out")
        return (x, y) if count is None else (x[:count], y[:count])
