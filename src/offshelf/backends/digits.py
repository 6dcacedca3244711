"""The embedded digits benchmark as a backend: four small networks trained by the workflow
(:mod:`offshelf.backbones.digits`), Algorithm 1 on their DDPM, judged by a separately trained
evaluation network (Inception's role) against the real training digits."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from offshelf.backbones import digits
from offshelf.backends.base import Backend, FeatureExtractor, Trained
from offshelf.backends.ddpm import DDPMModels, DDPMSampling
from offshelf.diffusion import GaussianDiffusion
from offshelf.images import from_uint8_nhwc, to_uint8_nhwc
from offshelf.settings import Setting

GUIDING_ROLES = ("denoiser", "offshelf", "finetuned")


class DigitsBackend(DDPMSampling, Backend):
    num_train_timesteps = digits.TrainConfig.num_train_timesteps
    name = "digits"
    num_classes = digits.NUM_CLASSES

    @classmethod
    def options_from_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        return {"split_seed": int(config.get("digits", {}).get("split_seed", 0))}

    @classmethod
    def training_from_config(cls, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        split_seed = int(config["digits"].get("split_seed", 0))
        return {role: dict(params, split_seed=split_seed) for role, params in config["digits"]["models"].items()}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return digits.IMAGE_SHAPE

    @property
    def split_seed(self) -> int:
        return int(self.options.get("split_seed", 0))

    def files(self, setting: Setting) -> dict[str, Trained]:
        # every setting takes all three networks: one file set, so no setting ever waits on another
        return {role: Trained(role) for role in GUIDING_ROLES}

    def evaluation_files(self) -> dict[str, Trained]:
        return {"evaluator": Trained("evaluator")}

    def train(self, role: str, params: Mapping[str, Any], out_path: str, progress: bool = False) -> dict:
        config = digits.TrainConfig(role=role, **params)
        model, metrics = digits.train(config, progress=progress)
        digits.save_checkpoint(model, config, metrics, out_path)
        return metrics

    def load(self, files: Mapping[str, str], sampling: Mapping[str, Any], setting: Setting | None = None) -> DDPMModels:
        denoiser, cfg, _ = digits.load_checkpoint(files["denoiser"], "denoiser")
        offshelf, _, _ = digits.load_checkpoint(files["offshelf"], "offshelf")
        finetuned, _, _ = digits.load_checkpoint(files["finetuned"], "finetuned")
        diffusion = GaussianDiffusion.respaced(cfg.num_train_timesteps, sampling["respacing"], cfg.schedule,
                                               sampling.get("variance", "fixed_large"))
        return DDPMModels(denoiser, diffusion, digits.IMAGE_SHAPE, digits.NUM_CLASSES, offshelf, finetuned,
                          digits.NULL_LABEL)

    def to_uint8(self, images: torch.Tensor) -> np.ndarray:
        return to_uint8_nhwc(images, "round")

    def feature_extractor(self, files: Mapping[str, str]) -> FeatureExtractor:
        evaluator, _, _ = digits.load_checkpoint(files["evaluator"], "evaluator")

        @torch.no_grad()
        def features(images: np.ndarray) -> np.ndarray:
            return evaluator.features(from_uint8_nhwc(images)).numpy()

        @torch.no_grad()
        def logits(images: np.ndarray) -> np.ndarray:
            return evaluator(from_uint8_nhwc(images)).numpy()

        return FeatureExtractor(features, logits, batch_size=512, name="digits evaluation network")

    def held_out_images(self, count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The test split of ``split_seed``: every network here trains on the train split only."""
        x, y = digits.load_digits_split("test", self.split_seed)
        return (x, y) if count is None else (x[:count], y[:count])

    def reference_features(self, files: Mapping[str, str], extractor: FeatureExtractor,
                           evaluation: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Features of the real digits of ``evaluation.reference_split`` (default ``train``)."""
        from offshelf.metrics import extract_features

        split = (evaluation or {}).get("reference_split", "train")
        x, y = digits.load_digits_split(split, self.split_seed)
        return {"features": extract_features(to_uint8_nhwc(x, "round"), extractor.features, extractor.batch_size),
                "labels": y.numpy()}
