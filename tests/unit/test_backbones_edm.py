"""EDM backbone, pickle loader and Algorithm 2 sampler against NVlabs/edm's own outputs."""

import json
import math
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from offshelf.backbones.edm import (IMAGENET64_COND_ADM_KWARGS, EDMPrecond, UnsafePickleError,
                                    load_edm_pickle)
from offshelf.guidance import ClassifierGuidance, Guidance, SwitchedGuidance, edm_step_size
from offshelf.samplers.edm import edm_sample, guidance_displacement, time_steps
from offshelf.seeding import StackedRandomGenerator


@pytest.fixture
def golden(reference_dir):
    return torch.load(reference_dir / "edm_tiny_golden.pt", weights_only=True)


@pytest.fixture
def tiny_net(golden):
    net = EDMPrecond(**golden["init_kwargs"])
    net.load_state_dict(golden["state_dict"], strict=True)
    return net.eval().requires_grad_(False)


def tiny_classifier(num_classes=10, seed=0):
    """A small random Softplus CNN standing in for the ResNet (any input size)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Softplus(beta=5), nn.Conv2d(16, 16, 3, padding=1),
                         nn.Softplus(beta=5), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, num_classes)).eval()


# --- network ------------------------------------------------------------------------------------

def test_full_size_network_has_official_parameters(reference_dir):
    manifest = json.loads((reference_dir / "edm_state_dict_manifest.json").read_text())["edm_imagenet64_cond_adm"]
    with torch.device("meta"):
        net = EDMPrecond(**IMAGENET64_COND_ADM_KWARGS)
    shapes = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert sorted(shapes) == sorted(manifest)
    assert shapes == manifest


def test_denoiser_matches_nvlabs(golden, tiny_net):
    with torch.no_grad():
        out = tiny_net(golden["x"], golden["sigma"], golden["class_labels"])
    torch.testing.assert_close(out, golden["out"], rtol=0, atol=1e-5)


def test_scalar_sigma_broadcasts_like_per_sample_sigma(golden, tiny_net):
    x, y = golden["x"], golden["class_labels"]
    with torch.no_grad():
        per_sample = tiny_net(x, torch.full([3], 2.5), y)
        scalar = tiny_net(x, torch.tensor(2.5, dtype=torch.float64), y)
    torch.testing.assert_close(scalar, per_sample, rtol=0, atol=1e-6)


def test_preconditioning_limits(golden, tiny_net):
    """c_skip → 1 and c_out → 0 as σ → 0: D(x; σ) ≈ x for tiny σ."""
    x = golden["x"]
    with torch.no_grad():
        out = tiny_net(x, torch.full([3], 1e-4), golden["class_labels"])
    torch.testing.assert_close(out, x, rtol=0, atol=1e-3)


# --- pickle loader -----------------------------------------------------------------------------

def test_pickle_loader_reproduces_nvlabs(reference_dir, golden):
    before = set(sys.modules)
    net = load_edm_pickle(reference_dir / "edm_tiny_network.pkl")
    assert not any(m.split(".")[0] in ("torch_utils", "dnnlib", "training") for m in set(sys.modules) - before)
    assert not net.training
    assert (net.img_resolution, net.img_channels, net.label_dim) == (16, 3, 10)
    assert (net.sigma_min, net.sigma_max, net.sigma_data) == (0, math.inf, 0.5)
    with torch.no_grad():
        out = net(golden["x"], golden["sigma"], golden["class_labels"])
    torch.testing.assert_close(out, golden["out"], rtol=0, atol=1e-5)
    for name, tensor in golden["state_dict"].items():
        torch.testing.assert_close(net.state_dict()[name], tensor, rtol=0, atol=0)


class _RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_loader_refuses_unlisted_globals(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": _RunsAShellCommand(marker)}))
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl.*(posix|os)\.system"):
        load_edm_pickle(path)
    assert not marker.exists()


def test_pickle_loader_names_a_truncated_file(reference_dir, tmp_path):
    data = (reference_dir / "edm_tiny_network.pkl").read_bytes()
    path = tmp_path / "truncated.pkl"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated\.pkl"):
        load_edm_pickle(path)
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match=r"garbage\.pkl"):
        load_edm_pickle(garbage)


def test_pickle_loader_names_a_missing_key(tmp_path):
    path = tmp_path / "no_ema.pkl"
    path.write_bytes(pickle.dumps({"augment_pipe": None}))
    with pytest.raises(KeyError, match=r"no_ema\.pkl.*'ema'"):
        load_edm_pickle(path)


# --- sampler ------------------------------------------------------------------------------------

def test_heun_sampler_matches_nvlabs(reference_dir, tiny_net):
    ref = torch.load(reference_dir / "edm_tiny_heun10_golden.pt", weights_only=True)
    out = edm_sample(tiny_net, ref["latents"], ref["num_steps"], y=ref["class_labels"],
                     sigma_min=ref["sigma_min"], sigma_max=ref["sigma_max"], rho=ref["rho"])
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref["out"], rtol=0, atol=1e-6)



CHURN_GOLDEN = Path(__file__).parents[1] / "fixtures" / "edm_churn_golden.pt"


class Float32ChurnGenerator(StackedRandomGenerator):
    """The old draw: churn noise in float32, cast to the float64 trajectory."""

    def randn_like(self, x):
        return self.randn(x.shape[1:], dtype=torch.float32).to(x.dtype)


def churn_sample(net, ref, rng_class):
    """edm64's draws for one batch: latent, then class, then the sampler's churn noise, per seed."""
    rng = rng_class(ref["seeds"], seed_bits=32)
    latents = rng.randn((net.img_channels, net.img_resolution, net.img_resolution))
    labels = rng.randint(net.label_dim)
    assert torch.equal(latents, ref["latents"]) and torch.equal(labels, ref["class_labels"].argmax(1))
    kwargs = dict(ref["sampler_kwargs"])
    return edm_sample(net, latents, kwargs.pop("num_steps"), y=torch.nn.functional.one_hot(labels, net.label_dim).float(),
                      rng=rng, **kwargs)


def test_stochastic_sampler_matches_nvlabs(tiny_net):
    """NVlabs' own edm_sampler with ImageNet-64's churn (S_churn 40, S_min 0.05, S_max 50,
    S_noise 1.003, 18 steps) from generate.py's generator (tests/fixtures/make_edm_churn_golden.py):
    the same seeds give the same images. The churn noise must be drawn in float64 like
    generate.py's randn_like; the float32 draw cast up gives other images (max |Δ| ≈ 3.1 here)."""
    ref = torch.load(CHURN_GOLDEN, weights_only=True)
    out = churn_sample(tiny_net, ref, StackedRandomGenerator)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref["out"], rtol=0, atol=1e-5)
    assert (churn_sample(tiny_net, ref, Float32ChurnGenerator) - ref["out"]).abs().max() > 1e-3


def test_edm_backend_churn_rows_give_nvlabs_images(tiny_net):
    """A config row's S_churn, S_min, S_max, S_noise reach the sampler: edm64's sample job for
    the golden's seeds gives generate.py's stochastic images and labels."""
    from offshelf.backends.edm64 import EDM64Backend, EDMModels
    from offshelf.settings import Setting

    ref = torch.load(CHURN_GOLDEN, weights_only=True)
    kwargs = dict(ref["sampler_kwargs"])
    setting = Setting(method="unguided", **kwargs)
    backend = EDM64Backend({"imagenet": {"device": "cpu"}})
    from offshelf.backends.capabilities import unavailable

    assert unavailable(backend, setting) is None
    images, labels = backend.sample(EDMModels(tiny_net, None, torch.device("cpu")), setting, ref["seeds"])
    assert labels.tolist() == ref["class_labels"].argmax(1).tolist()
    torch.testing.assert_close(images, ref["out"], rtol=0, atol=1e-5)


def test_noise_is_drawn_in_the_tensors_dtype():
    """float32 draws (latents, DDPM and DiT noise) are the float32 stream itself; float64 is its own."""
    x32, x64 = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    plain = torch.stack([torch.randn((3, 4, 4), generator=torch.Generator().manual_seed(s)) for s in (5, 6)])
    assert torch.equal(StackedRandomGenerator([5, 6]).randn((3, 4, 4)), plain)
    assert torch.equal(StackedRandomGenerator([5, 6]).randn_like(x32), plain)
    wide = StackedRandomGenerator([5, 6]).randn_like(x64)
    assert wide.dtype == torch.float64
    assert torch.equal(wide[1], torch.randn((3, 4, 4), generator=torch.Generator().manual_seed(6), dtype=torch.float64))
    assert not torch.allclose(wide, plain.double(), atol=1e-3)


def test_time_grid(tiny_net):
    t = time_steps(tiny_net, 10)
    assert len(t) == 11 and t.dtype == torch.float64
    assert t[0].item() == pytest.approx(80.0) and t[9].item() == pytest.approx(0.002) and t[10].item() == 0
    assert bool((t[1:] < t[:-1]).all())


def test_step_size_by_hand():
    # N = 10, w = 0.004, γ = 0.3:  w_i = max(w·(11 − i)/11, 1e−5) + sin(πi/10)·w·γ
    assert edm_step_size(0, 10, 0.004, 0.3) == pytest.approx(0.004, abs=1e-15)
    assert edm_step_size(5, 10, 0.004, 0.3) == pytest.approx(0.024 / 11 + 0.0012, abs=1e-15)  # 0.0033818…
    assert edm_step_size(9, 10, 0.004, 0.3) == pytest.approx(0.008 / 11 + 0.0012 * math.sin(math.pi / 10),
                                                             abs=1e-15)  # 0.0010981…
    assert edm_step_size(9, 10, 0.004, 0.3) == pytest.approx(0.00109809312, abs=1e-11)


def test_guided_displacement_has_relative_rms(golden, tiny_net):
    """Every step moves each sample by exactly w_i·RMS(x_i), whatever the gradient's size."""
    guidance = ClassifierGuidance(tiny_classifier(), joint_temperature=1.0, marginal_temperature=0.0, input="xt")
    seen = []
    latents = torch.randn([3, 3, 16, 16], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    edm_sample(tiny_net, latents, 5, guidance=Guidance(guidance, scale=0.004, sine_factor=0.3),
               callback=lambda **kw: seen.append(kw), y=golden["class_labels"])
    assert len(seen) == 5
    for info in seen:
        w_i = edm_step_size(info["step"], 5, 0.004, 0.3)
        rms_x = info["x_t"].pow(2).flatten(1).mean(1).sqrt()
        rms_g = info["displacement"].pow(2).flatten(1).mean(1).sqrt()
        torch.testing.assert_close(rms_g, w_i * rms_x, rtol=1e-10, atol=0)
        assert info["logits"].shape == (3, 10)


def test_guidance_displacement_raises_target_logit():
    classifier = tiny_classifier()
    guidance = ClassifierGuidance(classifier, joint_temperature=1.0, marginal_temperature=0.0, input="xt")
    gen = torch.Generator().manual_seed(2)
    y = torch.tensor([0, 3, 7, 9])
    for scale in (0.5, 30.0):  # both branches: u = x and u = x / RMS(x)
        x = scale * torch.randn([4, 3, 16, 16], generator=gen, dtype=torch.float64)
        g, u, _, _ = guidance_displacement(guidance, x, y, step_size=1e-3)
        r = x.pow(2).flatten(1).mean(1).sqrt().view(-1, 1, 1, 1)
        u_moved = torch.where(r > 1, (x + g) / r, x + g)  # the classifier's view of the guided sample
        with torch.no_grad():
            before = classifier(u.float()).gather(1, y[:, None])[:, 0]
            after = classifier(u_moved.float()).gather(1, y[:, None])[:, 0]
        assert bool((after > before).all()), (scale, after - before)


def test_guidance_input_normalisation():
    guidance = ClassifierGuidance(tiny_classifier(), marginal_temperature=0.0, input="xt")
    x = torch.randn([2, 3, 16, 16], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = x / x.pow(2).flatten(1).mean(1).sqrt().view(-1, 1, 1, 1)
    x[0] *= 5.0   # RMS 5 > 1: divided by its RMS
    x[1] *= 0.5   # RMS 0.5 <= 1: passed through
    y = torch.tensor([1, 2])
    g, u, g_raw, _ = guidance_displacement(guidance, x, y, step_size=0.01)
    torch.testing.assert_close(u[0], x[0] / 5.0, rtol=1e-12, atol=0)
    torch.testing.assert_close(u[1], x[1], rtol=0, atol=0)
    expected, _ = guidance.gradient(u, y)
    torch.testing.assert_close(g_raw, expected.double(), rtol=0, atol=0)


def test_guided_sampling_is_deterministic_and_moves_samples(golden, tiny_net):
    guidance = ClassifierGuidance(tiny_classifier(), marginal_temperature=0.0, input="xt")
    latents = torch.randn([3, 3, 16, 16], generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    guided = Guidance(guidance, scale=0.004, sine_factor=0.3)
    plain = edm_sample(tiny_net, latents, 4, y=golden["class_labels"])
    a = edm_sample(tiny_net, latents, 4, guidance=guided, y=golden["class_labels"])
    b = edm_sample(tiny_net, latents, 4, guidance=guided, y=golden["class_labels"])
    assert torch.equal(a, b)
    assert (a - plain).abs().max() > 1e-4


def test_sampler_rejects_bad_guidance_setup(golden, tiny_net):
    latents = torch.zeros([3, 3, 16, 16], dtype=torch.float64)
    with pytest.raises(ValueError, match="input='xt'"):
        edm_sample(tiny_net, latents, guidance=Guidance(ClassifierGuidance(tiny_classifier())),
                   y=golden["class_labels"])
    with pytest.raises(ValueError, match="needs y"):
        edm_sample(tiny_net, latents, guidance=Guidance(ClassifierGuidance(tiny_classifier(), input="xt")))
    with pytest.raises(ValueError, match="edm_sample cannot honour Guidance.through_denoiser=True"):
        edm_sample(tiny_net, latents, y=golden["class_labels"],
                   guidance=Guidance(ClassifierGuidance(tiny_classifier(), input="xt"), through_denoiser=True))
    with pytest.raises(ValueError, match="Guidance.classifier=SwitchedGuidance"):
        xt = ClassifierGuidance(tiny_classifier(), input="xt")
        edm_sample(tiny_net, latents, y=golden["class_labels"], guidance=Guidance(SwitchedGuidance(xt, xt, 2)))
    with pytest.raises(ValueError, match="rng"):
        edm_sample(tiny_net, latents, y=golden["class_labels"], S_churn=40)


def test_churn_noise_is_per_sample(golden, tiny_net):
    """With S_churn the noise of sample i comes from seed i: a one-sample shard reproduces it."""
    latents = torch.randn([3, 3, 16, 16], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    y = golden["class_labels"]
    kwargs = dict(num_steps=4, S_churn=40, S_min=0.05, S_max=50, S_noise=1.003)
    batch = edm_sample(tiny_net, latents, y=y, rng=StackedRandomGenerator([10, 11, 12]), **kwargs)
    alone = edm_sample(tiny_net, latents[1:2], y=y[1:2], rng=StackedRandomGenerator([11]), **kwargs)
    # fp32 convolutions differ slightly with batch size; the noise itself is identical
    torch.testing.assert_close(alone[0], batch[1], rtol=1e-4, atol=1e-4)
    deterministic = edm_sample(tiny_net, latents, 4, y=y)
    assert (batch - deterministic).abs().max() > 1e-3


# --- class labels as NVlabs' generate.py draws them -------------------------------------------------

class OfficialStackedRandomGenerator:
    """NVlabs/edm generate.py's StackedRandomGenerator, transcribed (HEAD 008a4e5, lines 182-196)."""

    def __init__(self, device, seeds):
        self.generators = [torch.Generator(device).manual_seed(int(seed) % (1 << 32)) for seed in seeds]

    def randn(self, size, **kwargs):
        assert size[0] == len(self.generators)
        return torch.stack([torch.randn(size[1:], generator=gen, **kwargs) for gen in self.generators])

    def randint(self, *args, size, **kwargs):
        assert size[0] == len(self.generators)
        return torch.stack([torch.randint(*args, size=size[1:], generator=gen, **kwargs) for gen in self.generators])


def official_batch(net, batch_seeds, device=torch.device("cpu")):
    """generate.py's "Pick latents and labels" block for one batch (lines 280-285), transcribed."""
    batch_size = len(batch_seeds)
    rnd = OfficialStackedRandomGenerator(device, batch_seeds)
    latents = rnd.randn([batch_size, net.img_channels, net.img_resolution, net.img_resolution], device=device)
    class_labels = torch.eye(net.label_dim, device=device)[rnd.randint(net.label_dim, size=[batch_size], device=device)]
    return latents, class_labels


@pytest.mark.parametrize("splits", [[[0, 1, 2, 3, 4, 5]], [[0], [1, 2], [3, 4, 5]], [[5, 4], [3, 2, 1, 0]]])
def test_edm_backend_draws_labels_and_latents_as_generate_py(tiny_net, splits):
    """The same seed gives the official label and image (labels drawn from each seed's generator
    after its latent), whatever the batches: each draw comes from the sample's own generator."""
    from offshelf.backends.edm64 import EDM64Backend, EDMModels
    from offshelf.seeding import draw_labels
    from offshelf.settings import Setting

    backend = EDM64Backend({"imagenet": {"device": "cpu"}})
    models = EDMModels(tiny_net, None, torch.device("cpu"))
    setting = Setting(method="unguided", num_steps=3)
    seeds = [s for batch in splits for s in batch]
    official_latents, official_labels = official_batch(tiny_net, seeds)  # one official batch of all seeds
    ours = [backend.sample(models, setting, batch) for batch in splits]
    images, labels = torch.cat([x for x, _ in ours]), torch.cat([y for _, y in ours])
    assert labels.tolist() == official_labels.argmax(1).tolist()
    # the official image of each seed: its latent and one-hot through the same Heun sampler
    expected = edm_sample(tiny_net, official_latents, 3, y=official_labels)
    # (float32 round-off of other batch sizes: ~2e-5; another latent or class moves pixels by O(0.1))
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-4)
    # the old draw (a separate generator per label) gives other classes for these seeds
    assert draw_labels(seeds, tiny_net.label_dim).tolist() != labels.tolist()


def test_official_labels_do_not_depend_on_the_batch(tiny_net):
    """generate.py's own labels are per seed too (a property the reproduction relies on)."""
    _, together = official_batch(tiny_net, [7, 8, 9])
    alone = torch.cat([official_batch(tiny_net, [s])[1] for s in (7, 8, 9)])
    assert torch.equal(together, alone)
