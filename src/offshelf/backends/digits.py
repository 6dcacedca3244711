"""The embedded digits benchmark as a backend: four small networks trained by the workflow
(:mod:`offshelf.backbones.digits`), Algorithm 1 on their DDPM, judged by a separately trained
evaluation network (Inception's role) against the real training digits.

A setting's ``network`` picks the off-the-shelf classifier family (``digits.CLASSIFIER_FAMILIES``:
"" = the ResNet, ``mlp``, ``vit``); each family is its own trained role (``offshelf_mlp``...), so
the workflow trains it only when some setting names it."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any, Mapping

import numpy as np
import torch

from offshelf.backbones import digits
from offshelf.backends.base import Backend, FeatureExtractor, Trained
from offshelf.backends.capabilities import Capability
from offshelf.backends.ddpm import DDPMModels, DDPMSampling
from offshelf.diffusion import GaussianDiffusion
from offshelf.images import from_uint8_nhwc, to_uint8_nhwc
from offshelf.levers import levers_of
from offshelf.settings import Setting

GUIDING_ROLES = ("denoiser", "offshelf", "finetuned")


class DigitsBackend(DDPMSampling, Backend):
    num_train_timesteps = digits.TrainConfig.num_train_timesteps
    name = "digits"
    num_classes = digits.NUM_CLASSES
    capabilities = DDPMSampling.capabilities | {Capability.TRAINING, Capability.TUNING,
                                                Capability.REFERENCE_FEATURES, Capability.RESPACING}
    config_schema = "schemas/digits.schema.yaml"  # the `digits:` section

    @classmethod
    def options_from_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        return {"split_seed": int(config.get("digits", {}).get("split_seed", 0))}

    @classmethod
    def training_from_config(cls, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """``digits.models`` role -> training params. A classifier family absent from it trains
        with the ``offshelf`` role's params and a seed of its own (offshelf's + 100·k, k its
        position in ``digits.FAMILY_ROLES``), so ``network: mlp`` works in any digits config; a
        family role is trained only when a setting uses it (the workflow's ``trained_roles``)."""
        split_seed = int(config["digits"].get("split_seed", 0))
        models = dict(config["digits"]["models"])
        for k, role in enumerate(digits.FAMILY_ROLES, start=1):
            if role not in models:
                models[role] = dict(models["offshelf"], seed=int(models["offshelf"].get("seed", 0)) + 100 * k)
        return {role: dict(params, split_seed=split_seed) for role, params in models.items()}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return digits.IMAGE_SHAPE

    @property
    def split_seed(self) -> int:
        return int(self.options.get("split_seed", 0))

    @staticmethod
    def classifier_role(setting: Setting | None) -> str:
        """The trained role of a setting's off-the-shelf classifier (``setting.network``'s family).

        Raises a ValueError naming the setting for an unknown family, and for Softplus(β) on a
        family without ReLU (the ViT: GELU), which would otherwise guide with plain GELU under
        a Softplus label."""
        network = setting.network if setting is not None else ""
        if network not in digits.CLASSIFIER_FAMILIES:
            known = ", ".join(repr(n) for n in digits.CLASSIFIER_FAMILIES if n)
            raise ValueError(f"setting {setting.name}: network {network!r} is not a digits classifier family; "
                             f"known: {known} (or leave it out for the default ResNet)")
        role, has_relu = digits.CLASSIFIER_FAMILIES[network]
        if (not has_relu and setting.uses_classifier and setting.classifier != "finetuned"
                and not math.isinf(setting.softplus_beta)):
            raise ValueError(f"setting {setting.name}: softplus_beta = {setting.softplus_beta:g}, but network "
                             f"{network!r} ({role}) has no ReLU (GELU activations), so Softplus surgery does not "
                             f"apply to it; use softplus_beta: inf with this network")
        return role

    def files(self, setting: Setting) -> dict[str, Trained]:
        # every setting takes all three networks: one file set per classifier family, so no
        # setting ever waits on another family's training
        files = {role: Trained(role) for role in GUIDING_ROLES}
        files["offshelf"] = Trained(self.classifier_role(setting))
        return files

    def unsupported(self, setting: Setting) -> str | None:
        self.classifier_role(setting)  # an unknown family or Softplus on GELU is an error, not a skipped row
        return None

    def evaluation_files(self) -> dict[str, Trained]:
        return {"evaluator": Trained("evaluator")}

    def train(self, role: str, params: Mapping[str, Any], out_path: str, progress: bool = False) -> dict:
        config = digits.TrainConfig(role=role, **params)
        model, metrics = digits.train(config, progress=progress)
        digits.save_checkpoint(model, config, metrics, out_path)
        return metrics

    def load(self, files: Mapping[str, str], sampling: Mapping[str, Any], setting: Setting | None = None) -> DDPMModels:
        denoiser, cfg, _ = digits.load_checkpoint(files["denoiser"], "denoiser")
        offshelf, _, _ = digits.load_checkpoint(files["offshelf"], self.classifier_role(setting))
        finetuned, _, _ = digits.load_checkpoint(files["finetuned"], "finetuned")
        diffusion = GaussianDiffusion.respaced(cfg.num_train_timesteps, sampling["respacing"], cfg.schedule,
                                               sampling.get("variance", "fixed_large"))
        levers, clock = levers_of(sampling)
        return DDPMModels(levers.denoiser(denoiser, clock), diffusion, digits.IMAGE_SHAPE, digits.NUM_CLASSES,
                          levers.classifier(offshelf, clock), levers.classifier(finetuned, clock), digits.NULL_LABEL)

    def to_uint8(self, images: torch.Tensor) -> np.ndarray:
        return to_uint8_nhwc(images, "round")

    def feature_extractor(self, files: Mapping[str, str]) -> FeatureExtractor:
        evaluator, config, metrics = digits.load_checkpoint(files["evaluator"], "evaluator")
        # the judge's identity in every metrics file and the report: its architecture and weights' hash
        digest = digits.weights_sha256(asdict(config), evaluator.state_dict())
        name = (f"digits evaluation network (role evaluator: {type(evaluator).__name__} width {config.width}, "
                f"seed {config.seed}; sha256 {digest[:12]})")

        @torch.no_grad()
        def features(images: np.ndarray) -> np.ndarray:
            return evaluator.features(from_uint8_nhwc(images)).numpy()

        @torch.no_grad()
        def logits(images: np.ndarray) -> np.ndarray:
            return evaluator(from_uint8_nhwc(images)).numpy()

        return FeatureExtractor(features, logits, batch_size=512, name=name)

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
