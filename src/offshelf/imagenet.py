"""The ImageNet reproductions as workflow stages: which checkpoint files a job needs, loading the
pretrained backbones, one shard of samples per backbone, Inception evaluation against the
published reference batches, and the report.

Backbones (config key ``backbone``):

* ``adm128``: ADM ImageNet-128 conditional UNet, 1000-step linear schedule respaced (250 steps),
  learned-range variance, Algorithm 1 (:func:`offshelf.samplers.ddpm.ddpm_sample`). Off-the-shelf
  classifier: torchvision ResNet-50/101 V2; fine-tuned: ADM's noisy ``EncoderUNetModel`` called as
  ``(x_t, t)``. No null label, so classifier-free rows are reported as not run.
* ``edm64``: EDM ImageNet-64 (ADM architecture), Heun sampler with Algorithm 2
  (:func:`offshelf.samplers.edm.edm_sample`); ``Setting.num_steps`` is N, ``Setting.scale`` is w_max.
* ``dit256``: DiT-XL/2 256 with the sd-vae-ft-ema decoder, CFG plus Algorithm 3
  (:func:`offshelf.samplers.dit.dit_sample`); ``Setting.cfg_scale`` is the CFG scale.

FID uses the TF-Inception port in clean-fid's ``legacy_tensorflow`` mode: the reference ``mu``/
``sigma`` in ADM's ``VIRTUAL_imagenet*_labeled.npz`` (and EDM's fid-refs) were computed with the TF
Inception graph and its own resize, so features from any other Inception would shift every FID.
No classification accuracy is reported: the guiding ResNet cannot judge its own guidance, and
the TF Inception's 1008-way head does not use ImageNet's class order.

The functions that plan jobs (``checkpoint_*``, ``*_inputs``) import nothing heavy: the Snakefile
calls them to build the DAG without any file present.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from offshelf.settings import Setting

IMAGENET_BACKBONES = ("adm128", "edm64", "dit256")
NUM_CLASSES = 1000
INCEPTION = "inception_cleanfid_legacy_tf"

# Registry names per backbone (offshelf.checkpoints.REGISTRY), and the reference batch by default.
BACKBONE_CHECKPOINTS: dict[str, dict[str, str]] = {
    "adm128": {"denoiser": "adm_imagenet128_cond_diffusion", "finetuned": "adm_imagenet128_classifier"},
    "edm64": {"denoiser": "edm_imagenet64_cond"},
    "dit256": {"denoiser": "dit_xl2_256"},
}
DEFAULT_REFERENCE = {"adm128": "ref_imagenet128", "edm64": "ref_imagenet64_edm", "dit256": "ref_imagenet256"}
# ADM's reference batches hold 10k images (arr_0) besides mu/sigma: precision/recall need them.
# EDM's fid-refs hold only mu/sigma.
REFERENCE_HAS_IMAGES = {"ref_imagenet128": True, "ref_imagenet256": True, "ref_imagenet64_edm": False}
ADM_PRESETS = BACKBONE_CHECKPOINTS["adm128"]


# --------------------------------------------------------------------------- planning (no I/O)

def classifier_checkpoint_name(network: str) -> str:
    """Registry name of the paper's weights for a torchvision architecture (``resnet101_v2``)."""
    from offshelf.checkpoints import REGISTRY

    name = f"{network}_v2"
    if name not in REGISTRY:
        raise ValueError(f"no pinned weights for off-the-shelf network {network!r}; "
                         f"known: {', '.join(k[:-3] for k in sorted(REGISTRY) if k.endswith('_v2'))}")
    return name


def reference_name(config: dict) -> str:
    return config.get("imagenet", {}).get("reference", DEFAULT_REFERENCE[config["backbone"]])


def cache_dir(config: dict) -> Path:
    from offshelf.checkpoints import default_cache_dir

    cache = config.get("checkpoints", {}).get("cache")
    return Path(os.path.expandvars(cache)).expanduser() if cache else default_cache_dir()


def checkpoint_path(config: dict, name: str) -> str:
    """Where the workflow finds checkpoint ``name``: its ``checkpoints.local`` path, else
    ``<cache>/<registry filename>`` (made by the ``fetch_checkpoint`` rule)."""
    from offshelf.checkpoints import get

    local = config.get("checkpoints", {}).get("local", {})
    if name in local:
        return str(Path(os.path.expandvars(local[name])).expanduser())
    return str(cache_dir(config) / get(name).filename)


def setting_checkpoints(config: dict, setting: Setting) -> dict[str, str]:
    """Role -> registry name of the networks a setting samples with."""
    backbone = config["backbone"]
    names = {"denoiser": BACKBONE_CHECKPOINTS[backbone]["denoiser"]}
    if setting.method == "guided":
        if setting.classifier in ("offshelf", "combined"):
            names["offshelf"] = classifier_checkpoint_name(setting.network or config["imagenet"]["classifier"])
        if setting.classifier in ("finetuned", "combined"):
            if "finetuned" not in BACKBONE_CHECKPOINTS[backbone]:
                raise ValueError(f"backbone {backbone!r} has no fine-tuned classifier; "
                                 f"setting {setting.name} needs one")
            names["finetuned"] = BACKBONE_CHECKPOINTS[backbone]["finetuned"]
    return names


def evaluation_checkpoints(config: dict) -> dict[str, str]:
    return {"inception": INCEPTION, "reference_stats": reference_name(config)}


def all_checkpoints(config: dict, settings: list[Setting], probes: list[Setting] = ()) -> list[str]:
    """Every registry name the jobs of this config read."""
    names = set(evaluation_checkpoints(config).values())
    for s in list(settings) + list(probes):
        names.update(setting_checkpoints(config, s).values())
    return sorted(names)


def file_checkpoints(files: dict[str, str], imagenet_cfg: dict, backbone: str, network: str | None = None) -> dict[str, str]:
    """Role -> registry name for the roles in ``files`` (what each file must verify as)."""
    names = dict(BACKBONE_CHECKPOINTS[backbone], inception=INCEPTION,
                 reference_stats=imagenet_cfg.get("reference", DEFAULT_REFERENCE[backbone]),
                 offshelf=classifier_checkpoint_name(network or imagenet_cfg.get("classifier", "resnet101")))
    return {role: names[role] for role in files if role in names}


def reference_has_images(config: dict) -> bool:
    return REFERENCE_HAS_IMAGES.get(reference_name(config), True)


# --------------------------------------------------------------------------- loading

def verified_files(files: dict[str, str], names: dict[str, str], checkpoints_cfg: dict | None) -> dict[str, str]:
    """Verify each role's file against its registry pins and the lock file (sha256 reused from
    the sidecar, so this is cheap after the first time); returns the same paths."""
    from offshelf.checkpoints import fetch

    cfg = checkpoints_cfg or {}
    return {role: str(fetch(names[role], lock_file=cfg.get("lock"), local_path=path)) if role in names else path
            for role, path in files.items()}


def _device(imagenet_cfg: dict) -> torch.device:
    device = torch.device(imagenet_cfg.get("device", "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config key 'imagenet.device' is 'cuda' but no CUDA device is visible; "
                           "set imagenet.device: cpu to run (slowly) on the CPU")
    return device


def _load_adm(path: str, preset_or_flags: str | dict, device: torch.device, fp16: bool) -> torch.nn.Module:
    """An ADM network from an official preset name, or from explicit guided-diffusion flags
    (small stand-ins in tests), loaded strictly."""
    from offshelf.backbones import adm

    if isinstance(preset_or_flags, str):
        return adm.load_adm(path, preset_or_flags, device, use_fp16=fp16).requires_grad_(False)
    model = adm.create_from_flags(preset_or_flags)
    model.load_state_dict(adm.read_state_dict(path), strict=True)
    model = model.to(device).eval().requires_grad_(False)
    if fp16 and device.type == "cuda":
        model.convert_to_fp16()
    return model


@dataclass
class EDMModels:
    net: torch.nn.Module
    offshelf: torch.nn.Module | None
    device: torch.device
    image_shape: tuple[int, int, int] = (3, 64, 64)
    num_classes: int = NUM_CLASSES


@dataclass
class DiTModels:
    model: torch.nn.Module
    vae: torch.nn.Module
    diffusion: Any
    offshelf: torch.nn.Module | None
    device: torch.device
    schedule: str = "adm"
    num_classes: int = NUM_CLASSES

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.model.in_channels, self.model.latent_size, self.model.latent_size)


def load_models(backbone: str, files: dict[str, str], imagenet_cfg: dict, sampling_cfg: dict,
                network: str | None = None, adm: dict[str, str | dict] | None = None):
    """The networks of one job. ``files``: role -> path (``denoiser``; ``offshelf`` and
    ``finetuned`` when the setting uses them). ``network``: the torchvision architecture of the
    ``offshelf`` file (default ``imagenet_cfg['classifier']``). ``adm``: role -> ADM preset name or
    guided-diffusion flags, overriding :data:`ADM_PRESETS` (tests use tiny networks).

    Returns :class:`offshelf.experiment.Models` for ``adm128``, :class:`EDMModels` for ``edm64``,
    :class:`DiTModels` for ``dit256``."""
    from offshelf.classifiers.zoo import load_classifier
    from offshelf.diffusion import GaussianDiffusion
    from offshelf.experiment import Models

    if backbone not in IMAGENET_BACKBONES:
        raise ValueError(f"backbone {backbone!r}: expected one of {', '.join(IMAGENET_BACKBONES)}")
    if "denoiser" not in files:
        raise ValueError(f"load_models({backbone!r}): files must name a 'denoiser', got roles {sorted(files)}")
    device = _device(imagenet_cfg)
    fp16 = bool(imagenet_cfg.get("fp16", True))
    network = network or imagenet_cfg.get("classifier", "resnet101")
    offshelf = None
    if "offshelf" in files:
        offshelf = load_classifier(network, weights_path=files["offshelf"]).to(device)

    if backbone == "adm128":
        presets = {**ADM_PRESETS, **(adm or {})}
        denoiser = _load_adm(files["denoiser"], presets["denoiser"], device, fp16)
        finetuned = _load_adm(files["finetuned"], presets["finetuned"], device, fp16) if "finetuned" in files else None
        diffusion = GaussianDiffusion.respaced(1000, sampling_cfg["respacing"], "linear",
                                               sampling_cfg.get("variance", "learned_range"))
        size = denoiser.image_size
        return Models(denoiser, diffusion, (3, size, size), NUM_CLASSES, offshelf, finetuned, None, str(device))
    if backbone == "edm64":
        from offshelf.backbones.edm import load_edm_pickle

        net = load_edm_pickle(files["denoiser"], device=device)
        return EDMModels(net, offshelf, device, (net.img_channels, net.img_resolution, net.img_resolution),
                         net.label_dim)
    from offshelf.backbones.dit import DiTDenoiser, load_dit, load_vae
    from offshelf.samplers.dit import dit_diffusion

    model = DiTDenoiser(load_dit(files["denoiser"], device=device))
    vae = load_vae(imagenet_cfg.get("vae", "stabilityai/sd-vae-ft-ema"), device=device)
    return DiTModels(model, vae, dit_diffusion(sampling_cfg["respacing"]), offshelf, device,
                     imagenet_cfg.get("dit_schedule", "adm"), model.num_classes)


# --------------------------------------------------------------------------- sampling

def edm_to_uint8_nhwc(x: torch.Tensor) -> np.ndarray:
    """EDM's ``generate.py``: ``(x·127.5 + 128).clip(0, 255)`` truncated to uint8, NHWC."""
    return (x * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _offshelf_guidance(setting: Setting, classifier, input_kind: str):
    from offshelf.classifiers.softplus import softplus_surgery
    from offshelf.guidance import ClassifierGuidance

    if setting.method != "guided":
        return None
    if setting.classifier != "offshelf" or classifier is None:
        raise ValueError(f"setting {setting.name}: this backbone guides with the off-the-shelf classifier only "
                         f"(classifier: offshelf, with its weights file)")
    return ClassifierGuidance(softplus_surgery(classifier, setting.softplus_beta), setting.joint_temperature,
                              setting.marginal_temperature, input_kind)


def edm_batch(setting: Setting, models: EDMModels, seeds: list[int], progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 2 for one batch: labels drawn per seed, latents from per-seed generators, N =
    ``setting.num_steps`` (18 if 0), w_max = ``setting.scale``, γ = ``setting.sine_factor``."""
    from offshelf.experiment import draw_labels
    from offshelf.samplers.edm import edm_sample
    from offshelf.seeding import StackedRandomGenerator

    if setting.method == "cfg":
        raise ValueError(f"setting {setting.name}: EDM's ImageNet model is not trained for classifier-free guidance")
    labels = draw_labels(seeds, models.num_classes).to(models.device)
    rng = StackedRandomGenerator(seeds, models.device)
    latents = rng.randn(models.image_shape)
    one_hot = torch.nn.functional.one_hot(labels, models.num_classes).float()
    guidance = _offshelf_guidance(setting, models.offshelf, "xt")
    x = edm_sample(models.net, latents, one_hot, num_steps=setting.num_steps or 18, guidance=guidance,
                   max_guidance=setting.scale if guidance is not None else 0.0,
                   sine_factor=setting.sine_factor, rng=rng, progress=progress)
    return x, labels


def dit_batch(setting: Setting, models: DiTModels, seeds: list[int], progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 3 for one batch: CFG scale ``setting.cfg_scale`` (method ``cfg``: the DiT
    baseline; ``guided``: plus off-the-shelf guidance through the VAE decoder)."""
    from offshelf.experiment import draw_labels
    from offshelf.samplers.dit import dit_sample
    from offshelf.seeding import StackedRandomGenerator

    labels = draw_labels(seeds, models.num_classes).to(models.device)
    rng = StackedRandomGenerator(seeds, models.device)
    cfg_scale = 1.0 if setting.method == "unguided" else setting.cfg_scale
    x = dit_sample(models.model, models.vae, models.diffusion, rng, models.latent_shape, labels, cfg_scale=cfg_scale,
                   guidance=_offshelf_guidance(setting, models.offshelf, "x0"), scale=setting.scale,
                   sine_factor=setting.sine_factor, schedule=models.schedule, progress=progress)
    return x, labels


def sample_shard(setting: Setting, models, seeds: list[int], batch_size: int,
                 progress: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """uint8 NHWC images, labels and wall seconds of one shard, for any backbone's models."""
    from offshelf import experiment
    from offshelf.backbones.digits import to_uint8_nhwc

    if isinstance(models, experiment.Models):
        return experiment.sample_shard(setting, models, seeds, batch_size, progress)
    batch_fn, to_uint8 = {EDMModels: (edm_batch, edm_to_uint8_nhwc), DiTModels: (dit_batch, to_uint8_nhwc)}[type(models)]
    start = time.perf_counter()
    images, labels = [], []
    for i in range(0, len(seeds), batch_size):
        x, y = batch_fn(setting, models, seeds[i:i + batch_size], progress)
        images.append(to_uint8(x))
        labels.append(y.cpu().numpy())
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return np.concatenate(images), np.concatenate(labels).astype(np.int64), time.perf_counter() - start


# --------------------------------------------------------------------------- evaluation

def _inception(inception_path, imagenet_cfg: dict) -> Callable:
    from offshelf.metrics import inception_feature_fn

    mode = imagenet_cfg.get("fid_mode", "legacy_tensorflow")
    return inception_feature_fn(mode, inception_path, _device(imagenet_cfg))


def reference_image_features(reference_path, inception_path, imagenet_cfg: dict) -> dict[str, np.ndarray]:
    """Inception features of the reference batch's images (``arr_0``): precision/recall's real set."""
    from offshelf.metrics import extract_features, load_samples

    images, _ = load_samples(reference_path, require_labels=False)
    features = extract_features(images, _inception(inception_path, imagenet_cfg), imagenet_cfg.get("batch_size", 200))
    return {"features": features}


def evaluate_imagenet(shard_paths: list[str], inception_path, reference_stats_path, reference_features_path,
                      imagenet_cfg: dict, nhood_size: int = 3, num_samples: int | None = None) -> dict[str, Any]:
    """FID against the reference batch's ``mu``/``sigma``; precision/recall against its images'
    features when there are any (else NaN); the shards' summed sampling time. No accuracy (see
    the module docstring)."""
    from offshelf.experiment import load_shards
    from offshelf.metrics import evaluate, load_reference_stats

    images, labels, seconds = load_shards(shard_paths, num_samples)
    stats = load_reference_stats(reference_stats_path, expected_dim=2048)
    reference = None
    if reference_features_path:
        with np.load(reference_features_path) as ref:
            reference = ref["features"]
    result = evaluate(images, labels, _inception(inception_path, imagenet_cfg), reference_stats=stats,
                      reference_features=reference, batch_size=imagenet_cfg.get("batch_size", 200),
                      nhood_size=nhood_size, device=_device(imagenet_cfg))
    result["seconds"] = seconds
    return result


# --------------------------------------------------------------------------- report

__all__ = ["load_models", "sample_shard", "edm_batch", "dit_batch", "EDMModels", "DiTModels", "evaluate_imagenet",
           "reference_image_features", "setting_checkpoints", "evaluation_checkpoints",
           "all_checkpoints", "checkpoint_path", "cache_dir", "reference_has_images", "verified_files"]
