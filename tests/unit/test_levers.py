"""Speed levers (offshelf.levers) on CPU: channels_last and torch.compile give eager fp32's guided
samples within 1e-5 after the whole loop, bf16 within a stated bound, and any batch size (1, 7,
auto) gives bitwise the same shard; on the ADM, EDM and DiT tiny goldens and the digits backend.

Each comparison also runs against a deliberate perturbation of the lever (a weight nudged by
1e-3, a batch-dependent draw, bf16 with its mantissa cut further) and must see it: the checks
have teeth."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn

from conftest import train_tiny_digits
from offshelf import stages
from offshelf.backends.capabilities import requested_levers, unsupported_lever
from offshelf.backends.digits import DigitsBackend
from offshelf.guidance import ClassifierGuidance, Guidance
from offshelf.levers import (CPU_AUTO_BATCH, PROBE_DENOISER_CALLS, CompileClock, Levers, LeveredNet, apply_levers,
                             auto_batch_size, job_compile_seconds, probe_sampler)
from offshelf.seeding import StackedRandomGenerator
from offshelf.settings import Setting

#: channels_last and compile reorder fp32 sums (other kernels, fused reductions): the issue's bound
#: on the final guided samples, in [-1, 1] (:func:`max_difference`)
FP32_REORDER_TOLERANCE = 1e-5
STEPS = 5

# bf16 keeps 8 significant bits (unit round-off 2^-8). How far that moves a whole guided loop
# depends on the network: the tiny random ADM UNet amplifies every change, EDM's preconditioning
# damps it. So the bound is the fixture's own: BF16_FACTOR times the error of an emulation that
# rounds every layer's output to bf16's 8 significant bits in fp32 (:func:`rounded_layers`).
# Autocast also rounds each layer's inputs and weights, so bf16's error is a small multiple of the
# emulation's: measured 1.1x (ADM), 5.8x (EDM), 2.1x (DiT), 2.2x (digits); 8 leaves a margin. A
# format 4 bits coarser (the emulation at 4 bits) gives 12x to 29x: over the bound on every fixture
# (test_a_coarser_precision_than_bf16_fails_the_bf16_bound).
BF16_BITS = 8
BF16_FACTOR = 8.0


def tiny_classifier(channels: int, num_classes: int = 10, seed: int = 2) -> nn.Module:
    """A small Softplus CNN standing in for the ResNet (any input size)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.Softplus(beta=3),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.Softplus(beta=3), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, num_classes)).eval().requires_grad_(False)


@dataclass
class Case:
    """One backbone's guided sampling: ``run(levers) -> images`` with every network under ``levers``."""

    name: str
    run: Callable[[Levers], torch.Tensor]


def adm_case(reference_dir) -> Case:
    from offshelf.backbones.adm import create_unet
    from offshelf.diffusion import GaussianDiffusion
    from offshelf.samplers.ddpm import ddpm_sample

    golden = torch.load(reference_dir / "adm_tiny_golden.pt", map_location="cpu", weights_only=True)
    unet = create_unet(**golden["flags"]).eval().requires_grad_(False)
    unet.load_state_dict(golden["state_dict"], strict=True)
    classifier = tiny_classifier(3)
    diffusion = GaussianDiffusion.respaced(1000, str(STEPS), "linear", "learned_range")

    def run(levers: Levers) -> torch.Tensor:
        clock = CompileClock()
        guide = ClassifierGuidance(levers.classifier(copy.deepcopy(classifier), clock), 1.0, 0.5, "x0")
        return ddpm_sample(levers.denoiser(copy.deepcopy(unet), clock), StackedRandomGenerator([0, 1]), diffusion,
                           guidance=Guidance(guide, scale=1.0, sine_factor=0.3), shape=(3, 32, 32),
                           y=torch.tensor([1, 2]))
    return Case("adm", run)


def edm_case(reference_dir) -> Case:
    from offshelf.backbones.edm import EDMPrecond
    from offshelf.samplers.edm import edm_sample

    golden = torch.load(reference_dir / "edm_tiny_golden.pt", weights_only=True)
    net = EDMPrecond(**golden["init_kwargs"])
    net.load_state_dict(golden["state_dict"], strict=True)
    net = net.eval().requires_grad_(False)
    classifier = tiny_classifier(3)

    def run(levers: Levers) -> torch.Tensor:
        clock = CompileClock()
        rng = StackedRandomGenerator([0, 1], seed_bits=32)
        latents = rng.randn((3, 16, 16))
        guide = ClassifierGuidance(levers.classifier(copy.deepcopy(classifier), clock), 1.0, 0.0, "xt")
        one_hot = nn.functional.one_hot(torch.tensor([1, 2]), 10).float()
        return edm_sample(levers.denoiser(copy.deepcopy(net), clock), latents, STEPS,
                          guidance=Guidance(guide, scale=1.0, sine_factor=0.3), y=one_hot, rng=rng)
    return Case("edm", run)


def dit_case() -> Case:
    diffusers = pytest.importorskip("diffusers")
    from offshelf.backbones.dit import DiTDenoiser
    from offshelf.samplers.dit import dit_diffusion, dit_sample

    torch.manual_seed(0)
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        sample_size=8, patch_size=2, num_embeds_ada_norm=10)
    with torch.no_grad():  # DiT zero-inits its adaLN / output layers; randomise everything
        for p in transformer.parameters():
            p.normal_(0, 0.2)
    denoiser = DiTDenoiser(transformer.eval()).requires_grad_(False)
    torch.manual_seed(1)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=16).eval().requires_grad_(False)
    classifier = tiny_classifier(3)
    diffusion = dit_diffusion(str(STEPS))

    def run(levers: Levers) -> torch.Tensor:
        clock = CompileClock()
        guide = ClassifierGuidance(levers.classifier(copy.deepcopy(classifier), clock), 1.0, 0.5, "x0")
        return dit_sample(levers.denoiser(copy.deepcopy(denoiser), clock), StackedRandomGenerator([0, 1]), diffusion,
                          guidance=Guidance(guide, scale=1.0, sine_factor=0.3, schedule="adm"),
                          vae=levers.decoder(copy.deepcopy(vae)), latent_shape=(4, 8, 8), y=torch.tensor([2, 7]),
                          cfg_scale=1.5)
    return Case("dit", run)


DIGITS_SETTING = Setting(method="guided", classifier="offshelf", input="x0", softplus_beta=3.0,
                         marginal_temperature=0.5, sine_factor=0.3, scale=2.0)


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory):
    return train_tiny_digits(tmp_path_factory.mktemp("digits_levers"), steps=3, batch_size=16)


def digits_sampling(**levers) -> dict:
    return {"respacing": str(STEPS), "variance": "fixed_large", "batch_size": 4, **levers}


def digits_case(files) -> Case:
    """Through the backend itself: DigitsBackend.load applies the levers the sampling section names."""
    backend = DigitsBackend()

    def run(levers: Levers) -> torch.Tensor:
        sampling = digits_sampling(**lever_keys(levers))
        models = backend.load(files, sampling, DIGITS_SETTING)
        return backend.sample(models, DIGITS_SETTING, [0, 1, 2, 3])[0]
    return Case("digits", run)


def lever_keys(levers: Levers) -> dict:
    """The ``sampling:`` keys that ask for ``levers`` (the inverse of Levers.from_sampling)."""
    keys = {"precision": {"classifier": levers.classifier_precision}, "channels_last": levers.channels_last,
            "compile": {"mode": levers.compile_mode} if levers.compile_mode else False}
    if levers.denoiser_precision:
        keys["precision"]["denoiser"] = levers.denoiser_precision
    return keys


@pytest.fixture(params=["adm", "edm", "dit", "digits"])
def case(request, reference_dir):
    if request.param == "digits":
        return digits_case(request.getfixturevalue("digits_files"))
    return {"adm": lambda: adm_case(reference_dir), "edm": lambda: edm_case(reference_dir), "dit": dit_case}[
        request.param]()


EAGER = Levers()


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| on the scale of samples in [−1, 1]: divided by max(1, max |b|). Round-off is
    relative, and the EDM fixture's random weights leave its images near ±17, not in [−1, 1]
    (the digits, ADM and DiT samples are clamped there, so for them this is max |a − b| itself)."""
    assert a.shape == b.shape and torch.isfinite(a).all() and torch.isfinite(b).all()
    return float((a.double() - b.double()).abs().max() / max(1.0, float(b.double().abs().max())))


# ------------------------------------------------------------------ equivalence

def test_channels_last_equals_eager_fp32(case):
    eager = case.run(EAGER)
    assert max_difference(case.run(Levers(channels_last=True)), eager) <= FP32_REORDER_TOLERANCE


def rounded_layers(bits: int):
    """A LeveredNet whose every leaf module's output is rounded to ``bits`` significant bits (fp32
    storage; straight through, so the classifier's gradient is the network's own)."""
    class Rounded(LeveredNet):
        def __init__(self, net, *args, **kwargs):
            super().__init__(net, *args, **kwargs)
            for module in net.modules():
                if not list(module.children()):
                    module.register_forward_hook(lambda _m, _i, out: out + (round_to_bits(out, bits) - out).detach()
                                                 if torch.is_tensor(out) and out.is_floating_point() else out)
    return Rounded


def emulated_error(case: Case, eager: torch.Tensor, bits: int, monkeypatch) -> float:
    import offshelf.levers as levers_module

    with monkeypatch.context() as patch:
        patch.setattr(levers_module, "LeveredNet", rounded_layers(bits))
        return max_difference(case.run(Levers(channels_last=True)), eager)  # a lever on: the nets get wrapped


def test_bf16_stays_within_its_bound(case, monkeypatch):
    eager = case.run(EAGER)
    bound = BF16_FACTOR * emulated_error(case, eager, BF16_BITS, monkeypatch)
    difference = max_difference(case.run(Levers(denoiser_precision="bf16", classifier_precision="bf16")), eager)
    assert 0 < difference <= bound, f"{case.name}: bf16 differs by {difference:.3g}, bound {bound:.3g}"


@pytest.mark.slow  # torch.compile's C++ code generation on CPU: minutes on a busy 2-core machine
def test_compile_equals_eager_fp32(digits_files):
    """The smallest fixture (the digits backend's networks, 5 steps, four samples) compiled with
    inductor through the backend: the denoiser's forward, the classifier's forward and input gradient."""
    case = digits_case(digits_files)
    eager = case.run(EAGER)
    assert max_difference(case.run(Levers(compile_mode="default")), eager) <= FP32_REORDER_TOLERANCE


# ------------------------------------------------------------------ the checks have teeth

def nudge_weights(net: nn.Module) -> None:
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1 + 1e-3)


def test_a_lever_that_moves_the_weights_by_1e_3_fails_the_fp32_bound(case, monkeypatch):
    """channels_last that also (silently) moved the denoiser's weights by a relative 1e-3."""
    eager = case.run(EAGER)
    apply = Levers.denoiser

    def denoiser_with_a_moved_weight(self, net, clock=None):
        net = apply(self, net, clock)
        nudge_weights(net)
        return net
    monkeypatch.setattr(Levers, "denoiser", denoiser_with_a_moved_weight)
    assert max_difference(case.run(Levers(channels_last=True)), eager) > FP32_REORDER_TOLERANCE


def test_a_coarser_precision_than_bf16_fails_the_bf16_bound(case, monkeypatch):
    """Every layer rounded to 4 significant bits (bf16 less 4 bits) is beyond the bf16 bound."""
    eager = case.run(EAGER)
    bound = BF16_FACTOR * emulated_error(case, eager, BF16_BITS, monkeypatch)
    assert emulated_error(case, eager, BF16_BITS - 4, monkeypatch) > bound


def round_to_bits(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``x`` rounded to ``bits`` significant bits."""
    mantissa, exponent = torch.frexp(x)
    return torch.ldexp(torch.round(mantissa * 2 ** bits) / 2 ** bits, exponent)


# ------------------------------------------------------------------ batch size

@pytest.fixture(scope="module")
def digits_models(digits_files):
    return DigitsBackend(), DigitsBackend().load(digits_files, digits_sampling(), DIGITS_SETTING)


def shard_arrays(tmp_path, name, backend, models, batch_size, seeds) -> dict[str, np.ndarray]:
    from offshelf.shards import save_shard

    facts = {"levers": Levers().description()}
    images, labels, seconds = stages.sample_shard(backend, models, DIGITS_SETTING, seeds, batch_size, facts=facts)
    path = tmp_path / f"{name}.npz"
    save_shard(path, images, labels, seeds, seconds, facts)
    with np.load(path) as shard:
        return {k: shard[k] for k in shard.files}


def test_batch_sizes_1_7_and_auto_give_bitwise_identical_shards(tmp_path, digits_models):
    backend, models = digits_models
    seeds = list(range(100, 140))  # 40 samples: auto (32 on a CPU) splits them too
    shards = {b: shard_arrays(tmp_path, f"b{b}", backend, models, b, seeds) for b in (1, 7, "auto")}
    assert int(shards["auto"]["batch_size"]) == CPU_AUTO_BATCH and int(shards[7]["batch_size"]) == 7
    for b in (7, "auto"):
        for key in ("arr_0", "arr_1", "seeds"):
            assert shards[b][key].dtype == shards[1][key].dtype
            assert np.array_equal(shards[b][key], shards[1][key]), f"batch {b}: {key} differs from batch 1"
        assert str(shards[b]["levers"]) == str(shards[1]["levers"])


def test_a_batch_dependent_draw_breaks_the_shard_check(tmp_path, digits_models, monkeypatch):
    """The bitwise check sees a sampler whose noise depends on the batch (one generator per batch)."""
    backend, models = digits_models
    import offshelf.backends.ddpm as ddpm

    class SharedStream(StackedRandomGenerator):
        def randn(self, shape, dtype=torch.float32):
            generator = torch.Generator().manual_seed(self.seeds[0])
            return torch.randn((len(self.seeds), *shape), generator=generator, dtype=dtype)

    monkeypatch.setattr(ddpm, "StackedRandomGenerator", SharedStream)
    seeds = list(range(100, 114))
    one, seven = (shard_arrays(tmp_path, f"b{b}", backend, models, b, seeds)["arr_0"] for b in (1, 7))
    assert not np.array_equal(one, seven)


def test_auto_batch_on_a_cpu_is_documented_constant_capped_by_the_shard():
    assert auto_batch_size("cpu", probe=lambda b: pytest.fail("no probe on a CPU"), limit=1000) == CPU_AUTO_BATCH
    assert auto_batch_size("cpu", probe=lambda b: None, limit=5) == 5


def test_a_search_round_probes_auto_once_for_all_its_scales(tmp_path, digits_files, digits_models, monkeypatch):
    """A search round's job (stages.evaluate_round, all the job does between loading and writing)
    samples one setting at several scales: `batch_size: auto` probes the device once for the
    job, not once per evaluation. What the probe depends on is probed anew: another sampler (here
    recurrent steps) or another shard size; the scale alone is not."""
    import offshelf.levers as levers
    from offshelf.atomic import save_npz

    backend, models = digits_models
    probes = []  # the shard size of each probe of the device (on a CPU, its documented constant)
    probe_device = levers.auto_batch_size
    monkeypatch.setattr(levers, "auto_batch_size",
                        lambda device, probe, limit: probes.append(limit) or probe_device(device, probe, limit))
    reference = tmp_path / "reference.npz"
    save_npz(reference, **stages.reference_features(backend, digits_files, {"reference_split": "test"}))
    judge = stages.load_judge(backend, stages.judge_files(backend, digits_files), reference)
    evaluations = {f"scale{s:g}": {"setting": replace(DIGITS_SETTING, scale=s).to_dict(), "seeds": [0, 12]}
                   for s in (1.0, 2.0, 4.0)}
    metrics = stages.evaluate_round(backend, models, judge, evaluations, "auto", {"nhood_size": 3, "bootstrap": 0})
    assert sorted(metrics) == sorted(evaluations) and all(m["n"] == 12 for m in metrics.values())
    assert probes == [12]

    probes.clear()
    probed = {}
    sizes = [stages.resolve_batch_size(backend, models, setting, "auto", count, probed)
             for setting, count in ((DIGITS_SETTING, 12), (replace(DIGITS_SETTING, scale=8.0), 12),
                                    (replace(DIGITS_SETTING, recurrent_steps=2), 12), (DIGITS_SETTING, 40))]
    assert probes == [12, 12, 40] and sizes[1] == sizes[0]


def test_probe_stops_the_real_sampler_after_a_whole_step(digits_models):
    """The memory probe runs the setting's own sampler and stops it at the denoiser's third call:
    Algorithm 1 has made two whole steps (denoiser, classifier gradient) by then."""
    backend, models = digits_models
    calls = {"denoiser": 0, "classifier": 0}
    counted = replace(models, denoiser=counting(models.denoiser, calls, "denoiser"),
                      offshelf=counting(models.offshelf, calls, "classifier"))
    probe_sampler(lambda m, seeds: backend.sample(m, DIGITS_SETTING, seeds), counted)(3)
    assert calls == {"denoiser": PROBE_DENOISER_CALLS, "classifier": PROBE_DENOISER_CALLS}


def counting(net: nn.Module, calls: dict, name: str) -> nn.Module:
    net = copy.deepcopy(net)
    net.register_forward_hook(lambda *_: calls.__setitem__(name, calls[name] + 1))
    return net


# ------------------------------------------------------------------ config, capabilities, shards

def test_all_levers_off_leaves_the_network_unwrapped():
    net = tiny_classifier(1)
    assert apply_levers(net) is net
    assert Levers.from_sampling({"batch_size": 4}).denoiser(net) is net


def test_bf16_returns_fp32_outputs_and_fp32_input_gradients():
    net = apply_levers(tiny_classifier(3), precision="bf16")
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    logits = net(x)
    assert logits.dtype == torch.float32
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), x)
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()


def test_levers_travel_as_sampling_params():
    """A lever changes the sample jobs' `sampling` param (they rerun); growing num_samples does not."""
    from offshelf.planning.params import sampling_params

    base = {"sampling": {"respacing": "10", "num_samples": 64, "shard_size": 32, "batch_size": 32}}
    for lever in ({"precision": {"classifier": "bf16"}}, {"channels_last": True}, {"compile": {"mode": "default"}}):
        changed = {"sampling": {**base["sampling"], **lever}}
        assert sampling_params(changed) != sampling_params(base), lever
    assert sampling_params({"sampling": {**base["sampling"], "num_samples": 128}}) == sampling_params(base)


def test_capabilities_declare_levers_per_backend():
    class Plugin:
        name = "my_plugin"
    assert requested_levers({"batch_size": 8}) == {}
    assert unsupported_lever(DigitsBackend, {"precision": {"denoiser": "bf16", "classifier": "bf16"},
                                             "channels_last": True, "compile": {"mode": "default"},
                                             "batch_size": "auto"}) is None
    reason = unsupported_lever(DigitsBackend, {"precision": {"denoiser": "fp16"}})
    assert reason.startswith("config key 'sampling.precision.denoiser': backend 'digits'") and "\n" not in reason
    assert "'sampling.compile'" in unsupported_lever(Plugin, {"compile": {"mode": "default"}})


@pytest.mark.parametrize("levers, message", [
    ({"precision": {"denoiser": "fp16"}}, "config key 'sampling.precision.denoiser': backend 'digits' does not support"),
    ({"precision": {"classifier": "fp16"}}, "sampling.precision.classifier"),
    ({"compile": {"mode": "fastest"}}, "sampling.compile"),
    ({"batch_size": "big"}, "sampling.batch_size"),
])
def test_config_refuses_a_lever_in_one_line_naming_the_key(levers, message):
    from offshelf.config import ConfigError, load_config, validate_config
    from workflow_utils import REPO

    config = load_config(REPO / "config" / "ci.yaml")
    config["sampling"] = {**config["sampling"], **levers}
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_config_accepts_every_lever_on_digits():
    from offshelf.config import load_config, validate_config
    from workflow_utils import REPO

    config = load_config(REPO / "config" / "ci.yaml")
    config["sampling"] = {**config["sampling"], "batch_size": "auto", "channels_last": True,
                          "precision": {"denoiser": "bf16", "classifier": "bf16"}, "compile": {"mode": "reduce-overhead"}}
    validate_config(config)


def test_shard_records_batch_size_levers_and_compile_seconds(tmp_path, digits_models):
    backend, models = digits_models
    arrays = shard_arrays(tmp_path, "facts", backend, models, "auto", [0, 1, 2])
    assert int(arrays["batch_size"]) == 3 and float(arrays["compile_seconds"]) == 0.0
    assert "channels_last=False" in str(arrays["levers"])
    clock = CompileClock()
    clock.seconds = 2.5
    levered = replace(models, denoiser=apply_levers(copy.deepcopy(models.denoiser), channels_last=True, clock=clock),
                      offshelf=apply_levers(copy.deepcopy(models.offshelf), channels_last=True, clock=clock))
    assert job_compile_seconds(levered) == 2.5  # one clock, counted once


def test_fp16_on_a_cpu_is_refused_naming_the_key():
    from offshelf.levers import denoiser_fp16

    with pytest.raises(ValueError, match=r"^config key 'sampling.precision.denoiser' = 'fp16'.*CUDA only"):
        denoiser_fp16(Levers(denoiser_precision="fp16"), True, "cpu")
    assert denoiser_fp16(Levers(), True, "cpu") is True  # unset: the family's default, as before
    assert denoiser_fp16(Levers(denoiser_precision="bf16"), True, "cpu") is False
