"""CLIP-guided text-to-image generation with an unconditional ADM (paper Sec. 5.4, Fig. 7).

CLIP enters Algorithm 1 as an ordinary off-the-shelf classifier over the K prompts
(:class:`~offshelf.classifiers.clip.CLIPPromptClassifier`), with τ1 = 1 and τ2 = 0, so each step
adds ``(Σ_t + max(γ·sin(πt/T)·Σ_max, 0)) · s · ∇_{x̂0} s_clip·cos(E(x̂0), E(prompt))`` to the
posterior mean: γ = 0 is the original linear (Σ_t) schedule, γ > 0 the paper's sine schedule.

CLI: ``offshelf text2image --config config/clip_text2image.yaml`` writes, under the
config's ``outdir``: one PNG grid per run and prompt, ``clip_scores.csv`` (tidy, one row per
run × prompt × seed × step), ``timings.csv`` (wall time per run) and ``clip_score_vs_step.png``
(Figure 7: mean CLIP score of x̂0 along the trajectory, one line per run).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from offshelf.extras import needs

needs(__name__, "pandas")  # offshelf[workflow]
import pandas as pd
import torch

from offshelf import images as images_io
from offshelf.atomic import save_csv
from offshelf.images import to_uint8_nhwc
from offshelf.classifiers.clip import CLIPPromptClassifier, clip_score, load_clip
from offshelf.diffusion import GaussianDiffusion
from offshelf.guidance import ClassifierGuidance, Guidance
from offshelf.samplers.ddpm import ddpm_sample
from offshelf.seeding import StackedRandomGenerator

SCORE_COLUMNS = ["schedule", "prompt", "seed", "step", "iteration", "clip_score"]


def clip_guidance(clip_classifier: CLIPPromptClassifier) -> ClassifierGuidance:
    """``∇_{x̂0} s·cos(E(x̂0), E(prompt_y))``: τ1 = 1, τ2 = 0 drops the marginal (constant log K)."""
    return ClassifierGuidance(clip_classifier, joint_temperature=1.0, marginal_temperature=0.0, input="x0")


def _seed_list(seeds: int | Sequence[int], count: int) -> list[int]:
    if isinstance(seeds, (int, np.integer)):
        return list(range(int(seeds), int(seeds) + count))
    seeds = [int(s) for s in seeds]
    if len(seeds) != count:
        raise ValueError(f"need one seed per image ({count} = prompts × n_per_prompt), got {len(seeds)}")
    return seeds


def generate(model, diffusion: GaussianDiffusion, clip_classifier: CLIPPromptClassifier, prompts: Sequence[str],
             n_per_prompt: int, seeds: int | Sequence[int], scale: float, sine_factor: float,
             recurrent_steps: int = 1, image_size: int = 256, schedule: str | None = None,
             batch_size: int | None = None, device: str | torch.device = "cpu",
             progress: bool = False) -> tuple[torch.Tensor, pd.DataFrame]:
    """Sample ``n_per_prompt`` images per prompt, each guided toward its own prompt.

    ``model(x, t, None)`` is the unconditional denoiser; ``seeds`` an int (image i of the
    prompt-major order gets ``seeds + i``) or one seed per image, so an image does not depend on
    ``batch_size`` (default: all images in one batch). Returns the images in [−1, 1]
    (prompt-major, ``K·n × 3 × H × W``) and the tidy per-step table ``SCORE_COLUMNS``, where
    ``clip_score = 100·cos(E(x̂0_t), E(prompt))`` of the x̂0 the guidance saw at step t and
    ``iteration = T−1−t`` counts sampling progress.
    """
    if list(prompts) != clip_classifier.prompts:
        raise ValueError(f"prompts {list(prompts)} differ from the CLIP classifier's {clip_classifier.prompts}")
    if n_per_prompt < 1:
        raise ValueError(f"n_per_prompt must be >= 1, got {n_per_prompt}")
    schedule = schedule or ("sine" if sine_factor > 0 else "linear")
    all_seeds = _seed_list(seeds, len(prompts) * n_per_prompt)
    all_labels = torch.arange(len(prompts), device=device).repeat_interleave(n_per_prompt)
    batch_size = batch_size or len(all_seeds)
    guidance = clip_guidance(clip_classifier)
    T = diffusion.num_steps
    images, rows = [], []
    for start in range(0, len(all_seeds), batch_size):
        batch_seeds = all_seeds[start:start + batch_size]
        labels = all_labels[start:start + batch_size]

        def record(step, logits, **_):
            scores = clip_score(logits, labels, clip_classifier.logit_scale).tolist()
            rows.extend((schedule, prompts[k], seed, step, T - 1 - step, score)
                        for k, seed, score in zip(labels.tolist(), batch_seeds, scores))

        rng = StackedRandomGenerator(batch_seeds, device)
        guided = Guidance(guidance, scale=scale, sine_factor=sine_factor, label=labels)
        images.append(ddpm_sample(model, rng, diffusion, guidance=guided, callback=record, progress=progress,
                                  shape=(3, image_size, image_size), y=None, recurrent_steps=recurrent_steps))
    return torch.cat(images), pd.DataFrame(rows, columns=SCORE_COLUMNS)


def save_grid(images: torch.Tensor, path: str | os.PathLike, ncol: int | None = None) -> Path:
    """Write images in [−1, 1] as one PNG grid, converted as ADM (the backbone) writes its samples."""
    return images_io.save_grid(to_uint8_nhwc(images, "adm"), path, ncol)


def plot_clip_scores(scores: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Figure 7: CLIP score of x̂0 (mean over prompts and seeds, ±1 s.d. band) vs sampling step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=150)
    for name, group in scores.groupby("schedule", sort=False):
        stats = group.groupby("iteration")["clip_score"].agg(["mean", "std"]).fillna(0.0)
        ax.plot(stats.index, stats["mean"], label=name)
        ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.15)
    ax.set_xlabel("sampling step")
    ax.set_ylabel("CLIP score (100·cos)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    from offshelf.figures import save_figure

    save_figure(fig, path)
    return path


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "prompt"


# ---------------------------------------------------------------------------------------------
# Config and CLI

@dataclass
class Run:
    """One sampling setting of the comparison: linear (γ = 0), sine (γ > 0), or recurrent (r > 1)."""

    name: str
    sine_factor: float
    recurrent_steps: int = 1


_CONFIG_KEYS = {
    "prompts": list, "n_per_prompt": int, "batch_size": int, "seed": int, "outdir": str, "device": str,
    "diffusion": dict, "clip": dict, "guidance": dict, "runs": list,
}
_SECTION_KEYS = {
    # preset: an official guided-diffusion preset name (also its registry name), or the
    # guided-diffusion flags of the network (create_model keywords: stand-ins, own checkpoints)
    "diffusion": {"preset": (str, dict), "checkpoint": str, "url": str, "num_train_steps": int, "noise_schedule": str,
                  "timestep_respacing": str, "image_size": int, "use_fp16": bool},
    "clip": {"model": str, "pretrained": (str, type(None)), "cache_dir": (str, type(None))},  # None: local-dir:/hf-hub:
    "guidance": {"scale": (int, float)},
}
# Keys a section may leave out. diffusion.checkpoint_name: the registry name of the file to fetch
# when diffusion.checkpoint is absent (default: the preset, when the preset is a name).
_OPTIONAL_KEYS = {"diffusion": {"checkpoint_name": str}}
_RUN_KEYS = {"name": str, "sine_factor": (int, float), "recurrent_steps": int}


def _check_keys(where: str, given: Mapping[str, Any], expected: Mapping[str, Any],
                optional: Mapping[str, Any] | None = None) -> None:
    if not isinstance(given, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(given).__name__}")
    optional = optional or {}
    unknown = sorted(set(given) - set(expected) - set(optional))
    missing = sorted(set(expected) - set(given))
    if unknown or missing:
        raise ValueError(f"{where}: unknown keys {unknown}, missing keys {missing}; expected {sorted(expected)}"
                         + (f" (optional: {sorted(optional)})" if optional else ""))
    for key, kind in {**expected, **{k: v for k, v in optional.items() if k in given}}.items():
        value = given[key]
        if isinstance(value, bool) and kind is not bool:
            raise ValueError(f"{where}.{key}: expected {kind}, got a boolean")
        if not isinstance(value, kind):
            raise ValueError(f"{where}.{key}: expected {kind}, got {value!r}")


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate the text-to-image YAML; errors name the file and the key."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    cfg = yaml.safe_load(path.read_text())
    _check_keys(str(path), cfg, _CONFIG_KEYS)
    for section, keys in _SECTION_KEYS.items():
        _check_keys(f"{path}:{section}", cfg[section], keys, _OPTIONAL_KEYS.get(section))
    for i, run in enumerate(cfg["runs"]):
        _check_keys(f"{path}:runs[{i}]", run, _RUN_KEYS)
    if not cfg["prompts"] or not all(isinstance(p, str) for p in cfg["prompts"]):
        raise ValueError(f"{path}:prompts must be a non-empty list of strings")
    return cfg


def diffusion_checkpoint(cfg: Mapping[str, Any], checkpoints: Mapping[str, Any] | None = None,
                         where: str = "text2image config") -> str:
    """The diffusion checkpoint's path: ``diffusion.checkpoint`` where that file exists (placed by
    hand), else the verified registry copy of ``diffusion.checkpoint_name`` (default: the preset's
    name) fetched with the workflow's ``checkpoints`` section (cache, lock, offline, registry)."""
    from offshelf.checkpoints import fetch

    d = cfg["diffusion"]
    if os.path.isfile(d["checkpoint"]):
        return d["checkpoint"]
    name = d.get("checkpoint_name", d["preset"] if isinstance(d["preset"], str) else None)
    if name is None:
        raise ValueError(f"{where}: diffusion.checkpoint {d['checkpoint']} does not exist and diffusion.preset is "
                         f"flags, not a registry name: set diffusion.checkpoint_name to the file's registry name")
    c = checkpoints or {}
    return str(fetch(name, cache_dir=c.get("cache"), lock_file=c.get("lock"), offline=bool(c.get("offline", False)),
                     registry_file=c.get("registry")))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_config(cfg: Mapping[str, Any], outdir: str | os.PathLike | None = None, device: str | None = None,
               n_per_prompt: int | None = None, progress: bool = True) -> dict[str, Path]:
    """Every run of the config: grids, ``clip_scores.csv``, ``timings.csv``, the Figure-7 plot."""
    d, c = cfg["diffusion"], cfg["clip"]
    outdir = Path(outdir or cfg["outdir"])
    device = torch.device(device or cfg["device"])
    n = n_per_prompt or cfg["n_per_prompt"]
    if not os.path.isfile(d["checkpoint"]):
        raise FileNotFoundError(f"diffusion.checkpoint {d['checkpoint']} does not exist; download it from "
                                f"{d['url']}")
    from offshelf.backends.adm128 import load_adm_network  # the ADM port, needed only here

    # preset name or guided-diffusion flags, loaded strictly as the adm128 backend loads its UNet
    model = load_adm_network(d["checkpoint"], d["preset"], device, d["use_fp16"])
    diffusion = GaussianDiffusion.respaced(d["num_train_steps"], d["timestep_respacing"], d["noise_schedule"],
                                           "learned_range")
    clip_model, tokenizer = load_clip(c["model"], c["pretrained"], cache_dir=c["cache_dir"], device=device)
    classifier = CLIPPromptClassifier(clip_model, tokenizer, cfg["prompts"])
    return run_comparison(model, diffusion, classifier, cfg, outdir, device, n, progress)


def run_comparison(model, diffusion: GaussianDiffusion, classifier: CLIPPromptClassifier, cfg: Mapping[str, Any],
                   outdir: str | os.PathLike, device: str | torch.device, n_per_prompt: int,
                   progress: bool = False) -> dict[str, Path]:
    """The config's runs from the same seeds; writes ``{run}/{prompt}.png``, ``clip_scores.csv``,
    ``timings.csv`` and ``clip_score_vs_step.png`` under ``outdir``."""
    outdir, device, n = Path(outdir), torch.device(device), n_per_prompt
    tables, timings, written = [], [], {}
    for run in (Run(**r) for r in cfg["runs"]):
        _sync(device)
        start = time.perf_counter()
        images, scores = generate(model, diffusion, classifier, cfg["prompts"], n, cfg["seed"],
                                  cfg["guidance"]["scale"], run.sine_factor, run.recurrent_steps,
                                  image_size=cfg["diffusion"]["image_size"], schedule=run.name,
                                  batch_size=cfg["batch_size"], device=device, progress=progress)
        _sync(device)
        wall = time.perf_counter() - start
        timings.append(dict(schedule=run.name, sine_factor=run.sine_factor, recurrent_steps=run.recurrent_steps,
                            images=len(images), steps=diffusion.num_steps, wall_s=wall,
                            s_per_image=wall / len(images), device=str(device)))
        tables.append(scores)
        for k, prompt in enumerate(cfg["prompts"]):
            grid = save_grid(images[k * n:(k + 1) * n], outdir / run.name / f"{slug(prompt)}.png")
            written[f"{run.name}/{prompt}"] = grid
        final = scores[scores.step == 0].clip_score.mean()
        print(f"{run.name}: {len(images)} images in {wall:.1f} s, final CLIP score {final:.2f}", flush=True)
    scores = pd.concat(tables, ignore_index=True)
    written["clip_scores"] = save_csv(outdir / "clip_scores.csv", scores)
    written["timings"] = save_csv(outdir / "timings.csv", pd.DataFrame(timings))
    written["figure"] = plot_clip_scores(scores, outdir / "clip_score_vs_step.png")
    return written
