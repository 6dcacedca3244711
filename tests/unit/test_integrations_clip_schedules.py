"""Figure 7 on a diffusers pipeline (offshelf.integrations.clip_schedules): its config is checked
by `offshelf check-config` in one line naming the key; the per-step intervals are paired bootstrap
means; each step's score is the CLIP score of the decoded x̂0 of the pipeline's own CFG prediction
(the last step's: the output image's, Euler landing on x̂0). The workflow target itself:
tests/workflow/test_text2image_diffusers.py."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from offshelf import statistics

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "config" / "text2image_diffusers.yaml"


def test_shipped_config_is_checked_as_a_diffusers_text2image_config(capsys):
    from offshelf.cli import main

    assert main(["check-config", str(SHIPPED)]) == 0
    assert capsys.readouterr().out.strip() == f"offshelf: {SHIPPED}: valid (text2image_diffusers config)"


@pytest.mark.parametrize("change, message", [
    (lambda c: c["guidance"].update(scael=1.0), "config key 'guidance': unknown key(s) ['scael']"),
    (lambda c: c["sampling"].update(num_inference_steps="30"), "config key 'sampling.num_inference_steps' = '30'"),
    (lambda c: c["runs"].append({"name": "sine", "sine_factor": 0.1}), "config key 'runs': run names must be unique"),
    (lambda c: c["intervals"].update(num_resamples=10), "config key intervals.num_resamples = 10: a 95% interval"),
    (lambda c: c["guidance"].update(scale=float("nan")), "config key 'guidance.scale' = nan: not a finite number"),
    (lambda c: c["guidance"].update(window=[0.7, 0.2]), "config key 'guidance.window' = [0.7, 0.2]"),
    (lambda c: c.pop("seeds"), "'seeds' is a required property"),
])
def test_a_bad_config_is_one_line_naming_the_key(tmp_path, capsys, change, message):
    from offshelf.cli import main

    cfg = yaml.safe_load(SHIPPED.read_text())
    change(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"offshelf: {path}: ") and message in err, err


def _scores(values_by_run: dict[str, np.ndarray]) -> pd.DataFrame:
    rows = []
    for run, values in values_by_run.items():  # values: [image, step]
        for image, per_step in enumerate(values):
            for step, value in enumerate(per_step):
                rows.append((run, f"prompt {image % 3}", image // 3, step, float(value)))
    return pd.DataFrame(rows, columns=["run", "prompt", "seed", "step", "clip_score"])


def test_per_step_intervals_are_paired_bootstrap_means():
    """Mean over the images per run and step, percentile interval of the bootstrap means with the
    library's resample indices; every run resamples the same images, so a run that is another
    plus 2.5 has every replicate (and both ends of its interval) exactly 2.5 higher."""
    from offshelf.integrations.clip_schedules import per_step_intervals

    rng = np.random.default_rng(0)
    base = rng.normal(20, 3, size=(6, 4))
    summary, replicates = per_step_intervals(_scores({"unguided": base, "sine": base + 2.5}), 200, 0.9)
    assert len(summary) == 2 * 4 and list(summary.columns) == ["run", "step", "clip_score", "lo", "hi", "images"]
    indices = statistics.resample_indices(6, 200)
    for step in range(4):
        row = summary[(summary.run == "unguided") & (summary.step == step)].iloc[0]
        assert row.clip_score == pytest.approx(base[:, step].mean(), rel=1e-12) and row.images == 6
        expected = base[:, step][indices].mean(axis=1)
        np.testing.assert_allclose(replicates[("unguided", step)], expected, rtol=1e-12)
        lo, hi = np.quantile(expected, [0.05, 0.95])
        assert (row.lo, row.hi) == pytest.approx((lo, hi), rel=1e-12) and row.lo <= row.clip_score <= row.hi
        shifted = summary[(summary.run == "sine") & (summary.step == step)].iloc[0]
        np.testing.assert_allclose(replicates[("sine", step)] - replicates[("unguided", step)], 2.5, rtol=1e-12)
        assert (shifted.lo - row.lo, shifted.hi - row.hi) == pytest.approx((2.5, 2.5), rel=1e-9)
    no_intervals, _ = per_step_intervals(_scores({"unguided": base}), 0, 0.95)
    assert no_intervals[["lo", "hi"]].isna().all().all() and no_intervals.clip_score.notna().all()


def test_each_steps_score_is_the_clip_score_of_its_decoded_x0(tmp_path):
    """Euler's last step (σ → 0) lands on x̂0, so the CLIP score of the last step's decoded x̂0 is
    the CLIP score of the image the pipeline returns (scale 0: the pipeline's own); the first
    steps' scores differ from it (they score noisier x̂0); every step's score is rederived from
    the plain pipeline's denoiser outputs (its CFG combination read as x̂0 by hand)."""
    pytest.importorskip("diffusers")
    pytest.importorskip("open_clip")
    from offshelf.classifiers.clip import CLIPPromptClassifier, build_random_clip, clip_score
    from offshelf.integrations.clip_schedules import render_run
    from offshelf.integrations.tiny_pipelines import build

    pipe = build("sd", tmp_path)
    pipe.set_progress_bar_config(disable=True)
    clip = build_random_clip(dict(embed_dim=8, vision_cfg=dict(image_size=16, layers=1, width=16, patch_size=8,
                                                               head_width=8),
                                  text_cfg=dict(context_length=77, vocab_size=49408, width=16, heads=2, layers=1)))
    prompts = ["a red cat", "ice frog"]
    cfg = dict(prompts=prompts, seeds=[4], device="cpu", guidance=dict(scale=1.0),
               sampling=dict(num_inference_steps=4, guidance_scale=3.0, height=16, width=16))
    _, rows = render_run(pipe, clip, cfg, {"name": "unguided", "scale": 0.0})
    scores = pd.DataFrame(rows, columns=["run", "prompt", "seed", "step", "clip_score"])
    assert len(scores) == 2 * 4
    images = pipe(prompts, num_inference_steps=4, guidance_scale=3.0, height=16, width=16, output_type="pt",
                  generator=[torch.Generator().manual_seed(4) for _ in prompts]).images
    scorer = CLIPPromptClassifier(*clip, prompts)
    expected = clip_score(scorer(images * 2 - 1), torch.arange(2), scorer.logit_scale)
    last = scores[scores.step == 3].set_index("prompt").loc[prompts, "clip_score"].to_numpy()
    np.testing.assert_allclose(last, expected.numpy(), rtol=1e-4, atol=1e-4)
    first = scores[scores.step == 0].set_index("prompt").loc[prompts, "clip_score"].to_numpy()
    assert np.abs(first - expected.numpy()).max() > 1e-2
    # every step, rederived from the plain pipeline's own denoiser calls: x̂0 = √(1+σ²)·x − σ·ε of
    # the CFG combination u + w·(c − u) (Euler, ε-prediction), decoded by the VAE, scored by CLIP
    from offshelf.integrations.text2image_pipelines import decode_latents

    calls = []
    hooks = [pipe.unet.register_forward_hook(lambda m, args, out: calls.append((args[0].clone(), out[0].clone())))]
    try:
        pipe(prompts, num_inference_steps=4, guidance_scale=3.0, height=16, width=16, output_type="latent",
             generator=[torch.Generator().manual_seed(4) for _ in prompts])
    finally:
        hooks[0].remove()
    sigmas = pipe.scheduler.sigmas
    for step, (x_in, eps) in enumerate(calls):
        uncond, cond = eps.chunk(2)
        combined, x = uncond + 3.0 * (cond - uncond), x_in[2:]
        sigma = float(sigmas[step])
        x0 = (1 + sigma ** 2) ** 0.5 * x - sigma * combined
        with torch.no_grad():
            want = clip_score(scorer(decode_latents(pipe.vae, x0)), torch.arange(2), scorer.logit_scale)
        got = scores[scores.step == step].set_index("prompt").loc[prompts, "clip_score"].to_numpy()
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


def test_a_nan_in_the_decoded_x0_stops_the_run_at_its_step(tmp_path):
    """A decoder that returns NaN (an fp16 VAE overflowing): the run stops at the first step with
    one line naming the run, what is not finite and the step, before any table is written."""
    pytest.importorskip("diffusers")
    pytest.importorskip("open_clip")
    from offshelf.classifiers.clip import build_random_clip
    from offshelf.guidance import NonFiniteError
    from offshelf.integrations.clip_schedules import run_comparison
    from offshelf.integrations.tiny_pipelines import build

    pipe = build("sd", tmp_path / "tok")
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        pipe.vae.decoder.conv_out.bias.fill_(float("nan"))
    clip = build_random_clip(dict(embed_dim=8, vision_cfg=dict(image_size=16, layers=1, width=16, patch_size=8,
                                                               head_width=8),
                                  text_cfg=dict(context_length=77, vocab_size=49408, width=16, heads=2, layers=1)))
    cfg = dict(prompts=["a red cat"], seeds=[0], device="cpu", guidance=dict(scale=1.0),
               sampling=dict(num_inference_steps=2, height=16, width=16), runs=[dict(name="unguided", scale=0.0)])
    with pytest.raises(NonFiniteError, match=r"^step 0: run unguided: CLIP score of the decoded x̂0") as stopped:
        run_comparison(pipe, clip, cfg, tmp_path / "out")
    assert "\n" not in str(stopped.value) and not (tmp_path / "out" / "clip_scores.csv").exists()
