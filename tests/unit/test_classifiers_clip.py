"""CLIP guidance (paper Sec. 5.4): a small random open_clip model through the same
CLIPPromptClassifier → ClassifierGuidance → ddpm_sample path the real ViT-L/14@336 takes."""

import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

open_clip = pytest.importorskip("open_clip", reason="CLIP guidance needs open-clip-torch")

from offshelf.classifiers.clip import (CLIPPromptClassifier, build_random_clip, check_quick_gelu,  # noqa: E402
                                       load_clip, tokenize_prompts)
from offshelf.diffusion import GaussianDiffusion  # noqa: E402
from offshelf.guidance import Guidance  # noqa: E402
from offshelf.samplers.ddpm import ddpm_sample  # noqa: E402
from offshelf.seeding import StackedRandomGenerator  # noqa: E402
from offshelf.text2image import (SCORE_COLUMNS, clip_guidance, generate, load_config, plot_clip_scores,  # noqa: E402
                                 save_grid)

SMALL_CLIP = dict(
    embed_dim=32, quick_gelu=True,
    vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=8, head_width=32),
    text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
)
PROMPTS = ["Van Gogh style cat", "ice frog", "a red sports car"]
SEEDS = [0, 1, 2, 3]
LABELS = torch.tensor([0, 1, 2, 0])
SHAPE = (3, 24, 24)  # not the CLIP input size: exercises the differentiable resize


class TinyEps(nn.Module):
    """A random ε-network ``model(x, t, y)`` (3 output channels: fixed variance)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv_in = nn.Conv2d(3, 16, 3, padding=1)
        self.conv_out = nn.Conv2d(16, 3, 3, padding=1)
        self.time = nn.Linear(1, 16)

    def forward(self, x, t, y=None):
        h = self.conv_in(x) + self.time(t.float()[:, None] / 1000)[:, :, None, None]
        return self.conv_out(F.silu(h))


@pytest.fixture(scope="module")
def clip_parts():
    return build_random_clip(SMALL_CLIP)


@pytest.fixture(scope="module")
def classifier(clip_parts):
    return CLIPPromptClassifier(*clip_parts, PROMPTS)


@pytest.fixture(scope="module")
def denoiser():
    return TinyEps().eval()


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion.respaced(1000, "10", "linear", "fixed_large")


def target_similarity(classifier, x, labels=LABELS):
    with torch.no_grad():
        return classifier.similarity(x).gather(1, labels[:, None])[:, 0]


def trace_sample(denoiser, diffusion, classifier, scale, sine_factor):
    """Run Algorithm 1 and keep every step's (x_t, x̂0, grad) plus the final sample."""
    trace = {}

    def record(step, x_t, pred_xstart, grad, logits):
        trace[step] = dict(x_t=x_t, pred_xstart=pred_xstart, grad=grad)

    guidance = Guidance(clip_guidance(classifier), scale=scale, sine_factor=sine_factor, label=LABELS)
    final = ddpm_sample(denoiser, StackedRandomGenerator(SEEDS), diffusion, guidance=guidance, callback=record,
                        shape=SHAPE)
    trace[-1] = dict(x_t=final)
    return trace


# --- tokenisation ------------------------------------------------------------------------------

def test_three_prompts_tokenise_in_one_batch(clip_parts, classifier):
    model, tokenizer = clip_parts
    tokens = tokenize_prompts(tokenizer, PROMPTS)
    assert tokens.shape == (3, 77)
    for row, prompt in zip(tokens, PROMPTS):
        n = len(tokenizer.encode(prompt))
        assert row[0] == tokenizer.sot_token_id and row[n + 1] == tokenizer.eot_token_id
        assert (row[n + 2:] == 0).all()
    # the batch of three embeds each prompt exactly as on its own
    assert classifier.text_features.shape == (3, 32)
    for k, prompt in enumerate(PROMPTS):
        alone = CLIPPromptClassifier(model, tokenizer, [prompt]).text_features[0]
        torch.testing.assert_close(classifier.text_features[k], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(classifier.text_features.norm(dim=1), torch.ones(3))


@pytest.mark.parametrize("prompts, index", [(["ice frog", ""], 1), (["   "], 0)])
def test_empty_prompt_is_a_clear_error(clip_parts, prompts, index):
    with pytest.raises(ValueError, match=f"prompt {index} is empty"):
        tokenize_prompts(clip_parts[1], prompts)


def test_overlong_prompt_is_an_error_not_a_truncation(clip_parts):
    long_prompt = " ".join(["cat"] * 80)
    with pytest.raises(ValueError, match=r"prompt 1 'cat cat.*' is 82 tokens.*context length 77"):
        CLIPPromptClassifier(*clip_parts, ["ice frog", long_prompt])
    tokenize_prompts(clip_parts[1], [" ".join(["cat"] * 75)])  # 77 with start/end: fits exactly


# --- the classifier --------------------------------------------------------------------------

def test_logits_match_open_clip_preprocessing(clip_parts, classifier):
    """[-1, 1] tensors through CLIPPromptClassifier == uint8 images through open_clip's own
    eval transform + encoders, and logits = exp(logit_scale)·cos."""
    from PIL import Image

    model, tokenizer = clip_parts
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    transform = open_clip.image_transform(model.visual.image_size, is_train=False,
                                          mean=model.visual.preprocess_cfg["mean"], std=model.visual.preprocess_cfg["std"])
    with torch.no_grad():
        reference_img = model.encode_image(torch.stack([transform(Image.fromarray(p)) for p in pixels]))
        reference_txt = model.encode_text(tokenizer(PROMPTS))
        expected = model.logit_scale.exp() * F.normalize(reference_img, dim=-1) @ F.normalize(reference_txt, dim=-1).T
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
        torch.testing.assert_close(classifier(x), expected, atol=1e-4, rtol=1e-4)
    assert classifier.logit_scale == pytest.approx(1 / 0.07)


def test_any_image_size_is_differentiable(classifier):
    x = torch.rand(2, 3, 40, 56, requires_grad=True) * 2 - 1
    x.retain_grad()
    logits = classifier(x)
    assert logits.shape == (2, 3)
    logits[:, 1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="B×3×H×W"):
        classifier(torch.zeros(2, 1, 32, 32))


def test_guidance_gradient_is_that_of_the_scaled_cosine(classifier):
    """τ1 = 1, τ2 = 0: ∇ log p̃(k|x) = ∇ s·cos(E(x), E(prompt_k)), no marginal term."""
    x = torch.rand(4, *SHAPE) * 2 - 1
    grad, logits = clip_guidance(classifier).gradient(x, LABELS)
    leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad((classifier.logit_scale * classifier.similarity(leaf)).gather(1, LABELS[:, None]).sum(), leaf)
    torch.testing.assert_close(grad, expected, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(logits, classifier(x), atol=1e-5, rtol=1e-5)


# --- guided sampling ---------------------------------------------------------------------------

def test_one_guided_step_raises_clip_similarity(denoiser, diffusion, classifier):
    """From the same x_T and noise, the first guided step differs from the unguided one by exactly
    Σ_t·s·∇f(x̂0), which raises the CLIP similarity of x̂0 and of the next state; s < 0 lowers it."""
    scale, k = 3.0, diffusion.num_steps - 1
    guided = trace_sample(denoiser, diffusion, classifier, scale, 0.0)
    plain = trace_sample(denoiser, diffusion, classifier, 0.0, 0.0)
    repelled = trace_sample(denoiser, diffusion, classifier, -scale, 0.0)
    torch.testing.assert_close(guided[k]["x_t"], plain[k]["x_t"])
    shift = guided[k - 1]["x_t"] - plain[k - 1]["x_t"]
    torch.testing.assert_close(shift, float(diffusion.betas[k]) * scale * guided[k]["grad"], atol=1e-5, rtol=1e-4)

    x0 = plain[k]["pred_xstart"]
    assert (target_similarity(classifier, x0 + shift) > target_similarity(classifier, x0)).all()
    up, base, down = (target_similarity(classifier, t[k - 1]["x_t"]) for t in (guided, plain, repelled))
    assert (up > base).all() and (down < base).all()
    up0, base0 = (target_similarity(classifier, t[k - 1]["pred_xstart"]) for t in (guided, plain))
    assert (up0 > base0).all()


def effective_weight(denoiser, diffusion, trace, k, scale):
    """Recover the guidance weight w of step k from a trace: x_{k−1} = μ + w·s·g + sqrt(Σ)·z,
    with μ, Σ recomputed from x_k and z replayed from the per-sample generators."""
    rng = StackedRandomGenerator(SEEDS)
    rng.randn(SHAPE)  # x_T
    for _ in range(diffusion.num_steps - 1 - k):
        rng.randn(SHAPE)
    noise = rng.randn(SHAPE)
    x = trace[k]["x_t"]
    with torch.no_grad():
        out = diffusion.p_mean_variance(denoiser(x, diffusion.model_timesteps(k, len(x), "cpu")), x, k)
    moved = trace[k - 1]["x_t"] - out.mean - torch.exp(0.5 * out.log_variance) * noise
    push = scale * trace[k]["grad"]
    return float((moved * push).sum() / (push * push).sum())


def test_sine_schedule_boosts_the_weight_mid_trajectory(denoiser, diffusion, classifier):
    """Eq. 5: w_t = Σ_t (linear, γ = 0) vs Σ_t + γ·sin(πt/T)·Σ_max (sine), Σ_max the running max."""
    scale, sine_factor, T = 3.0, 0.3, diffusion.num_steps
    linear = trace_sample(denoiser, diffusion, classifier, scale, 0.0)
    sine = trace_sample(denoiser, diffusion, classifier, scale, sine_factor)
    sigma_max = float(diffusion.betas[T - 1])  # fixed_large: Σ_t = β_t, largest at the first step
    for k in (T // 2, T - 1, 1):
        w_linear = effective_weight(denoiser, diffusion, linear, k, scale)
        w_sine = effective_weight(denoiser, diffusion, sine, k, scale)
        assert w_linear == pytest.approx(diffusion.betas[k], rel=1e-4)
        assert w_sine == pytest.approx(diffusion.betas[k] + sine_factor * math.sin(math.pi * k / T) * sigma_max, rel=1e-4)
        assert w_sine > w_linear
    k = T // 2
    assert effective_weight(denoiser, diffusion, sine, k, scale) - diffusion.betas[k] == pytest.approx(sine_factor * sigma_max, rel=1e-4)


def test_generate_scores_grid_and_plot(denoiser, diffusion, classifier, tmp_path):
    n = 2
    images, table = generate(denoiser, diffusion, classifier, PROMPTS, n, seeds=10, scale=10.0, sine_factor=0.3,
                             image_size=SHAPE[-1], batch_size=4)
    assert images.shape == (len(PROMPTS) * n, *SHAPE)
    assert list(table.columns) == SCORE_COLUMNS
    assert len(table) == len(PROMPTS) * n * diffusion.num_steps
    assert set(table.schedule) == {"sine"} and set(table.seed) == set(range(10, 16))
    assert sorted(table.step.unique()) == list(range(diffusion.num_steps))
    assert (table.iteration == diffusion.num_steps - 1 - table.step).all()
    assert (table.groupby("seed").prompt.nunique() == 1).all() and table[table.seed == 12].prompt.iloc[0] == PROMPTS[1]

    _, plain = generate(denoiser, diffusion, classifier, PROMPTS, n, seeds=list(range(10, 16)), scale=0.0,
                        sine_factor=0.0, image_size=SHAPE[-1])
    assert set(plain.schedule) == {"linear"}
    again, _ = generate(denoiser, diffusion, classifier, PROMPTS, n, seeds=10, scale=10.0, sine_factor=0.3,
                        image_size=SHAPE[-1])
    torch.testing.assert_close(again, images, atol=1e-5, rtol=1e-5)  # per-image seeds: batching does not matter
    # the score recorded at the last step is 100·cos of that step's x̂0 with its own prompt
    last = table[table.step == 0].clip_score.mean()
    assert last > plain[plain.step == 0].clip_score.mean()
    assert table.clip_score.between(-100, 100).all()

    grid = save_grid(images[:n], tmp_path / "grids" / "ice_frog.png")
    from PIL import Image
    with Image.open(grid) as img:
        assert img.size == (2 * (24 + 2) + 2, 24 + 2 + 2)
    import pandas as pd
    figure = plot_clip_scores(pd.concat([table, plain], ignore_index=True), tmp_path / "fig7.png")
    assert figure.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["fig7.png", "ice_frog.png"]


def test_recurrent_guidance_runs_through_generate(clip_parts, denoiser, diffusion):
    one_prompt = CLIPPromptClassifier(*clip_parts, PROMPTS[:1])
    once, table = generate(denoiser, diffusion, one_prompt, PROMPTS[:1], 1, seeds=5, scale=3.0, sine_factor=0.0,
                           recurrent_steps=1, image_size=SHAPE[-1])
    twice, _ = generate(denoiser, diffusion, one_prompt, PROMPTS[:1], 1, seeds=5, scale=3.0, sine_factor=0.0,
                        recurrent_steps=2, image_size=SHAPE[-1])
    assert len(table) == diffusion.num_steps
    assert not torch.allclose(once, twice)  # time travel re-noises and repeats each step


def test_generate_rejects_mismatched_prompts_and_seeds(denoiser, diffusion, classifier):
    with pytest.raises(ValueError, match="differ from the CLIP classifier"):
        generate(denoiser, diffusion, classifier, ["ice frog"], 1, 0, 1.0, 0.0, image_size=24)
    with pytest.raises(ValueError, match="one seed per image"):
        generate(denoiser, diffusion, classifier, PROMPTS, 2, [0, 1], 1.0, 0.0, image_size=24)


# --- loading ---------------------------------------------------------------------------------

def test_openai_weights_need_quickgelu():
    with pytest.raises(ValueError, match="ViT-L-14-336-quickgelu"):
        check_quick_gelu("ViT-L-14-336", "openai")
    check_quick_gelu("ViT-L-14-336-quickgelu", "openai")  # the paper's model: accepted
    with pytest.raises(ValueError, match="unknown open_clip model"):
        load_clip("ViT-L-14-337", "openai")


def test_load_clip_from_a_local_weight_file(clip_parts, classifier, tmp_path):
    """The real loader (create_model_and_transforms) with ``pretrained=<file>``, on a small
    architecture registered the way open_clip documents (add_model_config)."""
    name = "offshelf-test-tiny-clip"
    (tmp_path / f"{name}.json").write_text(json.dumps(SMALL_CLIP))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    weights = tmp_path / "tiny_clip.pt"
    torch.save(clip_parts[0].state_dict(), weights)
    model, tokenizer = load_clip(name, str(weights))
    loaded = CLIPPromptClassifier(model, tokenizer, PROMPTS)
    x = torch.rand(2, *SHAPE) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), classifier(x), atol=1e-5, rtol=1e-5)


def test_shipped_config_is_valid_and_typos_name_the_key(tmp_path, clip_parts):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "config" / "clip_text2image.yaml"
    cfg = load_config(path)
    assert cfg["clip"]["model"] == "ViT-L-14-336-quickgelu" and cfg["clip"]["pretrained"] == "openai"
    assert {"Van Gogh style cat", "ice frog"} <= set(cfg["prompts"])
    assert cfg["diffusion"]["timestep_respacing"] == "250"
    tokenize_prompts(clip_parts[1], cfg["prompts"])  # the same BPE tokenizer as ViT-L/14's
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("  scale:", "  scael:"))
    with pytest.raises(ValueError, match=r"bad.yaml:guidance: unknown keys \['scael'\]"):
        load_config(bad)


def test_cli_names_the_missing_checkpoint_and_its_url(tmp_path, capsys):
    from pathlib import Path

    from offshelf.cli import main

    text = (Path(__file__).resolve().parents[2] / "config" / "clip_text2image.yaml").read_text()
    config = tmp_path / "t2i.yaml"
    config.write_text(text.replace("checkpoints/adm/256x256_diffusion_uncond.pt", str(tmp_path / "absent.pt")))
    assert main(["text2image", "--config", str(config), "--outdir", str(tmp_path / "out"), "--device", "cpu"]) == 2
    assert re.search(r"absent.pt does not exist; download it from https://openaipublic", capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_run_comparison_writes_grids_scores_timings_and_figure(denoiser, diffusion, classifier, tmp_path):
    """The CLI's comparison (linear, sine, recurrent) on the tiny models; same seeds for every run."""
    import pandas as pd

    from offshelf.text2image import run_comparison

    cfg = dict(prompts=PROMPTS, seed=0, batch_size=3, guidance=dict(scale=3.0), diffusion=dict(image_size=SHAPE[-1]),
               runs=[dict(name="linear", sine_factor=0.0), dict(name="sine", sine_factor=0.3),
                     dict(name="linear_recurrent2", sine_factor=0.0, recurrent_steps=2)])
    written = run_comparison(denoiser, diffusion, classifier, cfg, tmp_path, "cpu", n_per_prompt=1)
    scores = pd.read_csv(written["clip_scores"])
    assert list(scores.columns) == SCORE_COLUMNS and len(scores) == 3 * len(PROMPTS) * diffusion.num_steps
    first = scores[scores.step == diffusion.num_steps - 1].pivot(index="seed", columns="schedule", values="clip_score")
    np.testing.assert_allclose(first["linear"], first["sine"], rtol=1e-5)  # same x_T: same first x̂0
    timings = pd.read_csv(written["timings"]).set_index("schedule")
    assert list(timings.recurrent_steps) == [1, 1, 2] and (timings.wall_s > 0).all()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")) == sorted(
        ["clip_score_vs_step.png"] + [f"{run}/{p}.png" for run in ("linear", "sine", "linear_recurrent2")
                                      for p in ("van_gogh_style_cat", "ice_frog", "a_red_sports_car")])


# --- zero-shot ImageNet classifier -------------------------------------------------------------

SMALL_RN_CLIP = dict(  # a ModifiedResNet image tower: the open_clip family with nn.ReLU modules
    embed_dim=32,
    vision_cfg=dict(image_size=32, layers=[1, 1, 1, 1], width=8, head_width=16),
    text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=1),
)


@pytest.fixture(scope="module")
def zero_shot(clip_parts):
    from offshelf.classifiers.clip import zero_shot_classifier

    return zero_shot_classifier(*clip_parts)


def test_imagenet_class_names_come_from_torchvision_in_label_order():
    import torchvision.models as tvm

    from offshelf.classifiers.clip import imagenet_class_names

    names = imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[207] == "golden retriever"
    assert names == tvm.ViT_B_16_Weights.DEFAULT.meta["categories"]  # one label order for every torchvision model


def test_zero_shot_logits_over_imagenet_classes_at_any_resolution(zero_shot):
    assert zero_shot.text_features.shape == (1000, 32) and zero_shot.prompts[0] == "tench"
    for shape in ((2, 3, 64, 64), (2, 3, 128, 96), (2, 3, 256, 256)):  # ADM-128, non-square, DiT-256
        x = (torch.rand(*shape) * 2 - 1).requires_grad_(True)
        logits = zero_shot(x)
        assert logits.shape == (2, 1000) and torch.isfinite(logits).all()
        assert logits.abs().max() <= zero_shot.logit_scale * (1 + 1e-5)  # s·cos, |cos| <= 1
        (grad,) = torch.autograd.grad(logits[:, 207].sum(), x)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_zero_shot_text_embedding_is_the_normalised_template_mean(clip_parts):
    """CLIP's prompt ensembling, checked against a direct encoding of every filled-in template."""
    from offshelf.classifiers.clip import zero_shot_classifier

    model, tokenizer = clip_parts
    templates = ["a photo of a {}.", "a drawing of a {}."]
    classifier = zero_shot_classifier(model, tokenizer, ["cat", "frog"], templates)
    with torch.no_grad():
        each = [F.normalize(model.encode_text(tokenizer([t.format(c) for t in templates])), dim=-1) for c in ["cat", "frog"]]
    expected = F.normalize(torch.stack([e.mean(0) for e in each]), dim=-1)
    torch.testing.assert_close(classifier.text_features, expected, atol=1e-5, rtol=1e-5)
    single = zero_shot_classifier(model, tokenizer, ["cat"], ["a photo of a {}."])
    torch.testing.assert_close(single.text_features, CLIPPromptClassifier(model, tokenizer, ["a photo of a cat."]).text_features)
    with pytest.raises(ValueError, match="templates must be"):
        zero_shot_classifier(model, tokenizer, ["cat"], ["a photo of a cat"])


def test_softplus_surgery_on_clip_towers(zero_shot):
    """ViT towers are GELU: surgery refuses, naming the network; ModifiedResNet towers are ReLU
    modules: surgery replaces them and the classifier stays differentiable."""
    from offshelf.classifiers.clip import clip_has_relu, zero_shot_classifier
    from offshelf.classifiers.softplus import NoReLUError, count_relus, softplus_surgery

    assert count_relus(zero_shot) == 0
    with pytest.raises(NoReLUError, match=r"network 'CLIPPromptClassifier' has no nn.ReLU.*GELU"):
        softplus_surgery(zero_shot, 3.0)
    assert not clip_has_relu("ViT-B-32") and not clip_has_relu("ViT-L-14-336-quickgelu") and clip_has_relu("RN50")

    resnet_tower = zero_shot_classifier(*build_random_clip(SMALL_RN_CLIP), ["cat", "frog", "car"])
    assert count_relus(resnet_tower.model.visual) > 0
    smooth = softplus_surgery(resnet_tower, 3.0)
    assert count_relus(smooth) == 0 and count_relus(resnet_tower) > 0
    x = (torch.rand(2, 3, 48, 48) * 2 - 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(smooth(x)[:, 0].sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_clip_network_names_parse_or_say_the_form():
    from offshelf.classifiers.clip import parse_clip_network

    assert parse_clip_network("clip:ViT-B-32/openai") == ("ViT-B-32", "openai")
    assert parse_clip_network("resnet50") is None
    for bad in ("clip:ViT-B-32", "clip:/openai", "clip:ViT-B-32/a/b"):
        with pytest.raises(ValueError, match="clip:<open_clip model>/<pretrained tag>"):
            parse_clip_network(bad)


def test_imagenet_backend_selects_clip_from_a_setting():
    from offshelf.backends.adm128 import ADM128Backend
    from offshelf.settings import Setting

    backend = ADM128Backend({"imagenet": {"classifier": "resnet101", "device": "cpu"}})
    setting = Setting(network="clip:ViT-B-32/openai", marginal_temperature=0.5)
    assert setting.name.endswith("_clip-ViT-B-32--openai") and "/" not in setting.name and ":" not in setting.name
    from offshelf.settings import probe_setting
    assert probe_setting(setting.probe) == Setting(network="clip:ViT-B-32/openai")
    assert set(backend.files(setting)) == {"denoiser"}  # open_clip fetches its own weights
    assert backend.unsupported(setting) is None
    with pytest.raises(ValueError, match=r"setting .*: softplus_beta = 3, but CLIP model 'ViT-B-32' has no ReLU"):
        backend.files(Setting(network="clip:ViT-B-32/openai", softplus_beta=3))
    assert set(backend.files(Setting(network="clip:RN50/openai", softplus_beta=3))) == {"denoiser"}
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Q-99'"):
        backend.files(Setting(network="clip:ViT-Q-99/openai", softplus_beta=3))
