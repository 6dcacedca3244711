"""GPU throughput of the three ImageNet backbones, unguided and guided, lever by lever: one prepared
command that ends within 8 minutes on one H100/H200-class GPU.

    python benchmarks/gpu_throughput.py                         # cuda, full-size networks
    python benchmarks/gpu_throughput.py --device cpu --tiny --out /tmp/tiny.json   # CI: < 1 minute

Networks are full size and randomly initialised (the cost of a forward and backward does not
depend on the weight values), built with offshelf's own constructors and the real configs:

* ``adm128``: ADM-128 conditional, learned range (``adm_imagenet128_cond_diffusion``) + ResNet-101
  on x̂0 (Algorithm 1);
* ``edm64``: EDM-64 (``IMAGENET64_COND_ADM_KWARGS``) with Heun + ResNet-101 on x_t (Algorithm 2);
* ``dit256``: DiT-XL/2 + the SD VAE decoder (sd-vae-ft-ema's layout) + ResNet-101 on the decoded
  x̂0, with CFG (Algorithm 3).

For each backbone the levers are added one at a time, cumulatively: eager fp32 → reduced
precision (bf16 autocast, denoiser and classifier) → + channels_last → + torch.compile (mode
``default``). For each configuration the backbone's own sampler runs ``--steps`` steps (after one
warm-up run of the same length, which also compiles), unguided and guided, at a fixed batch.

**Extrapolation to a trajectory.** Every step of a trajectory costs the same (the same networks on
the same shapes), so a trajectory's time is the measured time per step times its steps: 250 for
ADM and DiT (respacing 250), 18 for EDM's Heun (2N − 1 = 35 denoiser evaluations; the timed run's
steps include the same one-fewer final evaluation, so per step it is within 1/(2·steps) of exact).
The one final VAE decode of a DiT trajectory is inside the timed run, so it is over-counted by
(250 − steps)/250 of one decode: under 1 %. images/s = batch / (seconds per step × steps).

Also measured, at the fastest configuration: seconds per image of one denoiser evaluation and of
one classifier forward + input gradient (DiT: through the VAE decoder, which dominates), the peak
memory of a guided step, and the largest batch (``batch_size: auto``'s probe,
:func:`offshelf.levers.auto_batch_size`). Compile seconds come from the levers' own clock.

Budget: a global deadline (``--deadline``, default 420 s of measurement) is checked before every
configuration; one that would not fit is recorded as skipped, with the reason, and the run still
writes its JSON and Markdown. Compile configurations run last, after every backbone's eager ones.

Writes ``--out`` (JSON: ``device``, ``torch``, ``command``, ``backbones`` -> {``levers``, ``batch``,
``seconds_per_denoiser``, ``seconds_per_classifier``} as ``offshelf plan --costs`` reads it, plus
``details`` and ``skipped``) and the Markdown table beside it (``.md``).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from offshelf.guidance import ClassifierGuidance, Guidance, calibrated_gradient
from offshelf.levers import CompileClock, Levers, auto_batch_size
from offshelf.seeding import StackedRandomGenerator

TRAJECTORY_STEPS = {"adm128": 250, "edm64": 18, "dit256": 250}
#: the cumulative lever configurations, in order
CONFIGS = [
    ("eager fp32", Levers()),
    ("bf16", Levers(denoiser_precision="bf16", classifier_precision="bf16")),
    ("bf16 + channels_last", Levers(denoiser_precision="bf16", classifier_precision="bf16", channels_last=True)),
    ("bf16 + channels_last + compile", Levers(denoiser_precision="bf16", classifier_precision="bf16",
                                              channels_last=True, compile_mode="default")),
]
#: seconds a compile configuration needs at least (full size on an H100: about a minute per network)
COMPILE_RESERVE_S = 150
START = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.monotonic() - START:5.0f} s] {message}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------- networks

def resnet(tiny: bool) -> nn.Module:
    import torchvision

    from torchvision.models.resnet import BasicBlock, ResNet

    net = ResNet(BasicBlock, [1, 1, 1, 1]) if tiny else torchvision.models.resnet101()  # random init
    return net.eval().requires_grad_(False)


@dataclass
class Backbone:
    """One backbone's networks and its sampler: ``sample(den, clf, batch, steps, guided)``."""

    name: str
    batch: int
    denoiser: nn.Module
    classifier: nn.Module
    sample: Callable[..., torch.Tensor]
    denoiser_call: Callable[[nn.Module, int], torch.Tensor]  # one evaluation at a batch
    classifier_call: Callable[[nn.Module, int], torch.Tensor]  # one forward + input gradient at a batch
    extra: dict = field(default_factory=dict)


def labels(batch: int, device) -> torch.Tensor:
    return torch.arange(batch, device=device) % 1000


def build_adm(device: torch.device, tiny: bool) -> Backbone:
    from offshelf.backbones import adm
    from offshelf.diffusion import GaussianDiffusion
    from offshelf.samplers.ddpm import ddpm_sample

    if tiny:
        with device:
            unet = adm.create_unet(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2",
                                   learn_sigma=True, class_cond=True, attention_resolutions="2", num_heads=2,
                                   use_scale_shift_norm=True, resblock_updown=True)
        unet = adm.on_device(unet, device, use_fp16=False)
    else:
        unet = adm.build_adm("adm_imagenet128_cond_diffusion", device, use_fp16=False)
    unet = unet.requires_grad_(False)
    size = 16 if tiny else 128

    def sample(den, clf, batch, steps, guided):
        diffusion = GaussianDiffusion.respaced(1000, str(steps), "linear", "learned_range")
        guidance = Guidance(ClassifierGuidance(clf, 1.0, 0.5, "x0"), scale=1.0, sine_factor=0.3) if guided else None
        return ddpm_sample(den, StackedRandomGenerator(range(batch), device), diffusion, guidance=guidance,
                           shape=(3, size, size), y=labels(batch, device))

    def denoiser_call(den, batch):
        with torch.no_grad():
            return den(torch.randn(batch, 3, size, size, device=device), torch.full((batch,), 500, device=device),
                       labels(batch, device))

    def classifier_call(clf, batch):
        return calibrated_gradient(torch.randn(batch, 3, size, size, device=device), labels(batch, device), clf)[0]

    return Backbone("adm128", 4 if tiny else 64, unet, resnet(tiny).to(device), sample, denoiser_call,
                    classifier_call)


def build_edm(device: torch.device, tiny: bool) -> Backbone:
    from offshelf.backbones.edm import IMAGENET64_COND_ADM_KWARGS, EDMPrecond
    from offshelf.samplers.edm import edm_sample

    kwargs = dict(IMAGENET64_COND_ADM_KWARGS, use_fp16=False, dropout=0.0)
    if tiny:
        kwargs.update(img_resolution=16, model_channels=32, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8])
    with device:
        net = EDMPrecond(**kwargs)
    net = net.to(device).eval().requires_grad_(False)
    size = kwargs["img_resolution"]

    def one_hot(batch):
        return nn.functional.one_hot(labels(batch, device), 1000).float()

    def sample(den, clf, batch, steps, guided):
        rng = StackedRandomGenerator(range(batch), device, seed_bits=32)
        guidance = Guidance(ClassifierGuidance(clf, 1.0, 0.0, "xt"), scale=1.0, sine_factor=0.3) if guided else None
        return edm_sample(den, rng.randn((3, size, size)), steps, guidance=guidance, y=one_hot(batch), rng=rng)

    def denoiser_call(den, batch):
        with torch.no_grad():
            return den(torch.randn(batch, 3, size, size, device=device), torch.full((batch,), 1.0, device=device),
                       one_hot(batch))

    def classifier_call(clf, batch):
        return calibrated_gradient(torch.randn(batch, 3, size, size, device=device), labels(batch, device), clf)[0]

    return Backbone("edm64", 4 if tiny else 128, net, resnet(tiny).to(device), sample, denoiser_call,
                    classifier_call)


def build_dit(device: torch.device, tiny: bool) -> Backbone:
    import diffusers

    from offshelf.backbones.dit import DiTDenoiser, match_original_dit
    from offshelf.samplers.dit import decoder_gradient, dit_diffusion, dit_sample

    if tiny:
        config = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
                      sample_size=8, patch_size=2, num_embeds_ada_norm=1000, norm_eps=1e-6)
        vae_config = dict(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4, sample_size=16,
                          down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    else:  # DiT-XL/2 (facebookresearch/DiT models.py: hidden 1152, depth 28, 16 heads), 256 px: 32x32x4 latents
        config = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
                      sample_size=32, patch_size=2, num_embeds_ada_norm=1000, norm_eps=1e-6)
        vae_config = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=256,  # sd-vae-ft-ema
                          down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    with device:
        transformer = diffusers.DiTTransformer2DModel(**config)
        vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **vae_config)
    denoiser = DiTDenoiser(match_original_dit(transformer)).to(device).eval().requires_grad_(False)
    vae = vae.to(device).eval().requires_grad_(False)
    latent = (4, config["sample_size"], config["sample_size"])

    def sample(den, clf, batch, steps, guided):
        guidance = Guidance(ClassifierGuidance(clf, 1.0, 0.5, "x0"), scale=1.0, sine_factor=0.3,
                            schedule="adm") if guided else None
        return dit_sample(den, StackedRandomGenerator(range(batch), device), dit_diffusion(str(steps)),
                          guidance=guidance, vae=backbone.extra["vae"], latent_shape=latent, y=labels(batch, device),
                          cfg_scale=1.5)

    def denoiser_call(den, batch):
        with torch.no_grad():
            return den(torch.randn(batch, *latent, device=device), torch.full((batch,), 500, device=device),
                       labels(batch, device))

    def classifier_call(clf, batch):
        guide = ClassifierGuidance(clf, 1.0, 0.5, "x0")
        return decoder_gradient(guide, backbone.extra["vae"], torch.randn(batch, *latent, device=device),
                                labels(batch, device), torch.full((batch,), 500, device=device))[0]

    backbone = Backbone("dit256", 2 if tiny else 32, denoiser, resnet(tiny).to(device), sample, denoiser_call,
                        classifier_call, extra={"vae": vae})
    return backbone


BUILDERS = {"adm128": build_adm, "edm64": build_edm, "dit256": build_dit}


# ---------------------------------------------------------------------------------- measuring

def timed(device, fn: Callable[[], object]) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def measure_config(backbone: Backbone, levers: Levers, device, steps: int) -> dict:
    """Unguided and guided time per step at the backbone's batch, peak memory of the guided run,
    compile seconds (the warm-up runs compile)."""
    clock = CompileClock()
    den, clf = levers.denoiser(backbone.denoiser, clock), levers.classifier(backbone.classifier, clock)
    if "vae" in backbone.extra:
        backbone.extra["vae"] = levers.decoder(backbone.extra["vae"])
    result = {}
    for guided in (False, True):
        kind = "guided" if guided else "unguided"
        backbone.sample(den, clf, backbone.batch, steps, guided)  # warm-up (and compile)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = timed(device, lambda: backbone.sample(den, clf, backbone.batch, steps, guided))
        per_step = seconds / steps
        result[f"{kind}_seconds_per_step"] = per_step
        result[f"{kind}_images_per_s"] = backbone.batch / (per_step * TRAJECTORY_STEPS[backbone.name])
        if device.type == "cuda":
            result[f"{kind}_peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    result["guided_over_unguided_time"] = result["guided_seconds_per_step"] / result["unguided_seconds_per_step"]
    result["compile_seconds"] = clock.seconds
    result["_nets"] = (den, clf)
    return result


def per_evaluation(backbone: Backbone, den, clf, device, repeats: int) -> tuple[float, float]:
    """Seconds per image of one denoiser evaluation and one classifier forward + input gradient."""
    backbone.denoiser_call(den, backbone.batch)
    backbone.classifier_call(clf, backbone.batch)
    d = timed(device, lambda: [backbone.denoiser_call(den, backbone.batch) for _ in range(repeats)])
    c = timed(device, lambda: [backbone.classifier_call(clf, backbone.batch) for _ in range(repeats)])
    return d / repeats / backbone.batch, c / repeats / backbone.batch


def largest_batch(backbone: Backbone, levers: Levers, device) -> int:
    """``batch_size: auto``'s probe on a two-step guided run (uncompiled: a new batch would recompile)."""
    den, clf = levers.denoiser(backbone.denoiser), levers.classifier(backbone.classifier)
    return auto_batch_size(device, lambda b: backbone.sample(den, clf, b, 2, True), limit=1 << 14)


def levers_dict(levers: Levers) -> dict:
    return {"precision": {"denoiser": levers.denoiser_precision or "fp32", "classifier": levers.classifier_precision},
            "channels_last": levers.channels_last,
            "compile": {"mode": levers.compile_mode} if levers.compile_mode else False}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny networks (CI: the script cannot rot)")
    parser.add_argument("--backbones", default="adm128,edm64,dit256")
    parser.add_argument("--steps", type=int, help="timed steps per configuration, at least 2 (default 3; --tiny: 2)")
    parser.add_argument("--repeats", type=int, help="repeats of the per-evaluation timings (default 3; --tiny: 1)")
    parser.add_argument("--deadline", type=float, default=420.0, help="seconds of measurement before skipping")
    parser.add_argument("--out", default="benchmarks/gpu_throughput.json")
    args = parser.parse_args(argv)
    args.steps = max(2, args.steps or (2 if args.tiny else 3))  # a respaced schedule has at least 2 steps
    args.repeats = args.repeats or (1 if args.tiny else 3)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible; use --device cpu --tiny")
    out = Path(args.out)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # eager fp32 means fp32
        torch.backends.cudnn.allow_tf32 = False
    compile_on_this_device = device.type == "cuda"
    names = [n.strip() for n in args.backbones.split(",") if n.strip()]
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
              "torch": torch.__version__,
              "command": shlex.join([Path(sys.executable).name, *sys.argv]),
              "backbones": {}, "details": {}, "skipped": [],
              "extrapolation": "trajectory time = measured seconds per step x trajectory steps "
                               f"{TRAJECTORY_STEPS}; images/s = batch / that"}
    log(f"{report['device']}, torch {torch.__version__}, deadline {args.deadline:.0f} s")

    def remaining() -> float:
        return args.deadline - (time.monotonic() - START)

    built: dict[str, Backbone] = {}
    for phase in ("eager", "compile"):
        for name in names:
            details = report["details"].setdefault(name, {"configs": {}})
            for label, levers in CONFIGS:
                if (levers.compile_mode is not None) != (phase == "compile"):
                    continue
                if levers.compile_mode is not None and not compile_on_this_device:
                    report["skipped"].append({"backbone": name, "config": label, "reason": "torch.compile on a CPU "
                                              "takes minutes of C++ code generation (tests/unit/test_levers.py "
                                              "checks it, marked slow)"})
                    continue
                need = COMPILE_RESERVE_S if levers.compile_mode and not args.tiny else 5
                if remaining() < need:
                    report["skipped"].append({"backbone": name, "config": label,
                                              "reason": f"deadline: {remaining():.0f} s left, {need} s needed"})
                    log(f"{name} {label}: skipped (deadline)")
                    continue
                if name not in built:
                    log(f"{name}: building full-size random-init networks" if not args.tiny else f"{name}: tiny")
                    built[name] = BUILDERS[name](device, args.tiny)
                backbone = built[name]
                try:
                    result = measure_config(backbone, levers, device, args.steps)
                except torch.cuda.OutOfMemoryError as err:
                    report["skipped"].append({"backbone": name, "config": label, "reason": f"out of memory: {err}"})
                    torch.cuda.empty_cache()
                    continue
                nets = result.pop("_nets")
                details["configs"][label] = {"levers": levers_dict(levers), "batch": backbone.batch, **result}
                log(f"{name} {label}: unguided {result['unguided_images_per_s']:.2f} img/s, guided "
                    f"{result['guided_images_per_s']:.2f} img/s (x{result['guided_over_unguided_time']:.2f} time), "
                    f"compile {result['compile_seconds']:.1f} s")
                fastest = max(details["configs"].items(), key=lambda kv: kv[1]["guided_images_per_s"])[0]
                if fastest == label:
                    d, c = per_evaluation(backbone, *nets, device, args.repeats)
                    report["backbones"][name] = {"levers": levers_dict(levers), "batch": backbone.batch,
                                                 "seconds_per_denoiser": d, "seconds_per_classifier": c}
                    details["fastest"] = label
                if label == "bf16 + channels_last" and remaining() > 10:
                    details["largest_batch"] = largest_batch(backbone, levers, device)
                    log(f"{name}: largest batch {details['largest_batch']} (batch_size: auto's probe)")
        if phase == "eager" and device.type == "cuda":
            torch.cuda.empty_cache()
    check_costs_format(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    log(f"wrote {out} and {out.with_suffix('.md')}; {len(report['skipped'])} configuration(s) skipped")
    return 0


def check_costs_format(report: dict) -> None:
    """The part ``offshelf plan --costs`` reads, exactly: device, torch, command (str) and per backbone
    levers (mapping), batch (int), seconds_per_denoiser and seconds_per_classifier (positive floats)."""
    for key in ("device", "torch", "command"):
        assert isinstance(report[key], str), key
    for name, costs in report["backbones"].items():
        assert name in TRAJECTORY_STEPS, name
        assert set(costs) == {"levers", "batch", "seconds_per_denoiser", "seconds_per_classifier"}, (name, set(costs))
        assert isinstance(costs["levers"], dict) and isinstance(costs["batch"], int) and costs["batch"] > 0, name
        for key in ("seconds_per_denoiser", "seconds_per_classifier"):
            assert isinstance(costs[key], float) and costs[key] > 0, (name, key)


def markdown(report: dict) -> str:
    lines = [f"GPU throughput: {report['device']}, torch {report['torch']}", "",
             f"Command: `{report['command']}`", "", report["extrapolation"], "",
             "| backbone | levers | batch | unguided img/s | guided img/s | guided/unguided time | peak GiB (guided) "
             "| compile s |", "|---|---|---|---|---|---|---|---|"]
    for name, details in report["details"].items():
        for label, r in details["configs"].items():
            peak = r.get("guided_peak_memory_gib")
            lines.append(f"| {name} | {label} | {r['batch']} | {r['unguided_images_per_s']:.2f} | "
                         f"{r['guided_images_per_s']:.2f} | {r['guided_over_unguided_time']:.2f} | "
                         f"{'-' if peak is None else f'{peak:.1f}'} | {r['compile_seconds']:.1f} |")
    lines += ["", "| backbone | fastest levers | largest batch (auto) | s/image per denoiser eval | "
              "s/image per classifier grad |", "|---|---|---|---|---|"]
    for name, costs in report["backbones"].items():
        lines.append(f"| {name} | {report['details'][name]['fastest']} | {report['details'][name].get('largest_batch', '-')} | "
                     f"{costs['seconds_per_denoiser']:.3g} | {costs['seconds_per_classifier']:.3g} |")
    if report["skipped"]:
        lines += ["", "Skipped: " + "; ".join(f"{s['backbone']} {s['config']} ({s['reason']})"
                                              for s in report["skipped"])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
