"""The paper's Figure 7 on a diffusers text-to-image pipeline: the CLIP score of the decoded x̂0 at
every sampling step, unguided vs CLIP guidance with the linear (γ = 0) and the sine (γ > 0)
schedule, with bootstrap intervals over the images (prompts × seeds). docs/diffusers.md
("Figure 7 on a diffusers pipeline"); the workflow target ``text2image_diffusers``; its config
is read by :func:`offshelf.config.load_text2image_diffusers_config` (the schema
``offshelf/schemas/text2image_diffusers.schema.yaml``), as ``offshelf check-config`` reads it.

Every run renders the same images (prompt p, seed s: its own ``torch.Generator(device)
.manual_seed(s)``) through ``offshelf.guide(pipe, "clip", scale=..., sine_factor=...)``; a run
with scale 0 is the pipeline's own output, bitwise. At each step the guided denoiser's observer
(``guide(..., observe=)``) hands over x̂0 as the pipeline integrates it (after its CFG and
``guidance_rescale``, before the guidance's correction); it is decoded with the pipeline's VAE and
scored as ``100·cos(CLIP(image), CLIP(its prompt))`` by the same CLIP that guides. Outputs under
``outdir``:

* ``clip_scores.csv`` -- one row per run × prompt × seed × step (``SCORE_COLUMNS``);
* ``clip_score_per_step.csv`` -- one row per run × step: the mean over the images and its
  percentile bootstrap interval (images resampled with replacement, the same resamples for every
  run and step: :func:`offshelf.statistics.resample_indices`);
* ``clip_score_vs_step.png`` -- the curves with their interval bands;
* ``images/<run>/<prompt>_seed<seed>.png`` and ``grids/<run>.png`` (a row per prompt, a column
  per seed);
* ``summary.json`` -- the config, the pipeline and scheduler classes, versions, wall time per run
  and the final step's paired differences against the first run.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from offshelf import statistics

SCORE_COLUMNS = ["run", "prompt", "seed", "step", "clip_score"]
SUMMARY_COLUMNS = ["run", "step", "clip_score", "lo", "hi", "images"]
#: ``intervals`` where a config leaves it out (its keys are read by offshelf.config's check as well)
DEFAULT_INTERVALS = {"num_resamples": 1000, "level": statistics.LEVEL}


# ---------------------------------------------------------------------------------------------
# Loading

def load_pipeline(spec: Mapping[str, Any], device: str):
    """The pipeline of ``spec`` (``pipeline`` section) on ``device``, its progress bar off."""
    import diffusers

    dtype = getattr(torch, spec.get("dtype", "float32"))
    options = {"torch_dtype": dtype}  # diffusers >= 0.30 (the extra); newer ones warn and accept it
    if spec.get("variant"):
        options["variant"] = spec["variant"]
    if spec.get("vae"):
        options["vae"] = diffusers.AutoencoderKL.from_pretrained(spec["vae"], torch_dtype=dtype)
    pipe = diffusers.DiffusionPipeline.from_pretrained(spec["id"], **options)
    if spec.get("scheduler"):
        scheduler = getattr(diffusers, spec["scheduler"], None)
        if scheduler is None:
            raise ValueError(f"pipeline.scheduler = {spec['scheduler']!r}: not a diffusers scheduler class")
        pipe.scheduler = scheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_scorer(spec: Mapping[str, Any], device: str):
    """``(open_clip model, tokenizer)`` of the ``clip`` section, on ``device``."""
    from offshelf.classifiers.clip import load_clip

    return load_clip(spec["model"], spec["pretrained"], cache_dir=spec.get("cache_dir"), device=torch.device(device))


def _decoder(guidance: Mapping[str, Any], pipe):
    decoder = guidance.get("decoder", "vae")
    if decoder in ("vae", "tiny"):
        return decoder
    import diffusers

    return diffusers.AutoencoderTiny.from_pretrained(decoder, torch_dtype=pipe.vae.dtype).to(pipe.vae.device)


# ---------------------------------------------------------------------------------------------
# Running

def _call_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    sampling = cfg["sampling"]
    options = {k: sampling[k] for k in ("num_inference_steps", "guidance_scale", "guidance_rescale", "height", "width")
               if k in sampling}
    return options


def render_run(pipe, clip, cfg: Mapping[str, Any], run: Mapping[str, Any]) -> tuple[list, list[tuple]]:
    """One run over every (prompt, seed): ``(PIL images, score rows)``, images in the order
    seed-major (all prompts for the first seed, then the next), rows as :data:`SCORE_COLUMNS`."""
    import offshelf
    from offshelf.classifiers.clip import CLIPPromptClassifier, clip_score
    from offshelf.guidance import check_finite

    prompts, seeds, device = list(cfg["prompts"]), list(cfg["seeds"]), cfg["device"]
    model, tokenizer = clip
    scorer = CLIPPromptClassifier(model, tokenizer, prompts)
    guidance = cfg["guidance"]
    items = [(k, seed) for seed in seeds for k in range(len(prompts))]
    batch_size = cfg.get("batch_size", len(items))
    rows: list[tuple] = []
    current: dict[str, Any] = {}

    def observe(step, pred_xstart, decode):
        labels = current["labels"]
        images = decode(pred_xstart).to(next(scorer.buffers()).device)
        scores = clip_score(scorer(images), labels, scorer.logit_scale)
        # a NaN stops the run here, at its step (an fp16 VAE overflowing is the usual cause)
        check_finite(f"run {run['name']}: CLIP score of the decoded x̂0 (fp16 VAE overflow? set pipeline.vae to an "
                     "fp16-safe VAE or pipeline.dtype: float32)", scores, step)
        scores = scores.tolist()
        rows.extend((run["name"], prompts[k], seed, step, score)
                    for k, seed, score in zip(labels.tolist(), current["seeds"], scores))

    guided = offshelf.guide(pipe, "clip", clip=clip, scale=float(run.get("scale", guidance["scale"])),
                            sine_factor=float(run.get("sine_factor", 0.0)), schedule=guidance.get("schedule", "adm"),
                            window=tuple(guidance.get("window", (0.0, 1.0))), every=guidance.get("every", 1),
                            decoder=_decoder(guidance, pipe), decoder_chunk=guidance.get("decoder_chunk"),
                            checkpoint=bool(guidance.get("checkpoint", False)), observe=observe)
    images = []
    negative = cfg["sampling"].get("negative_prompt")
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        current["labels"] = torch.tensor([k for k, _ in chunk])
        current["seeds"] = [seed for _, seed in chunk]
        call = dict(_call_options(cfg), output_type="pil",
                    generator=[torch.Generator(device).manual_seed(seed) for _, seed in chunk])
        if negative is not None:
            call["negative_prompt"] = [negative] * len(chunk)
        images.extend(guided([prompts[k] for k, _ in chunk], **call).images)
    steps = cfg["sampling"]["num_inference_steps"]
    if len(rows) != len(items) * steps:
        raise RuntimeError(f"run {run['name']}: {len(rows)} CLIP scores for {len(items)} images × {steps} steps: the "
                           f"pipeline called its denoiser on other steps than its scheduler's")
    return images, rows


def per_step_intervals(scores, num_resamples: int, level: float):
    """One row per run × step (:data:`SUMMARY_COLUMNS`): the mean CLIP score over the images and
    its percentile bootstrap interval; every run and step resamples the same images (the same
    indices), so runs pair. Also returns the replicates, ``{(run, step): [B]}``."""
    import pandas as pd

    runs = list(dict.fromkeys(scores["run"]))
    images = scores[["prompt", "seed"]].drop_duplicates()
    n = len(images)
    indices = statistics.resample_indices(n, num_resamples)
    rows, replicates = [], {}
    for run in runs:
        table = scores[scores.run == run].pivot_table(index=["prompt", "seed"], columns="step", values="clip_score")
        table = table.reindex(pd.MultiIndex.from_frame(images))
        for step in table.columns:
            values = table[step].to_numpy(np.float64)
            point = float(values.mean())
            reps = statistics.mean_replicates(values, indices) if num_resamples else np.zeros(0)
            lo, hi = statistics.interval(point, reps, "percentile", level)
            rows.append((run, int(step), point, lo, hi, n))
            replicates[(run, int(step))] = reps
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS), replicates


def plot_clip_scores(summary, path: str | os.PathLike, level: float) -> Path:
    """CLIP score of the decoded x̂0 vs sampling step, one curve per run with its interval band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from offshelf.figures import save_figure

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=150)
    for run, group in summary.groupby("run", sort=False):
        line, = ax.plot(group["step"], group["clip_score"], label=run)
        ax.fill_between(group["step"], group["lo"], group["hi"], alpha=0.2, color=line.get_color())
    ax.set_xlabel("sampling step")
    ax.set_ylabel("CLIP score of decoded x̂0 (100·cos)")
    ax.set_title(f"mean over images, {level:.0%} bootstrap interval", fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    return Path(path)


def run_comparison(pipe, clip, cfg: Mapping[str, Any], outdir: str | os.PathLike) -> dict[str, Path]:
    """Every run of ``cfg`` on ``pipe`` (module docstring); returns the files written."""
    import pandas as pd

    from offshelf import images as images_io
    from offshelf.atomic import save_csv, save_json
    from offshelf.text2image import slug

    outdir = Path(outdir)
    intervals = dict(DEFAULT_INTERVALS, **cfg.get("intervals", {}))
    device = torch.device(cfg["device"])
    written: dict[str, Path] = {}
    tables, timings = [], {}
    for run in cfg["runs"]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        images, rows = render_run(pipe, clip, cfg, run)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings[run["name"]] = time.perf_counter() - start
        tables.append(pd.DataFrame(rows, columns=SCORE_COLUMNS))
        folder = outdir / "images" / run["name"]
        folder.mkdir(parents=True, exist_ok=True)
        order = [(p, s) for s in cfg["seeds"] for p in cfg["prompts"]]
        for image, (prompt, seed) in zip(images, order):
            image.save(folder / f"{slug(prompt)}_seed{seed}.png")
        # grid: a row per prompt, a column per seed
        by_item = dict(zip(order, images))
        stack = np.stack([np.asarray(by_item[(p, s)].convert("RGB")) for p in cfg["prompts"] for s in cfg["seeds"]])
        written[f"grid/{run['name']}"] = images_io.save_grid(stack, outdir / "grids" / f"{run['name']}.png",
                                                             ncol=len(cfg["seeds"]))
        print(f"{run['name']}: {len(images)} images in {timings[run['name']]:.1f} s", flush=True)
    scores = pd.concat(tables, ignore_index=True)
    summary, replicates = per_step_intervals(scores, intervals["num_resamples"], intervals["level"])
    written["clip_scores"] = save_csv(outdir / "clip_scores.csv", scores)
    written["clip_score_per_step"] = save_csv(outdir / "clip_score_per_step.csv", summary)
    written["figure"] = plot_clip_scores(summary, outdir / "clip_score_vs_step.png", intervals["level"])
    written["summary"] = save_json(outdir / "summary.json", _summary(pipe, cfg, summary, replicates, timings,
                                                                     intervals))
    return written


def _summary(pipe, cfg, summary, replicates, timings, intervals) -> dict[str, Any]:
    """The record beside the numbers: settings, classes, versions, wall times, final-step paired
    differences of every run against the first (the same bootstrap resamples)."""
    import diffusers

    import offshelf

    runs = [run["name"] for run in cfg["runs"]]
    last = int(summary["step"].max())
    final = summary[summary.step == last].set_index("run")["clip_score"]
    differences = {}
    if intervals["num_resamples"]:
        for run in runs[1:]:
            # percentile interval of the paired replicates' difference (unbounded: CLIP scores are 100·cos)
            diff = float(final[run]) - float(final[runs[0]])
            lo, hi = statistics.interval(diff, replicates[(run, last)] - replicates[(runs[0], last)], "percentile",
                                         intervals["level"])
            differences[f"{run} - {runs[0]}"] = dict(difference=diff, lo=lo, hi=hi)
    return dict(config=dict(cfg), pipeline_class=type(pipe).__name__, scheduler=type(pipe.scheduler).__name__,
                final_step=last, final_clip_score={run: float(final[run]) for run in runs},
                final_paired_differences=differences, wall_s=timings, device=str(cfg["device"]),
                versions=dict(offshelf=offshelf.__version__, torch=torch.__version__,
                              diffusers=diffusers.__version__, python=platform.python_version()))


def run_config(cfg: Mapping[str, Any], outdir: str | os.PathLike) -> dict[str, Path]:
    """Load the config's pipeline and CLIP, then :func:`run_comparison`."""
    pipe = load_pipeline(cfg["pipeline"], cfg["device"])
    clip = load_scorer(cfg["clip"], cfg["device"])
    return run_comparison(pipe, clip, cfg, outdir)


__all__ = ["DEFAULT_INTERVALS", "SCORE_COLUMNS", "SUMMARY_COLUMNS", "load_pipeline", "load_scorer",
           "per_step_intervals",
           "plot_clip_scores", "render_run", "run_comparison", "run_config"]
