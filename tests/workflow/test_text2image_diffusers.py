"""`snakemake text2image_diffusers` (Figure 7 on a diffusers pipeline) end to end, offline: the
shipped config/text2image_diffusers.yaml with only its sizes shrunk and its downloads swapped for a
tiny random SDXL pipeline (offshelf.integrations.tiny_pipelines, saved with save_pretrained) and a
tiny random open_clip folder (the rehearsal's stand-in builder), loaded with HF_HUB_OFFLINE=1.
Nothing is mocked: the workflow's own rule runs the real pipeline, guidance, CLIP and bootstrap."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from workflow_utils import REPO, snakemake

pytest.importorskip("diffusers")
pytest.importorskip("open_clip")

STEPS = 3
SEEDS = [0, 1]


@pytest.fixture(scope="module")
def figure7_run(tmp_path_factory):
    from rehearsal.standins import build_clip

    from offshelf.integrations.tiny_pipelines import build

    tmp = tmp_path_factory.mktemp("t2i_diffusers")
    build("sdxl", tmp / "parts").save_pretrained(tmp / "sdxl")
    build_clip(tmp / "clip", seed=13)
    cfg = yaml.safe_load((REPO / "config" / "text2image_diffusers.yaml").read_text())
    cfg["pipeline"] = {"id": str(tmp / "sdxl")}
    cfg["clip"] = {"model": f"local-dir:{tmp / 'clip'}", "pretrained": None}
    cfg.update(device="cpu", seeds=SEEDS, batch_size=3)  # 3: a batch that splits the 4 images unevenly
    cfg["sampling"].update(num_inference_steps=STEPS, height=16, width=16, negative_prompt="blurry")
    cfg["guidance"]["scale"] = 300.0  # the random UNet's x̂0 is far from the decoder's range: a larger s
    cfg["intervals"]["num_resamples"] = 200
    path = tmp / "text2image_diffusers.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    results = tmp / "results"
    patch = pytest.MonkeyPatch()
    patch.setenv("HF_HUB_OFFLINE", "1")
    patch.setenv("HF_HOME", str(tmp / "no-hub-cache"))
    try:
        start = time.perf_counter()
        snakemake("--cores", "2", "text2image_diffusers", "--configfile", str(REPO / "config" / "ci.yaml"),
                  "--config", f"results={results}", f"text2image_diffusers_config={path}", timeout=600)
        print(f"text2image_diffusers: {time.perf_counter() - start:.0f} s")
    finally:
        patch.undo()
    return cfg, results / "text2image_diffusers", tmp


def test_per_step_table_intervals_figure_and_grids(figure7_run):
    """steps × 3 rows, each with a finite estimate inside its interval; the tidy table has a score
    per run × prompt × seed × step; the first step's x̂0 is read before any correction, so every
    run scores it identically; the figure, grids and per-image PNGs are written."""
    cfg, out, _ = figure7_run
    runs = [r["name"] for r in cfg["runs"]]
    assert runs == ["unguided", "linear", "sine"]
    summary = pd.read_csv(out / "clip_score_per_step.csv")
    assert len(summary) == STEPS * len(runs)
    assert list(summary.groupby("run", sort=False).size().index) == runs
    assert summary.groupby("run")["step"].apply(list).to_dict() == {r: list(range(STEPS)) for r in runs}
    assert summary[["clip_score", "lo", "hi"]].map(math.isfinite).all().all()
    assert ((summary.lo <= summary.clip_score) & (summary.clip_score <= summary.hi)).all(), summary
    assert (summary.images == len(cfg["prompts"]) * len(SEEDS)).all()
    scores = pd.read_csv(out / "clip_scores.csv")
    assert len(scores) == len(runs) * len(cfg["prompts"]) * len(SEEDS) * STEPS
    first = scores[scores.step == 0].pivot_table(index=["prompt", "seed"], columns="run", values="clip_score")
    assert (first["linear"] == first["unguided"]).all() and (first["sine"] == first["unguided"]).all()
    # the interval rows are the mean of the tidy rows
    means = scores.groupby(["run", "step"], sort=False)["clip_score"].mean().to_numpy()
    np.testing.assert_allclose(summary.clip_score.to_numpy(), means, rtol=1e-12)
    assert (out / "clip_score_vs_step.png").stat().st_size > 1000
    for run in runs:
        assert (out / "grids" / f"{run}.png").stat().st_size > 100
    record = json.loads((out / "summary.json").read_text())
    assert record["pipeline_class"] == "StableDiffusionXLPipeline" and record["final_step"] == STEPS - 1


def test_unguided_run_is_the_pipelines_own_output_and_guidance_raises_the_clip_score(figure7_run):
    """The unguided run's PNGs are the plain pipeline's own images, byte for byte in pixels (same
    prompts, negative prompt, CFG, per-image generators); both guided runs end with a higher CLIP
    score than the unguided one, the paired bootstrap interval of the difference above 0."""
    import diffusers
    from PIL import Image

    from offshelf.text2image import slug

    cfg, out, tmp = figure7_run
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(tmp / "sdxl")
    pipe.set_progress_bar_config(disable=True)
    prompts = cfg["prompts"]
    items = [(p, s) for s in SEEDS for p in prompts]
    sampling = cfg["sampling"]
    images = pipe([p for p, _ in items], negative_prompt=[sampling["negative_prompt"]] * len(items),
                  num_inference_steps=STEPS, guidance_scale=sampling["guidance_scale"], height=16, width=16,
                  generator=[torch.Generator("cpu").manual_seed(s) for _, s in items]).images
    for (prompt, seed), image in zip(items, images):
        written = np.asarray(Image.open(out / "images" / "unguided" / f"{slug(prompt)}_seed{seed}.png"))
        assert np.array_equal(written, np.asarray(image)), (prompt, seed)
    guided = np.asarray(Image.open(out / "images" / "linear" / f"{slug(prompts[0])}_seed0.png"))
    assert not np.array_equal(guided, np.asarray(images[0]))  # the guidance acted
    record = json.loads((out / "summary.json").read_text())
    final = record["final_clip_score"]
    for run in ("linear", "sine"):
        assert final[run] > final["unguided"], final
        assert record["final_paired_differences"][f"{run} - unguided"]["lo"] > 0, record["final_paired_differences"]
