"""Rehearsal configs, generated from the real ones (issue 12, part 1).

``rehearsal_config(name, tmp, base_url, standins_dir)`` reads ``config/<name>.yaml`` and keeps
every table, row, base, figure and rule; only sizes shrink (:data:`SIZES`): a few samples, a few
steps, a tiny calibration set, the CPU. The networks are the stand-ins of
:mod:`rehearsal.standins`, downloaded by the workflow's own ``fetch_checkpoint`` jobs from the
local server through a registry override file (:func:`registry_overrides`): the real registry's
names, the stand-ins' URLs, file names and hashes.

``text2image_config(tmp, standins_dir)`` does the same for ``config/clip_text2image.yaml``.

Generated, never written by hand, so a row added to a real config is rehearsed without anyone
remembering to add it here.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from rehearsal import standins

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ("imagenet128_ddpm", "imagenet64_edm", "imagenet256_dit")

# What shrinks, per config. Every setting samples `num_samples` seeds in one shard; tables that
# evaluate fewer samples than a setting gets in the real config (the ablations: 10k of 50k) keep
# doing so (`ablation_samples` of `num_samples`), so their "+n" metrics files and partly read
# shards are rehearsed too. Four samples is the least precision/recall take (k = 3 neighbours).
SIZES: dict[str, dict[str, Any]] = {
    "imagenet128_ddpm": dict(num_samples=5, ablation_samples=4, respacing="2", batch_size=5, calibration=2),
    # EDM's rows are Heun step counts (10/18/36, Table C.1's stochastic 256): each N becomes a small
    # distinct N, so the four baseline/guided pairs stay eight distinct settings (see EDM_STEPS).
    "imagenet64_edm": dict(num_samples=4, ablation_samples=4, batch_size=4),
    "imagenet256_dit": dict(num_samples=4, ablation_samples=4, respacing="2", batch_size=4),
}
# The paper's Heun step counts -> the rehearsal's: affordable on 2 CPU cores (each Heun step is
# two network calls and, guided, two ResNet-101 backward passes), and still distinct and ordered.
# Table C.1's churn values are kept: with S_churn 40 at 5 steps, γ_i is capped at √2 − 1 where
# S_min ≤ t_i ≤ S_max, so the rehearsal's stochastic rows do churn.
EDM_STEPS = {10: 2, 18: 3, 36: 4, 256: 5}


def registry_overrides(standins_dir: Path, base_url: str, out_path: Path) -> Path:
    """The stand-ins' ``registry.yaml`` in ``checkpoints.load_registry_overrides``'s format:
    ``{registry name: {url, filename, sha256, size, hash_prefix}}`` for every stand-in under a real
    registry name (the VAE and CLIP folders are not registry files: configs point at them)."""
    entries = yaml.safe_load((standins_dir / "registry.yaml").read_text())["checkpoints"]
    overrides = {}
    for e in entries:
        if not e["registered"]:
            continue
        overrides[e["name"]] = {
            "url": standins.registry_url(e, base_url), "filename": e["filename"], "sha256": e["sha256"],
            "size": e["size"],
            # the hub-named ResNets carry their own prefix; null drops the real file's prefix pin
            "hash_prefix": e.get("hash_prefix")}
    out_path.write_text(yaml.safe_dump(overrides, sort_keys=True, width=200))
    return out_path


def _manifest(standins_dir: Path) -> dict:
    return json.loads((standins_dir / "manifest.json").read_text())


def shrink(name: str, config: dict, tmp: Path, standins_dir: Path, registry: Path) -> dict:
    """``config`` (a real config, parsed) with only its sizes shrunk and its files pointed at the
    stand-ins. Tables, rows, bases, regimes, scale grids and figures are untouched."""
    if name not in SIZES:
        raise ValueError(f"no rehearsal sizes for config {name!r}; known: {', '.join(SIZES)}")
    size, manifest = SIZES[name], _manifest(standins_dir)
    cfg = copy.deepcopy(config)
    cfg["results"] = str(tmp / "results")
    cfg["threads_per_job"] = 1  # two cores, two jobs at a time
    cfg["checkpoints"] = {"cache": str(tmp / "cache"), "registry": str(registry), "lock": str(tmp / "lock.json"),
                          "offline": False, "local": {}}
    imagenet = cfg["imagenet"]
    imagenet["device"] = "cpu"
    imagenet["batch_size"] = 16  # Inception batches; the stand-in is tiny
    if name == "imagenet128_ddpm":
        imagenet["adm_flags"] = {"denoiser": manifest["adm_imagenet128_cond_diffusion"]["flags"],
                                 "finetuned": manifest["adm_imagenet128_classifier"]["flags"]}
    if name == "imagenet256_dit":
        imagenet["vae"] = str(standins_dir / manifest["vae_sd_ft_ema"]["folder"])

    sampling = cfg["sampling"]
    sampling.update(num_samples=size["num_samples"], shard_size=size["num_samples"], batch_size=size["batch_size"])
    if "respacing" in sampling:
        sampling["respacing"] = size["respacing"]
    if cfg.get("calibration"):
        cfg["calibration"]["num_samples"] = size["calibration"]
    full = config["sampling"]["num_samples"]
    if "pareto" in cfg:  # one row of each kind of method (the plumbing, not the numbers): Best-of-4/8
        # and r = 3 repeat Best-of-2's and r = 2's code at 2-4x their cost, which the CI budget cannot carry
        cfg["pareto"]["rows"] = [row for row in cfg["pareto"]["rows"]
                                 if row.get("num_candidates", 2) <= 2 and row.get("recurrent_steps", 2) <= 2]
    for table in [*cfg["tables"].values(), *([cfg["pareto"]] if "pareto" in cfg else [])]:
        if "num_samples" in table:  # fewer than all: keep it fewer
            table["num_samples"] = size["ablation_samples"] if table["num_samples"] < full else size["num_samples"]
        for row in table["rows"]:
            if "num_steps" in row:
                if row["num_steps"] not in EDM_STEPS:
                    raise ValueError(f"{name}: row {row['label']!r} num_steps {row['num_steps']} has no rehearsal "
                                     f"step count (EDM_STEPS)")
                row["num_steps"] = EDM_STEPS[row["num_steps"]]
    if "respacing" in sampling:
        _shrink_switch_steps(cfg, int(config["sampling"]["respacing"]), int(size["respacing"]))
    for figure in cfg.get("figures", {}).values():  # Figure 4's steps must exist in the short schedule
        if "steps" in figure:
            figure["steps"] = sorted({min(s, int(size["respacing"]) - 1) for s in figure["steps"]})
    return cfg


def _shrink_switch_steps(cfg: dict, steps: int, shrunk: int) -> None:
    """Table 2's "ResNet & fine-tuned" switches classifiers at a spaced step (50 of 250: the last
    fifth). Kept at 50 in a 2-step schedule, every step would be below it and the row would
    rehearse the fine-tuned classifier alone; scaled to the short schedule (at least 1), its
    first step uses the ResNet and its last the fine-tuned classifier, as in the real run. The
    probe names that carry it (``..._sw50``, Figure 1) follow."""
    from offshelf.settings import Setting

    renamed = {}
    tables = [*cfg["tables"].values(), *([cfg["pareto"]] if "pareto" in cfg else [])]
    for entry in [*cfg.get("bases", {}).values(), *(r for t in tables for r in t["rows"])]:
        base = cfg.get("bases", {}).get(entry.get("base"), {})
        if entry.get("classifier", base.get("classifier")) != "combined":
            continue
        old = entry.get("switch_step", base.get("switch_step", Setting.switch_step))
        entry["switch_step"] = max(1, round(old * shrunk / steps))
        renamed[f"_sw{old}"] = f"_sw{entry['switch_step']}"
    for figure in cfg.get("figures", {}).values():
        if "probes" in figure:
            figure["probes"] = [next((p[:-len(o)] + n for o, n in renamed.items() if p.endswith(o)), p)
                                for p in figure["probes"]]


def rehearsal_config(name: str, tmp: Path, base_url: str, standins_dir: Path) -> Path:
    """Write the rehearsal config of ``config/<name>.yaml`` (and its registry overrides) under
    ``tmp``; returns the config file."""
    tmp.mkdir(parents=True, exist_ok=True)
    registry = registry_overrides(standins_dir, base_url, tmp / "registry_overrides.yaml")
    real = yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(shrink(name, real, tmp, standins_dir, registry), sort_keys=False, width=200))
    return path


def text2image_config(tmp: Path, base_url: str, standins_dir: Path) -> tuple[Path, Path]:
    """``config/clip_text2image.yaml`` shrunk (one image per prompt, 2 respaced steps, CPU), its
    ADM-256 given as the stand-in's guided-diffusion flags (fetched from the server by its registry
    name) and CLIP as the stand-in's open_clip folder. Returns (text2image config, workflow config
    naming it: the ImageNet-128 rehearsal config, whose checkpoints section the job fetches with)."""
    tmp.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(standins_dir)
    registry = registry_overrides(standins_dir, base_url, tmp / "registry_overrides.yaml")
    cfg = yaml.safe_load((ROOT / "config" / "clip_text2image.yaml").read_text())
    cfg.update(n_per_prompt=1, batch_size=2, device="cpu", outdir=str(tmp / "unused"))
    diffusion = cfg["diffusion"]
    diffusion["checkpoint_name"] = diffusion["preset"]  # the registry file the flags describe
    diffusion["preset"] = manifest["adm_imagenet256_uncond_diffusion"]["flags"]
    diffusion["checkpoint"] = str(tmp / "not-placed-by-hand.pt")  # absent: the job fetches it
    diffusion["timestep_respacing"] = "2"
    cfg["clip"].update(model=f"local-dir:{standins_dir / manifest['clip_text2image']['folder']}", pretrained=None)
    path = tmp / "clip_text2image.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, width=200))
    # The workflow config around the text2image job: the ImageNet-128 rehearsal's (digits configs
    # take no checkpoints section), whose cache and registry overrides the job fetches ADM-256 with.
    real = yaml.safe_load((ROOT / "config" / "imagenet128_ddpm.yaml").read_text())
    workflow = shrink("imagenet128_ddpm", real, tmp, standins_dir, registry)
    workflow["text2image_config"] = str(path)
    overrides = tmp / "workflow.yaml"
    overrides.write_text(yaml.safe_dump(workflow, sort_keys=False, width=200))
    return path, overrides
