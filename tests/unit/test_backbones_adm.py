"""offshelf's ADM UNet / classifier against guided-diffusion's checkpoints and golden outputs."""

import json

import numpy as np
import pytest
import torch

from offshelf.backbones.adm import (ADM_PRESETS, EncoderUNetModel, UNetModel, build_adm, create_classifier,
                                    create_unet, load_adm, timestep_embedding)
from offshelf.diffusion import GaussianDiffusion


def tiny_golden(reference_dir):
    golden = torch.load(reference_dir / "adm_tiny_golden.pt", map_location="cpu", weights_only=True)
    model = create_unet(**golden["flags"]).eval()
    model.load_state_dict(golden["state_dict"], strict=True)
    return golden, model


@pytest.mark.parametrize("preset", ["adm_imagenet128_cond_diffusion", "adm_imagenet128_classifier",
                                    "adm_imagenet256_uncond_diffusion", "adm_imagenet256_cond_diffusion"])
def test_preset_matches_official_state_dict(reference_dir, preset):
    manifest = json.loads((reference_dir / "adm_state_dict_manifest.json").read_text())[preset]
    model = build_adm(preset, device="meta")
    assert next(model.parameters()).is_meta
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(ours) == sorted(manifest)
    assert ours == {k: list(v) for k, v in manifest.items()}


def test_presets_cover_the_manifest(reference_dir):
    manifest = json.loads((reference_dir / "adm_state_dict_manifest.json").read_text())
    assert set(ADM_PRESETS) == set(manifest)


def test_tiny_unet_reproduces_guided_diffusion(reference_dir):
    golden, model = tiny_golden(reference_dir)
    assert isinstance(model, UNetModel)
    with torch.no_grad():
        out = model(golden["x"], golden["t"], golden["y"])
    assert out.dtype == torch.float32 and out.shape == golden["out"].shape == (3, 6, 32, 32)
    torch.testing.assert_close(out, golden["out"], atol=1e-5, rtol=0)


def test_respaced_posterior_reproduces_guided_diffusion(reference_dir):
    _, model = tiny_golden(reference_dir)
    ref = torch.load(reference_dir / "adm_tiny_step250_golden.pt", map_location="cpu", weights_only=True)
    diffusion = GaussianDiffusion.respaced(1000, "250", "linear", "learned_range")
    assert diffusion.num_steps == ref["num_timesteps"] == 250
    assert diffusion.timestep_map == [int(t) for t in ref["timestep_map"]]
    np.testing.assert_allclose(diffusion.betas, ref["betas"].double().numpy(), rtol=0, atol=1e-12)
    assert [s["k"] for s in ref["steps"]] == [249, 125, 1, 0]
    for step in ref["steps"]:
        k, x, y = int(step["k"]), step["x"], step["y"]
        with torch.no_grad():
            out = diffusion.p_mean_variance(model(x, diffusion.model_timesteps(k, len(x), "cpu"), y), x, k,
                                            clip_denoised=True)
        for name in ("mean", "variance", "log_variance"):
            torch.testing.assert_close(getattr(out, name), step[name], atol=1e-5, rtol=0, msg=f"k={k} {name}")
        # x̂0 = x/sqrt(ᾱ) − sqrt(1/ᾱ − 1)·ε amplifies float32 rounding of ε (which depends on the
        # thread count's accumulation order) by sqrt(1/ᾱ − 1): 157 at k=249. Scale the tolerance.
        amplification = max(1.0, float(diffusion.sqrt_recipm1_alphas_cumprod[k]))
        torch.testing.assert_close(out.pred_xstart, step["pred_xstart"], atol=1e-5 * amplification, rtol=0,
                                   msg=f"k={k} pred_xstart")


def test_unknown_flag_is_named():
    with pytest.raises(ValueError, match=r"unknown flag.*'num_chanels'.*accepted flags.*'num_channels'"):
        create_unet(num_chanels=64)
    with pytest.raises(ValueError, match=r"unknown flag.*'classifier_heads'.*'classifier_width'"):
        create_classifier(classifier_heads=4)
    with pytest.raises(KeyError, match="unknown ADM preset"):
        build_adm("adm_imagenet64", device="meta")


def test_load_reports_missing_key_and_file(reference_dir, tmp_path):
    golden = torch.load(reference_dir / "adm_tiny_golden.pt", map_location="cpu", weights_only=True)
    preset = "adm_imagenet128_classifier"
    state = {k: torch.zeros(v.shape) for k, v in build_adm(preset, device="meta").state_dict().items()}

    ok = tmp_path / "classifier.pt"
    torch.save(state, ok)
    model = load_adm(ok, preset)
    assert isinstance(model, EncoderUNetModel) and not model.training
    assert next(model.parameters()).device.type == "cpu" and model.dtype == torch.float32

    missing = tmp_path / "missing_key.pt"
    torch.save({k: v for k, v in state.items() if k != "out.2.c_proj.weight"}, missing)
    with pytest.raises(ValueError) as err:
        load_adm(missing, preset)
    assert str(missing) in str(err.value) and "missing keys" in str(err.value)
    assert "out.2.c_proj.weight" in str(err.value)

    # The tiny UNet's weights are the wrong shapes and names for the classifier.
    wrong = tmp_path / "wrong_model.pt"
    torch.save(golden["state_dict"], wrong)
    with pytest.raises(ValueError, match=r"(?s)wrong_model\.pt.*unexpected keys.*'label_emb\.weight'.*shape mismatches"):
        load_adm(wrong, preset)

    # The golden file itself is a dict of flags, tensors and a nested state dict, not a state dict.
    with pytest.raises(ValueError, match=r"adm_tiny_golden\.pt is not a plain state dict.*'flags'"):
        load_adm(reference_dir / "adm_tiny_golden.pt", preset)

    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.pt is not a loadable torch state dict"):
        load_adm(garbage, preset)


def test_tiny_classifier_forward():
    torch.manual_seed(0)
    model = create_classifier(image_size=64, classifier_width=64, classifier_depth=1,
                              classifier_attention_resolutions="8").eval()
    x, t = torch.randn(2, 3, 64, 64), torch.tensor([0, 999])
    with torch.no_grad():
        logits = model(x, t)
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()
    # The pooled token must depend on the image (attention pooling is not a constant head).
    with torch.no_grad():
        assert not torch.allclose(logits, model(x.flip(0), t))


def test_timestep_embedding_formula():
    t = torch.tensor([0, 7, 999])
    emb = timestep_embedding(t, 6)
    freqs = 10000.0 ** (-torch.arange(3) / 3)
    expected = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=1)
    torch.testing.assert_close(emb, expected)


def test_conditioning_must_match_model(reference_dir):
    golden, model = tiny_golden(reference_dir)
    with pytest.raises(ValueError, match="class labels y"):
        model(golden["x"], golden["t"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 conversion path needs CUDA")
def test_fp16_on_cuda_stays_close(reference_dir):
    golden, model = tiny_golden(reference_dir)
    model = model.cuda().convert_to_fp16()
    assert model.input_blocks[0][0].weight.dtype == torch.float16
    assert model.time_embed[0].weight.dtype == torch.float32 and model.out[2].weight.dtype == torch.float32
    with torch.no_grad():
        out = model(golden["x"].cuda(), golden["t"].cuda(), golden["y"].cuda())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.cpu(), golden["out"], atol=5e-2, rtol=5e-2)


def test_gradient_checkpointing_gives_identical_gradients(reference_dir):
    golden, model = tiny_golden(reference_dir)
    checkpointed = create_unet(**{**golden["flags"], "use_checkpoint": True}).eval()
    checkpointed.load_state_dict(golden["state_dict"])
    grads = []
    for net in (model, checkpointed):
        x = golden["x"][:1].clone().requires_grad_(True)
        net(x, golden["t"][:1], golden["y"][:1]).square().sum().backward()
        grads.append(x.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)
