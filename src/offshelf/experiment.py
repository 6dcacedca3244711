"""One function per workflow stage for DDPM-family backbones: build guidance from a setting,
sample a shard, profile calibration, evaluate. Workflow scripts are thin calls into here."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from offshelf.atomic import atomic_write
from offshelf.calibration import CalibrationRecorder
from offshelf.classifiers.softplus import softplus_surgery
from offshelf.diffusion import GaussianDiffusion
from offshelf.guidance import ClassifierGuidance, SwitchedGuidance
from offshelf.samplers.ddpm import DDPMGuidanceConfig, ddpm_sample
from offshelf.seeding import StackedRandomGenerator
from offshelf.settings import Setting


@dataclass
class Models:
    """What a DDPM-family experiment needs: the denoiser ``model(x, t, y)``, its diffusion,
    image shape and label space, and the guiding classifiers (clean-image and noise-aware)."""

    denoiser: Callable
    diffusion: GaussianDiffusion
    image_shape: tuple[int, int, int]
    num_classes: int
    offshelf: torch.nn.Module
    finetuned: torch.nn.Module | None = None
    null_label: int | None = None
    device: str = "cpu"


def load_digits_models(checkpoints: dict[str, str], respacing: str, variance_type: str = "fixed_large") -> Models:
    from offshelf.backbones import digits

    denoiser, cfg, _ = digits.load_checkpoint(checkpoints["denoiser"], "denoiser")
    offshelf, _, _ = digits.load_checkpoint(checkpoints["offshelf"], "offshelf")
    finetuned, _, _ = digits.load_checkpoint(checkpoints["finetuned"], "finetuned")
    diffusion = GaussianDiffusion.respaced(cfg.num_train_timesteps, respacing, cfg.schedule, variance_type)
    return Models(denoiser, diffusion, digits.IMAGE_SHAPE, digits.NUM_CLASSES, offshelf, finetuned, digits.NULL_LABEL)


def load_workflow_models(files: dict[str, str], sampling: dict, backbone: str = "digits",
                         imagenet_cfg: dict | None = None, checkpoints_cfg: dict | None = None,
                         network: str | None = None):
    """The models of one workflow job, for any backbone: digits checkpoints trained by the
    workflow, or verified pretrained files (offshelf.imagenet.load_models)."""
    if backbone == "digits":
        return load_digits_models(files, sampling["respacing"], sampling.get("variance", "fixed_large"))
    from offshelf import imagenet

    names = {role: name for role, name in imagenet.file_checkpoints(files, imagenet_cfg, backbone, network).items()}
    files = imagenet.verified_files(files, names, checkpoints_cfg)
    return imagenet.load_models(backbone, files, imagenet_cfg, sampling, network=network)


def build_guidance(setting: Setting, models: Models):
    """The guidance object a setting describes (None when unguided / CFG).

    The off-the-shelf classifier gets Softplus(β) surgery and the calibrated temperatures; the
    fine-tuned classifier is used as ADM's baseline did (x_t and t, plain log-softmax).
    """
    if setting.method != "guided":
        return None

    def offshelf() -> ClassifierGuidance:
        return ClassifierGuidance(softplus_surgery(models.offshelf, setting.softplus_beta),
                                  setting.joint_temperature, setting.marginal_temperature, setting.input)

    def finetuned() -> ClassifierGuidance:
        if models.finetuned is None:
            raise ValueError("this backbone has no fine-tuned (noise-aware) classifier configured")
        return ClassifierGuidance(models.finetuned, 1.0, 1.0, "xt", time_conditioned=True)

    if setting.classifier == "offshelf":
        return offshelf()
    if setting.classifier == "finetuned":
        return finetuned()
    return SwitchedGuidance(offshelf(), finetuned(), setting.switch_step)


def draw_labels(seeds: list[int], num_classes: int) -> torch.Tensor:
    """The class of sample ``seed``: drawn from a generator of its own (offset so it never
    shares a stream with the sample's noise)."""
    return torch.tensor([int(torch.randint(num_classes, (), generator=torch.Generator().manual_seed(s + (1 << 40))))
                         for s in seeds])


def sample_batch(setting: Setting, models: Models, seeds: list[int], callback=None, progress: bool = False,
                 guidance=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] and their target labels for ``seeds``; reproducible per seed."""
    labels = draw_labels(seeds, models.num_classes).to(models.device)
    rng = StackedRandomGenerator(seeds, models.device)
    guidance = build_guidance(setting, models) if guidance is None else guidance
    y = labels if (setting.regime == "cond" or setting.method == "cfg") else None
    cfg_scale = setting.cfg_scale if setting.method == "cfg" else None
    config = DDPMGuidanceConfig(scale=setting.scale, sine_factor=setting.sine_factor)
    x = ddpm_sample(models.denoiser, models.diffusion, rng, models.image_shape, y=y, guidance=guidance,
                    config=config, recurrent_steps=setting.recurrent_steps, cfg_scale=cfg_scale,
                    null_label=models.null_label, guidance_label=labels, callback=callback, progress=progress)
    return x, labels


def sample_shard(setting: Setting, models: Models, seeds: list[int], batch_size: int,
                 progress: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """uint8 NHWC images (ADM evaluator layout), labels, and the wall time in seconds."""
    from offshelf.backbones.digits import to_uint8_nhwc

    start = time.perf_counter()
    guidance = build_guidance(setting, models)
    images, labels = [], []
    for i in range(0, len(seeds), batch_size):
        x, y = sample_batch(setting, models, seeds[i:i + batch_size], progress=progress, guidance=guidance)
        images.append(to_uint8_nhwc(x))
        labels.append(y.cpu().numpy())
    return np.concatenate(images), np.concatenate(labels).astype(np.int64), time.perf_counter() - start


def calibration_profile(probe: Setting, models: Models, seeds: list[int], batch_size: int, num_bins: int = 15):
    """Per-step ECE of the probe's classifier along *unguided conditional* trajectories: one
    trajectory distribution for every classifier, so their curves compare (Figure 1/2)."""

    guided = Setting(classifier=probe.classifier, input=probe.input, softplus_beta=probe.softplus_beta,
                     switch_step=probe.switch_step)
    evaluator = build_guidance(guided, models)
    trajectory = Setting(regime="cond", method="unguided")
    tables = []
    for i in range(0, len(seeds), batch_size):
        batch = seeds[i:i + batch_size]
        recorder = CalibrationRecorder(evaluator, draw_labels(batch, models.num_classes).to(models.device),
                                       models.diffusion.model_timesteps)
        sample_batch(trajectory, models, batch, callback=recorder)
        tables.append(recorder)
    merged = tables[0]
    for other in tables[1:]:
        for step in other.confidence:
            merged.confidence[step] += other.confidence[step]
            merged.correct[step] += other.correct[step]
    return merged.table(num_bins, models.diffusion.num_steps)


# --------------------------------------------------------------------------- atomic I/O

def save_csv(path, frame) -> None:
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


# --------------------------------------------------------------------------- evaluation

def digits_feature_fns(evaluator_path) -> tuple[Callable, Callable]:
    """(features, logits) of uint8 NHWC digits under the benchmark's evaluation network: the
    clean-fid custom-extractor role that Inception plays on ImageNet."""
    from offshelf.backbones import digits

    evaluator, _, _ = digits.load_checkpoint(evaluator_path, "evaluator")

    @torch.no_grad()
    def features(images: np.ndarray) -> np.ndarray:
        return evaluator.features(digits.from_uint8_nhwc(images)).numpy()

    @torch.no_grad()
    def logits(images: np.ndarray) -> np.ndarray:
        return evaluator(digits.from_uint8_nhwc(images)).numpy()

    return features, logits


def reference_features(evaluator_path, split: str, split_seed: int = 0) -> dict[str, np.ndarray]:
    from offshelf.backbones import digits
    from offshelf.metrics import extract_features

    features, _ = digits_feature_fns(evaluator_path)
    x, y = digits.load_digits_split(split, split_seed)
    return {"features": extract_features(digits.to_uint8_nhwc(x), features, batch_size=512), "labels": y.numpy()}


def load_shards(shard_paths: list[str], num_samples: int | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Images and labels of the shards in order, cut to the first ``num_samples``, and the
    sampling time of the samples kept (a partly used shard counts pro rata)."""
    from offshelf.metrics import load_samples

    images, labels, seconds = [], [], 0.0
    for path in shard_paths:
        x, y = load_samples(path)
        with np.load(path) as shard:
            shard_seconds = float(shard["seconds"]) if "seconds" in shard.files else float("nan")
        kept = len(x) if num_samples is None else max(0, min(len(x), num_samples - sum(map(len, images))))
        images.append(x[:kept])
        labels.append(y[:kept])
        seconds += shard_seconds * kept / max(len(x), 1)
    images, labels = np.concatenate(images), np.concatenate(labels)
    if num_samples is not None and len(images) < num_samples:
        raise ValueError(f"shards {shard_paths[0]} .. hold {len(images)} samples, {num_samples} requested")
    return images, labels, seconds


def evaluate_setting(shard_paths: list[str], evaluator_path, reference_path, nhood_size: int = 3,
                     num_samples: int | None = None) -> dict[str, Any]:
    """FID / precision / recall against the real digits, the evaluator's class accuracy and the
    summed sampling time of the shards."""
    from offshelf.metrics import evaluate

    images, labels, seconds = load_shards(shard_paths, num_samples)
    features, logits = digits_feature_fns(evaluator_path)
    with np.load(reference_path) as ref:
        reference = ref["features"]
    result = evaluate(images, labels, features, reference_features=reference,
                      classifier_fn=logits, batch_size=512, nhood_size=nhood_size)
    result["seconds"] = seconds
    return result


def gradient_trajectories(models: Models, base: Setting, marginal_temperatures: dict[str, float], label: int,
                          steps: list[int], seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Figure 4: x̂0 and the classifier gradient of one sample at chosen steps, for each named
    marginal temperature (τ2 = τ1: conditional direction; τ2 < τ1: joint strengthened)."""
    from dataclasses import replace

    panels: dict[str, list[np.ndarray]] = {}
    for name, tau2 in marginal_temperatures.items():
        setting = replace(base, marginal_temperature=tau2)
        record: dict[int, tuple[np.ndarray, np.ndarray]] = {}

        def callback(step, pred_xstart, grad, **_):
            if step in steps:
                record[step] = (pred_xstart[0, 0].numpy(), grad[0, 0].numpy())

        guidance = build_guidance(setting, models)
        labels = torch.tensor([label])
        rng = StackedRandomGenerator([seed])
        ddpm_sample(models.denoiser, models.diffusion, rng, models.image_shape,
                    y=labels if setting.regime == "cond" else None, guidance=guidance,
                    config=DDPMGuidanceConfig(scale=setting.scale, sine_factor=setting.sine_factor),
                    guidance_label=labels, callback=callback)
        panels[f"{name} x̂0"] = [record[s][0] for s in steps]
        panels[f"{name} gradient"] = [record[s][1] for s in steps]
    return panels
