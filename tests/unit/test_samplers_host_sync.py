"""Issue 25: the samplers' non-finite guard without a host sync per step.

On a GPU every read of a tensor's value by the host (``bool(t)``, ``t.item()``, ``float(t)``,
``t.tolist()``, ``t.cpu()``, ...) waits for the device's queue to drain. On a CPU nothing waits,
so the test counts the calls that *would* wait: it wraps each of them on ``torch.Tensor`` and runs
every sampler (DDPM, EDM Heun with churn, DiT with CFG; guided and unguided) for N and for 2N
steps. Whatever the loop reads per step shows up as a difference between the two counts; what the
sampler reads once (EDM's time grid, the guard's one check) does not.

The guard itself (:class:`offshelf.guidance.FiniteGuard`) must still stop at the first NaN or inf,
naming the step and the tensor exactly as the per-step check did, and never hand a callback or the
caller a non-finite value.
"""

from __future__ import annotations

import traceback
from collections import Counter
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from offshelf.backbones.adm import create_unet
from offshelf.backbones.edm import EDMPrecond
from offshelf.diffusion import GaussianDiffusion
from offshelf.guidance import (ClassifierGuidance, FiniteGuard, Guidance, NonFiniteError, check_finite)
from offshelf.samplers.ddpm import ddpm_sample
from offshelf.samplers.edm import edm_sample
from offshelf.seeding import StackedRandomGenerator
from nan_injection import nan_from_call

# Every Python-level way a tensor's value reaches the host.
HOST_READS = ("__bool__", "__float__", "__int__", "__index__", "__array__", "item", "tolist", "numpy", "cpu")
BATCH = 2


#: Where a read is charged: the innermost frame in one of these packages (diffusers': its schedulers'
#: and models' own reads, which a plain diffusers pipeline makes too).
PACKAGES = ("offshelf", "diffusers")


@contextmanager
def counting_host_reads():
    """Count each call of :data:`HOST_READS` on any tensor, with the line that made it: the innermost
    frame of offshelf (``offshelf/samplers/ddpm.py:154``) or diffusers (``diffusers/...``)."""
    reads: Counter = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def site_of(frame) -> str | None:
        parts = frame.filename.replace("\\", "/").split("/")
        package = next((p for p in reversed(parts[:-1]) if p in PACKAGES), None)  # the innermost folder
        return package and f"{package}/{parts[-1]}:{frame.lineno}"

    def counted(name, original):
        def wrapper(self, *args, **kwargs):
            site = next(filter(None, map(site_of, reversed(traceback.extract_stack()[:-1]))), "outside offshelf")
            reads[f"{name} at {site}"] += 1
            return original(self, *args, **kwargs)
        return wrapper

    for name, original in originals.items():
        setattr(torch.Tensor, name, counted(name, original))
    try:
        yield reads
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def reads_per_step(run, steps: int) -> Counter:
    """What ``run(n)`` reads back in 2·steps steps beyond what it reads in ``steps``: per-step reads."""
    with counting_host_reads() as short:
        run(steps)
    with counting_host_reads() as long:
        run(2 * steps)
    return long - short


# --- tiny networks, all random: the sampler's reads do not depend on the weights -------------------

def softplus_classifier(num_classes, seed=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Softplus(beta=3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes)).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def adm():
    torch.manual_seed(0)
    return create_unet(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", learn_sigma=True,
                       class_cond=True, attention_resolutions="2", num_heads=2, use_scale_shift_norm=True,
                       resblock_updown=True).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def edm():
    torch.manual_seed(0)
    return EDMPrecond(img_resolution=8, img_channels=3, label_dim=10, model_type="DhariwalUNet",
                      model_channels=32, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4]
                      ).eval().requires_grad_(False)


def run_ddpm(adm, guided):
    labels = torch.tensor([1, 7])
    guidance = Guidance(ClassifierGuidance(softplus_classifier(1000), marginal_temperature=0.5), scale=2.0,
                        sine_factor=0.3) if guided else None

    def run(steps):
        return ddpm_sample(adm, StackedRandomGenerator(range(BATCH)), GaussianDiffusion.respaced(1000, str(steps)),
                           guidance=guidance, shape=(3, 16, 16), y=labels)
    return run


def run_edm(edm, guided):
    labels = torch.nn.functional.one_hot(torch.tensor([1, 7]), 10).float()
    guidance = Guidance(ClassifierGuidance(softplus_classifier(10), input="xt"), scale=0.5,
                        sine_factor=0.3) if guided else None

    def run(steps):
        rng = StackedRandomGenerator(range(BATCH))
        latents = rng.randn((3, 8, 8))
        return edm_sample(edm, latents, steps, guidance=guidance, y=labels, S_churn=40, S_min=0.05, S_max=50,
                          S_noise=1.003, rng=rng)
    return run


def run_dit(guided):
    diffusers = pytest.importorskip("diffusers")
    from offshelf.backbones.dit import DiTDenoiser
    from offshelf.samplers.dit import dit_sample

    torch.manual_seed(0)
    model = DiTDenoiser(diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1, sample_size=4,
        patch_size=2, num_embeds_ada_norm=10).eval().requires_grad_(False))
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8),
                                  layers_per_block=1, latent_channels=4, norm_num_groups=4,
                                  sample_size=8).eval().requires_grad_(False)
    guidance = Guidance(ClassifierGuidance(softplus_classifier(10)), scale=1.0, sine_factor=0.3) if guided else None

    def run(steps):
        return dit_sample(model, StackedRandomGenerator(range(BATCH)),
                          GaussianDiffusion.respaced(1000, str(steps), "linear", "learned_range"),
                          guidance=guidance, vae=vae, latent_shape=(4, 4, 4), y=torch.tensor([1, 7]), cfg_scale=1.5)
    return run


@pytest.mark.parametrize("guided", [False, True], ids=["unguided", "guided"])
@pytest.mark.parametrize("sampler", ["ddpm", "edm_heun_churn", "dit_cfg"])
def test_no_host_sync_inside_the_step_loop(sampler, guided, adm, edm):
    run = {"ddpm": lambda: run_ddpm(adm, guided), "edm_heun_churn": lambda: run_edm(edm, guided),
           "dit_cfg": lambda: run_dit(guided)}[sampler]()
    per_step = reads_per_step(run, steps=3)
    assert not per_step, f"{sampler} reads tensors back to the host {sum(per_step.values())} more times in 6 steps " \
                         f"than in 3: {dict(per_step)}"


def test_the_counter_sees_each_kind_of_host_read():
    """The stand-in is not blind: every wrapped read, called once, is counted once."""
    t = torch.ones(2)
    with counting_host_reads() as reads:
        bool(t[0]), float(t[0]), int(t[0]), t[0].item(), t.tolist(), t.cpu(), t.numpy()
        [0, 1][t[0].long()]  # __index__
    assert sum(reads.values()) == 8 and {key.split()[0] for key in reads} == set(HOST_READS) - {"__array__"}


# --- the guard: same stop, same message, one read ---------------------------------------------------

def test_guard_names_the_first_bad_step_and_tensor_like_the_per_step_check():
    good = torch.ones(2, 3)
    nan, inf, minus_inf = (torch.tensor([[1.0, value, 2.0], [0.0, 1.0, 2.0]]) for value in (float("nan"), float("inf"), -float("inf")))
    watched = [("denoiser output", good, 5), ("guidance gradient", -good, 5), ("guided mean", inf, 4),
               ("denoiser output", nan, 3), ("classifier logits", minus_inf, 3)]
    guard = FiniteGuard(capacity=1)  # grows on the device past its first slot
    for name, tensor, step in watched:
        guard.watch(name, tensor, step)
    with pytest.raises(NonFiniteError) as stopped:
        guard.check()
    with pytest.raises(NonFiniteError) as per_step:
        for name, tensor, step in watched:
            check_finite(name, tensor, step)
    assert str(per_step.value).startswith("step 4: guided mean has 1 non-finite")
    assert str(stopped.value) == "step 4: guided mean has non-finite value(s) (NaN or inf; shape (2, 3))"
    for name, tensor, step in watched[3:]:  # NaN and -inf trip it as well as inf
        guard.watch(name, tensor, step)
        with pytest.raises(NonFiniteError, match=f"^step {step}: {name} has non-finite"):
            guard.check()


def test_guard_reads_the_host_once_per_check_and_passes_finite_tensors():
    guard = FiniteGuard(capacity=2)
    with counting_host_reads() as reads:
        for step in range(50):
            guard.watch("denoiser output", torch.full((4,), float(step)), step)
            guard.watch("guidance gradient", None, step)  # unguided: nothing to watch
        guard.check()
    assert sum(reads.values()) == 1
    guard.check()  # nothing watched since: nothing read, nothing raised
    guard.watch("denoiser output", torch.tensor([float("inf")]), 7)
    with pytest.raises(NonFiniteError, match=r"^step 7: denoiser output has non-finite"):
        guard.check()


@pytest.mark.parametrize("sampler", ["ddpm", "edm"])
def test_a_nan_midway_stops_the_batch_at_its_step_and_no_callback_sees_it(sampler, adm, edm):
    """The NaN of the 3rd network call is reported at that call's step and tensor (DDPM counts
    k = 9 … 0: the 3rd call is k = 7; EDM's Heun makes two calls per step: the 3rd is step 1's
    first, not its Heun correction, which is NaN too), and neither a callback nor the caller gets it."""
    seen = []

    def callback(step, x_t, **_):
        seen.append(step)
        assert torch.isfinite(x_t).all()

    if sampler == "ddpm":
        net = adm
        run = lambda: ddpm_sample(adm, StackedRandomGenerator(range(BATCH)),  # noqa: E731
                                  GaussianDiffusion.respaced(1000, "10"), shape=(3, 16, 16), y=torch.tensor([1, 7]),
                                  callback=callback)
        expected, seen_before = "step 7: denoiser output has", [9, 8]
    else:
        net = edm
        run = lambda: edm_sample(edm, torch.randn(BATCH, 3, 8, 8), 5,  # noqa: E731
                                 y=torch.nn.functional.one_hot(torch.tensor([1, 7]), 10).float(), callback=callback)
        expected, seen_before = "step 1: denoiser output has", [0]
    with nan_from_call(net, calls=3), pytest.raises(NonFiniteError, match=f"^{expected} "):
        run()
    assert seen == seen_before
