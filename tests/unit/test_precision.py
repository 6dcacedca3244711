"""The precision paths a GPU run takes, exercised on the CPU (no GPU is needed; none was lent).

* ADM ``use_fp16`` (guided-diffusion's ``convert_to_fp16``): exactly the convolutions of the
  input/middle/output blocks become fp16 (``fp16_util.convert_module_to_f16`` halves Conv1d/2d/3d
  only: linear layers, norms, embeddings and the output head stay fp32); the trunk computes in
  fp16 and the network returns fp32. CPU has fp16 convolution and matmul kernels (torch 2.x), so
  the converted network runs here as it would on CUDA, only slower.
* EDM ``use_fp16``: the UNet on fp16 activations (weights cast on the fly), against NVlabs' golden.
* The ADM backend's load path: on CUDA the UNet is converted, the noise-aware classifier is not
  (guided-diffusion's ImageNet-128 command: ``use_fp16`` for the UNet, ``classifier_use_fp16``
  false). ``adm.FP16_DEVICE_TYPES`` names where conversion applies; adding "cpu" runs that path here.
* Classifiers under autocast: offshelf itself never enters autocast (classifiers run fp32), but a
  caller's autocast region must not leak into Eq. 4: the gradient is fp32 and finite, computed
  from fp32 logits with ``logsumexp``. CPU autocast supports bfloat16.
* DiT and its VAE in whatever dtype they are loaded in (``load_dit``/``load_vae`` ``dtype``):
  ``DiTDenoiser`` and ``decode`` return fp32, the decoder gradient is fp32, sampling stays finite.
  ``DiT256Backend`` loads both in fp32, as DiT's ``sample.py`` runs them.

Tolerances are stated beside each comparison; they are a few times the error measured on these
tiny networks (fp16: 11 significant bits, bf16: 8).
"""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from offshelf.backbones import adm
from offshelf.backends.adm128 import ADM128Backend
from offshelf.classifiers.softplus import softplus_surgery
from offshelf.guidance import ClassifierGuidance, Guidance, calibrated_log_prob
from offshelf.settings import Setting

UNET_FLAGS = dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="16",
                  class_cond=True, learn_sigma=True, num_heads=1, use_fp16=True)
# image_size 64 for the classifier's channel_mult (guided-diffusion has none for 32); it pools adaptively,
# so it classifies the UNet's 32×32 samples
CLASSIFIER_FLAGS = dict(image_size=64, classifier_width=32, classifier_depth=1, classifier_attention_resolutions="8",
                        classifier_pool="adaptive", classifier_use_fp16=False)
HALF_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)  # guided-diffusion fp16_util.convert_module_to_f16


def randomised(model: nn.Module, seed: int, std: float = 0.05) -> nn.Module:
    """ADM zero-initialises its output layers; random weights everywhere make every path count."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model.eval()


def trunk_convolution_parameters(model: nn.Module) -> set[str]:
    """Names of the parameters guided-diffusion's ``convert_to_fp16`` halves: those of every
    Conv1d/2d/3d inside ``input_blocks``, ``middle_block`` and (the UNet's) ``output_blocks``."""
    names = set()
    for part in ("input_blocks", "middle_block", "output_blocks"):
        if not hasattr(model, part):
            continue
        for module_name, module in getattr(model, part).named_modules():
            if isinstance(module, HALF_CONVOLUTIONS):
                names.update(f"{part}.{module_name}.{p}" for p, _ in module.named_parameters(recurse=False))
    return names


def half_parameters(model: nn.Module) -> set[str]:
    dtypes = {p.dtype for p in model.parameters()}
    assert dtypes <= {torch.float16, torch.float32}, dtypes
    return {n for n, p in model.named_parameters() if p.dtype == torch.float16}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


# --------------------------------------------------------------------------- ADM use_fp16


@pytest.mark.parametrize("factory, flags", [(adm.create_unet, UNET_FLAGS), (adm.create_classifier, CLASSIFIER_FLAGS)],
                         ids=["unet", "classifier"])
def test_convert_to_fp16_halves_exactly_upstreams_modules(factory, flags):
    model = randomised(factory(**flags), seed=0).convert_to_fp16()
    expected = trunk_convolution_parameters(model)
    assert half_parameters(model) == expected and len(expected) > 10
    assert model.dtype == torch.float16
    params = dict(model.named_parameters())
    assert params["input_blocks.0.0.weight"].dtype == torch.float16  # the stem convolution
    assert params["middle_block.1.qkv.weight"].dtype == torch.float16  # attention's qkv is a Conv1d
    assert params["middle_block.1.norm.weight"].dtype == torch.float32  # GroupNorm32 computes in fp32
    assert params["middle_block.0.emb_layers.1.weight"].dtype == torch.float32  # a Linear: not converted
    assert params["time_embed.0.weight"].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.out.parameters())  # the head stays fp32
    model.convert_to_fp32()
    assert half_parameters(model) == set() and model.dtype == torch.float32


def test_fp16_unet_runs_on_cpu_in_fp16_and_returns_fp32():
    fp32 = randomised(adm.create_unet(**UNET_FLAGS), seed=0)
    fp16 = randomised(adm.create_unet(**UNET_FLAGS), seed=0).convert_to_fp16()
    trunk_dtypes = []
    fp16.middle_block.register_forward_hook(lambda module, args, out: trunk_dtypes.append(out.dtype))
    g = torch.Generator().manual_seed(1)
    x, t, y = torch.randn(2, 3, 32, 32, generator=g), torch.tensor([999, 10]), torch.tensor([3, 997])
    with torch.no_grad():
        want, got = fp32(x, t, y), fp16(x, t, y)
    assert trunk_dtypes == [torch.float16]  # the trunk computed in half precision ...
    assert got.dtype == torch.float32 and torch.isfinite(got).all()  # ... and the output is fp32
    err = relative_error(got, want)
    assert 0 < err < 5e-3, err  # fp16 rounding (measured ~4e-4 of the output's range); exactly 0 = no fp16 ran


def test_fp16_on_cpu_stays_close_to_guided_diffusion(reference_dir):
    """The CUDA test in test_adm.py, on the CPU: the converted network against guided-diffusion's
    own fp32 output (golden); the CUDA test allows 5e-2, here 1e-2 (measured 1.7e-3 on outputs of size ≤ 0.92)."""
    golden = torch.load(reference_dir / "adm_tiny_golden.pt", map_location="cpu", weights_only=True)
    model = adm.create_unet(**golden["flags"]).eval()
    model.load_state_dict(golden["state_dict"], strict=True)
    model.convert_to_fp16()
    assert half_parameters(model) == trunk_convolution_parameters(model)
    with torch.no_grad():
        out = model(golden["x"], golden["t"], golden["y"])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, golden["out"], atol=1e-2, rtol=0)
    assert not torch.equal(out, golden["out"])


def test_edm_network_runs_in_fp16_on_cpu(reference_dir):
    """EDM's ``use_fp16`` (CUDA only, in EDMPrecond.forward) feeds the UNet fp16 activations and casts
    the weights on the fly; the UNet itself runs that way on the CPU too. Golden: NVlabs' tiny net."""
    from offshelf.backbones.edm import EDMPrecond

    golden = torch.load(reference_dir / "edm_tiny_golden.pt", weights_only=True)
    net = EDMPrecond(**{**golden["init_kwargs"], "use_fp16": True})
    net.load_state_dict(golden["state_dict"], strict=True)
    net.eval()
    x, labels = golden["x"], golden["class_labels"]
    sigma = golden["sigma"].reshape(-1, 1, 1, 1).float()
    c_in, c_noise = 1 / (net.sigma_data ** 2 + sigma ** 2).sqrt(), sigma.log().flatten() / 4  # EDM Table 1
    with torch.no_grad():
        want = net.model(c_in * x, c_noise, class_labels=labels)
        got = net.model((c_in * x).half(), c_noise, class_labels=labels)
        on_cpu = net(x, golden["sigma"], labels)
    assert got.dtype == torch.float16 and torch.isfinite(got).all()
    assert 0 < float((got.float() - want).abs().max()) < 1.5e-2  # measured 3.0e-3 on outputs of size ≤ 0.76
    # on the CPU EDMPrecond itself keeps fp32 (use_fp16 applies on CUDA): NVlabs' output exactly
    torch.testing.assert_close(on_cpu, golden["out"], rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def adm_files(tmp_path_factory):
    import torchvision

    folder = tmp_path_factory.mktemp("adm_fp16")
    torch.save(randomised(adm.create_unet(**UNET_FLAGS), seed=0).state_dict(), folder / "unet.pt")
    torch.save(randomised(adm.create_classifier(**CLASSIFIER_FLAGS), seed=1).state_dict(), folder / "classifier.pt")
    torch.manual_seed(2)
    resnet = folder / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), resnet)
    named = folder / f"resnet18-{hashlib.sha256(resnet.read_bytes()).hexdigest()[:8]}.pth"  # torch.hub naming
    resnet.rename(named)
    return {"denoiser": str(folder / "unet.pt"), "finetuned": str(folder / "classifier.pt"), "offshelf": str(named)}


def tiny_adm_backend() -> ADM128Backend:
    flags = {"denoiser": UNET_FLAGS, "finetuned": CLASSIFIER_FLAGS}
    return ADM128Backend({"imagenet": {"device": "cpu", "classifier": "resnet18", "fp16": True, "adm_flags": flags}})


#: Table 2's combined classifier over 3 steps: the off-the-shelf ResNet at steps 2 and 1, the
#: noise-aware classifier at step 0, so both classifiers' gradients enter the samples
COMBINED = Setting(classifier="combined", softplus_beta=3, marginal_temperature=0.5, sine_factor=0.3, switch_step=1)


def test_adm_backend_fp16_path_converts_the_unet_and_keeps_the_classifiers_fp32(adm_files, monkeypatch):
    backend = tiny_adm_backend()
    fp32 = backend.load(adm_files, {"respacing": "3"}, COMBINED)
    assert half_parameters(fp32.denoiser) == set()  # on CPU, by default, fp16 is not applied

    monkeypatch.setattr(adm, "FP16_DEVICE_TYPES", ("cuda", "cpu"))  # the CUDA path, on this CPU
    half = backend.load(adm_files, {"respacing": "3"}, COMBINED)
    assert half_parameters(half.denoiser) == trunk_convolution_parameters(half.denoiser) != set()
    assert half_parameters(half.finetuned) == set()  # classifier_use_fp16 is false upstream
    assert all(p.dtype == torch.float32 for p in half.offshelf.parameters())

    seeds = [0, 1]
    want, labels = backend.sample(fp32, COMBINED, seeds)
    got, same_labels = backend.sample(half, COMBINED, seeds)
    assert torch.equal(labels, same_labels)
    assert got.dtype == torch.float32 and torch.isfinite(got).all() and got.abs().max() <= 1
    # 3 stochastic steps from the same noise: fp16 rounding moves pixels (measured 4.1e-3 at most)
    assert 0 < float((got - want).abs().max()) < 2e-2
    assert backend.to_uint8(got).shape == (2, 32, 32, 3)


# --------------------------------------------------------------------------- classifiers and autocast


def test_eq4_is_computed_in_fp32_from_half_logits():
    """fp16 logits of ±100: exp overflows in fp16 (the official code divides exponentials), while
    Eq. 4 in fp32 with logsumexp is exact."""
    logits = torch.tensor([[100.0, 0.0, -100.0], [-100.0, 100.0, 0.0]], dtype=torch.float16)
    assert torch.isinf(logits.exp()).any()
    log_p = calibrated_log_prob(logits, torch.tensor([0, 0]), joint_temperature=1.0, marginal_temperature=0.5)
    assert log_p.dtype == torch.float32
    # τ1·f_0 − log Σ_j exp(τ2·f_j): 100 − (50 + log(1 + e^-50 + e^-100)) and −100 − (50 + log(1 + e^-50 + e^-50))
    expected = [100 - 50 - math.log1p(math.exp(-50) + math.exp(-100)), -100 - 50 - math.log1p(2 * math.exp(-50))]
    assert log_p.tolist() == pytest.approx(expected, abs=1e-5)
    bf16 = logits.to(torch.bfloat16)
    torch.testing.assert_close(calibrated_log_prob(bf16, torch.tensor([1, 2]), 1.0, 0.5),
                               calibrated_log_prob(bf16.float(), torch.tensor([1, 2]), 1.0, 0.5), rtol=0, atol=0)


def test_offshelf_guidance_gradient_stays_fp32_under_a_callers_autocast():
    import torchvision

    torch.manual_seed(3)
    classifier = softplus_surgery(torchvision.models.resnet18(num_classes=10), 3.0).eval()
    guidance = ClassifierGuidance(classifier, joint_temperature=1.0, marginal_temperature=0.5, input="x0")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4)).clamp(-1, 1)
    y = torch.tensor([1, 7])
    want, _ = guidance.gradient(x, y)
    stem = []
    handle = classifier.conv1.register_forward_hook(lambda module, args, out: stem.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, logits = guidance.gradient(x, y)
    handle.remove()
    assert stem == [torch.bfloat16]  # autocast reached the classifier: the test is not vacuous
    assert got.dtype == torch.float32 and logits.dtype == torch.float32
    assert torch.isfinite(got).all() and got.abs().sum() > 0
    assert cosine(got, want) > 0.99  # bf16 convolutions through a ResNet-18 (measured cosine 0.9966)


def test_noise_aware_classifier_gradient_stays_fp32_under_a_callers_autocast():
    classifier = randomised(adm.create_classifier(**CLASSIFIER_FLAGS), seed=5)
    guidance = ClassifierGuidance(classifier, 1.0, 1.0, "xt", time_conditioned=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    y, t = torch.tensor([2, 999]), torch.tensor([500, 20])
    want, _ = guidance.gradient(x, y, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, logits = guidance.gradient(x, y, t)
    assert got.dtype == torch.float32 and logits.dtype == torch.float32 and torch.isfinite(got).all()
    assert not torch.equal(got, want)  # bf16 ran
    assert cosine(got, want) > 0.99  # measured 0.9999


# --------------------------------------------------------------------------- DiT and its VAE


@pytest.fixture(scope="module")
def dit_folders(tmp_path_factory):
    pytest.importorskip("diffusers")
    from test_backbones_dit import tiny_transformer, tiny_vae

    root = tmp_path_factory.mktemp("dit_dtypes")
    tiny_transformer().save_pretrained(root / "transformer")
    tiny_vae().save_pretrained(root / "vae")
    return root


def dit_parts(folders, dtype):
    from offshelf.backbones.dit import DiTDenoiser, load_dit, load_vae

    return DiTDenoiser(load_dit(folders / "transformer", dtype=dtype)), load_vae(folders / "vae", dtype=dtype)


#: dtype -> (DiT output relative error, decoded pixel error, sampled image mean error) bounds;
#: measured on these networks: bf16 9.9e-3 / 1.7e-2 / 2.1e-3, fp16 1.3e-3 / 1.9e-3 / 2.8e-4 (1.6e-2 before
#: the fp16 decoder's backward was loss-scaled)
LOW_PRECISION = {torch.bfloat16: (5e-2, 5e-2, 1e-2), torch.float16: (1e-2, 1e-2, 5e-3)}


@pytest.mark.parametrize("dtype", list(LOW_PRECISION), ids=str)
def test_dit_and_vae_run_in_their_loaded_dtype_and_return_fp32(dit_folders, dtype):
    from test_backbones_dit import LATENT, _inputs

    from offshelf.samplers.dit import decode

    model_bound, pixel_bound, _ = LOW_PRECISION[dtype]
    (model32, vae32), (model, vae) = dit_parts(dit_folders, torch.float32), dit_parts(dit_folders, dtype)
    assert model.dtype == dtype and {p.dtype for p in vae.parameters()} == {dtype}
    z, t, y = _inputs()
    with torch.no_grad():
        want, got = model32(z, t, y), model(z, t, y)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert 0 < relative_error(got, want) < model_bound
    latents = torch.randn(2, *LATENT, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want, got = decode(vae32, latents), decode(vae, latents)
    assert got.dtype == torch.float32 and got.abs().max() <= 1
    assert 0 < float((got - want).abs().max()) < pixel_bound


@pytest.mark.parametrize("dtype", list(LOW_PRECISION), ids=str)
def test_guided_dit_sampling_through_a_low_precision_decoder(dit_folders, dtype):
    from test_backbones_dit import LATENT, tiny_classifier

    from offshelf.samplers.dit import decoder_gradient, dit_diffusion, dit_sample
    from offshelf.seeding import StackedRandomGenerator

    (model32, vae32), (model, vae) = dit_parts(dit_folders, torch.float32), dit_parts(dit_folders, dtype)
    guidance = ClassifierGuidance(tiny_classifier(), joint_temperature=1.0, marginal_temperature=0.5)
    # the composite classifier∘decoder gradient: fp32, from a decoder in low precision
    latents = 0.5 * torch.randn(2, *LATENT, generator=torch.Generator().manual_seed(8))
    target = torch.tensor([1, 2])
    want, _ = decoder_gradient(guidance, vae32, latents, target, None)
    got, logits = decoder_gradient(guidance, vae, latents, target, None)
    assert got.dtype == torch.float32 and logits.dtype == torch.float32 and torch.isfinite(got).all()
    # the clamp at ±1 zeroes the gradient of pixels that cross it between precisions, so only the
    # direction is compared (measured cosine 0.9945 for bf16, 0.99999 for fp16)
    assert cosine(got, want) > 0.98
    diffusion, labels = dit_diffusion("10"), torch.tensor([2, 7])
    guided = Guidance(guidance, scale=0.5, sine_factor=0.3)
    images32 = dit_sample(model32, StackedRandomGenerator([0, 1]), diffusion, guidance=guided, vae=vae32,
                          latent_shape=LATENT, y=labels)
    images = dit_sample(model, StackedRandomGenerator([0, 1]), diffusion, guidance=guided, vae=vae,
                        latent_shape=LATENT, y=labels)
    assert images.dtype == torch.float32 and torch.isfinite(images).all() and images.abs().max() <= 1
    assert 0 < float((images - images32).abs().mean()) < LOW_PRECISION[dtype][2]


def test_fp16_decoder_gradient_is_loss_scaled_and_fp32_is_untouched(dit_folders):
    """At the ẑ0 of a real (tiny) trajectory the gradient entering an fp16 decoder's backward is
    ~1e-7 per element and underflows fp16; decoder_gradient scales it (FP16_DECODER_LOSS_SCALE)."""
    from test_backbones_dit import LATENT, tiny_classifier

    from offshelf.guidance import calibrated_gradient
    from offshelf.samplers.dit import decode, decoder_gradient, dit_diffusion, dit_sample
    from offshelf.seeding import StackedRandomGenerator

    (model32, vae32), (_, vae16) = dit_parts(dit_folders, torch.float32), dit_parts(dit_folders, torch.float16)
    guidance = ClassifierGuidance(tiny_classifier(), joint_temperature=1.0, marginal_temperature=0.5)
    labels, steps = torch.tensor([2, 7]), []
    dit_sample(model32, StackedRandomGenerator([0, 1]), dit_diffusion("10"),
               guidance=Guidance(guidance, scale=0.5, sine_factor=0.3), callback=lambda **kw: steps.append(kw),
               vae=vae32, latent_shape=LATENT, y=labels)
    x0 = steps[0]["pred_xstart"]  # the first (noisiest) step

    def unscaled(vae):
        return calibrated_gradient(x0, labels, lambda z: guidance.logits(decode(vae, z)), 1.0, 0.5)[0]

    want = unscaled(vae32)
    assert torch.equal(decoder_gradient(guidance, vae32, x0, labels, None)[0], want)  # fp32: no scaling
    assert cosine(unscaled(vae16), want) < 0.95  # the underflow (measured cosine 0.87)
    got, _ = decoder_gradient(guidance, vae16, x0, labels, None)
    assert got.dtype == torch.float32 and cosine(got, want) > 0.999  # measured 1.0000


def test_dit_backend_loads_fp32_as_dit_sample_py_runs(dit_folders):
    from offshelf.backends.dit256 import DiT256Backend

    backend = DiT256Backend({"imagenet": {"device": "cpu", "vae": str(dit_folders / "vae")}})
    setting = Setting(method="cfg", cfg_scale=1.5)
    models = backend.load({"denoiser": str(dit_folders / "transformer")}, {"respacing": "3"}, setting)
    assert models.denoiser.dtype == torch.float32 and {p.dtype for p in models.vae.parameters()} == {torch.float32}
    images, labels = backend.sample(models, setting, [0, 1])
    assert images.dtype == torch.float32 and torch.isfinite(images).all() and images.shape == (2, 3, 16, 16)
    assert backend.to_uint8(images).dtype.name == "uint8" and labels.shape == (2,)
