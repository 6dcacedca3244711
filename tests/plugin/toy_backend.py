"""A third-party backend, written outside ``src/offshelf`` as a user would: an exactly solvable
diffusion family. Each class k is an isotropic Gaussian N(μ_k, s²·I) of 1×4×4 "images", so the
noised data, its score and both classifiers (clean and noise-aware) are closed-form. No files.
Samples are judged by a network that guides none of them (:class:`NearestMeanJudge`: judge ≠ guide).

Named in a config by import path: ``backbone: "toy_backend:ToyMixtureBackend"``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from offshelf.backends.base import Backend, FeatureExtractor
from offshelf.backends.capabilities import Capability
from offshelf.backends.ddpm import DDPMModels, DDPMSampling
from offshelf.diffusion import GaussianDiffusion, beta_schedule
from offshelf.images import from_uint8_nhwc, to_uint8_nhwc

SHAPE = (1, 4, 4)
STEPS = 1000


def class_means(num_classes: int) -> torch.Tensor:
    """Class k lights pixel k (and dims the rest): well separated, inside [-1, 1]."""
    means = torch.full((num_classes, math.prod(SHAPE)), -0.5, dtype=torch.float64)
    means[torch.arange(num_classes), torch.arange(num_classes)] = 0.5
    return means


class Mixture(nn.Module):
    def __init__(self, num_classes: int, std: float):
        super().__init__()
        self.register_buffer("means", class_means(num_classes))
        self.register_buffer("alphas_cumprod", torch.tensor(np.cumprod(1 - beta_schedule("linear", STEPS))))
        self.var = std ** 2

    def log_joint(self, x: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """log N(x; √ᾱ μ_k, (ᾱ s² + 1 − ᾱ) I) per class (equal weights), [B, K]."""
        ab = alpha_bar.double().view(-1, 1, 1)
        v = ab * self.var + 1 - ab
        d = x.flatten(1).double()[:, None] - ab.sqrt() * self.means[None]
        return (-0.5 * d.pow(2).sum(-1) / v[:, :, 0] - 0.5 * d.shape[-1] * torch.log(v[:, :, 0])).float()


class CleanClassifier(Mixture):
    """The off-the-shelf classifier: the exact posterior of clean images. Its input passes through
    x = relu(x) − relu(−x), an identity written with a ReLU module, so the workflow's Softplus(β)
    surgery has a ReLU to replace and the classifier stays exact: softplus_β(x) − softplus_β(−x) = x."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(x) - self.relu(-x)
        return self.log_joint(x, torch.ones(len(x), device=x.device))


class NoisyClassifier(Mixture):
    """The noise-aware classifier: the exact posterior at original timestep t."""

    def forward(self, x, t):
        return self.log_joint(x, self.alphas_cumprod[t])


class ExactDenoiser(Mixture):
    """ε(x_t, t, y) of the noised mixture (of component y when a label is given)."""

    def forward(self, x, t, y=None):
        ab = self.alphas_cumprod[t].view(-1, 1)
        flat = x.flatten(1).double()
        weights = torch.softmax(self.log_joint(x, ab[:, 0]).double(), 1) if y is None else \
            nn.functional.one_hot(y, len(self.means)).double()
        v = ab * self.var + 1 - ab
        score = (weights[:, :, None] * (ab.sqrt()[:, None] * self.means[None] - flat[:, None])).sum(1) / v
        return (-(1 - ab).sqrt() * score).float().view_as(x)


class NearestMeanJudge(nn.Module):
    """The judge: −‖x − μ_k‖² per class on the raw pixels, a template matcher that is neither
    guiding classifier (no ReLU, no noise model, no Softplus surgery can touch it). With equal
    isotropic class variances its argmax is the Bayes classifier's, so accuracy stays meaningful."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.register_buffer("means", class_means(num_classes).float())

    def forward(self, x):
        return -(x.flatten(1)[:, None] - self.means[None]).pow(2).sum(-1)


class ToyMixtureBackend(DDPMSampling, Backend):
    name = "toy-mixture"
    num_classes = 3                                  # required core 1/7
    num_train_timesteps = STEPS
    # Algorithm 1's calibration, Figure 4, cost and analytic figures (DDPMSampling), plus its own
    capabilities = DDPMSampling.capabilities | {Capability.REFERENCE_FEATURES, Capability.RESPACING}

    @classmethod
    def options_from_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        return {"std": float(config.get("backend_options", {}).get("std", 0.2))}

    @property
    def image_shape(self):                           # 2/7
        return SHAPE

    def files(self, setting):                        # 3/7: exact networks, nothing to download or train
        return {}

    def unsupported(self, setting):
        return "no label-dropout model" if setting.method == "cfg" else None

    def load(self, files, sampling, setting=None) -> DDPMModels:   # 4/7
        std = self.options["std"]
        diffusion = GaussianDiffusion.respaced(STEPS, sampling["respacing"], "linear",
                                               sampling.get("variance", "fixed_large"))
        return DDPMModels(ExactDenoiser(self.num_classes, std), diffusion, SHAPE, self.num_classes,
                          CleanClassifier(self.num_classes, std), NoisyClassifier(self.num_classes, std))

    # sample (5/7): DDPMSampling's, Algorithm 1

    def to_uint8(self, images):                      # 6/7
        return to_uint8_nhwc(images, "round")

    def feature_extractor(self, files) -> FeatureExtractor:   # 7/7: the judge
        judge = NearestMeanJudge(self.num_classes)  # never one of the guides (CleanClassifier, NoisyClassifier)
        return FeatureExtractor(lambda u8: from_uint8_nhwc(u8).flatten(1).numpy(),
                                lambda u8: judge(from_uint8_nhwc(u8)).detach().numpy(), name="nearest class mean")

    def reference_features(self, files, extractor, evaluation=None):   # capability reference_features
        gen = torch.Generator().manual_seed(0)
        labels = torch.arange(600) % self.num_classes
        x = class_means(self.num_classes)[labels] + self.options["std"] * torch.randn(600, 16, generator=gen,
                                                                                      dtype=torch.float64)
        images = to_uint8_nhwc(x.clamp(-1, 1).float().view(-1, *SHAPE), "round")
        return {"features": extractor.features(images), "labels": labels.numpy()}
