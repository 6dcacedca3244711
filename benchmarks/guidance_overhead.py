"""What does off-the-shelf guidance cost per DDPM step?

At one batch and on one set of inputs, timed with the sampler's own step function
(``offshelf.samplers.ddpm.ddpm_step``), so nothing is re-implemented here:

    (a) unguided step   = denoiser forward + posterior + noise          (guidance=None)
    (b) guided step     = (a) + ∇_x̂0 log p̃(y | x̂0) + Eq. 5 weighting    (softplus-β3 classifier,
                          τ1=1, τ2=0.5, scale 1, γ=0.3)
    (c) classifier grad = ClassifierGuidance.gradient(x̂0) alone       (forward + backward w.r.t. input)

    efficiency = (b − a) / c      (1.0: guidance costs exactly one classifier forward+backward)

and the cost of one full step with Universal-Guidance recurrence r = 1, 2, 3: the sampler's
inner loop for one step index, i.e. r × ``ddpm_step`` with a ``diffusion.renoise`` between
passes (exactly the body of ``ddpm_sample``'s ``for r in range(recurrent_steps)``).

Timings are interleaved (one of each case per round, in a shuffled order) so a busy machine slows
every case alike; each number is the median over rounds after warm-up, as wall time and as process
CPU time (the steadier measure on a shared CPU; with ``--threads 1`` it is the work done).
Random-init weights: the cost of a forward and backward does not depend on the weight values.

    python benchmarks/guidance_overhead.py --arch digits --batch 256 --repeats 20 --out digits.json
    python benchmarks/guidance_overhead.py --arch adm128 --batch 1 --repeats 3 --out adm128.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from offshelf.classifiers.softplus import softplus_surgery
from offshelf.diffusion import GaussianDiffusion
from offshelf.guidance import ClassifierGuidance, Guidance
from offshelf.samplers.ddpm import ddpm_step, model_output
from offshelf.seeding import StackedRandomGenerator

SOFTPLUS_BETA = 3.0
JOINT_TEMPERATURE = 1.0
MARGINAL_TEMPERATURE = 0.5
SCALE, SINE_FACTOR = 1.0, 0.3


def build_digits(device):
    """DigitsUNet(64) (ε only, fixed variance) + DigitsResNet(32), 8×8 grey, 10 classes."""
    from offshelf.backbones.digits import NUM_CLASSES, DigitsResNet, DigitsUNet

    model = DigitsUNet(channels=64)
    classifier = DigitsResNet(width=32)
    diffusion = GaussianDiffusion.respaced(1000, "250", "linear", "fixed_small")
    return model, classifier, diffusion, (1, 8, 8), NUM_CLASSES


def build_adm128(device):
    """Real-size ADM-128 class-conditional UNet (421.5M parameters; fp32 on CPU, the preset's
    fp16 on CUDA) + torchvision ResNet-101 (44.5M) on the 128×128 x̂0, as the official DDPM code
    feeds it (no resize, no normalisation)."""
    import torchvision

    from offshelf.backbones.adm import build_adm

    model = build_adm("adm_imagenet128_cond_diffusion", device)
    classifier = torchvision.models.resnet101(weights=None)
    diffusion = GaussianDiffusion.respaced(1000, "250", "linear", "learned_range")
    return model, classifier, diffusion, (3, 128, 128), 1000


ARCHS = {"digits": build_digits, "adm128": build_adm128}


def measure(arch: str, batch: int, repeats: int, warmup: int, device: str, recurrent: list[int],
            profile: bool = False) -> dict:
    device = torch.device(device)
    model, classifier, diffusion, shape, num_classes = ARCHS[arch](device)
    model = model.to(device).eval().requires_grad_(False)
    classifier = softplus_surgery(classifier, SOFTPLUS_BETA).to(device).eval().requires_grad_(False)
    classifier_guidance = ClassifierGuidance(classifier, JOINT_TEMPERATURE, MARGINAL_TEMPERATURE, input="x0")

    rng = StackedRandomGenerator(range(batch), device)
    x = rng.randn(shape)
    y = torch.arange(batch, device=device) % num_classes
    guidance = Guidance(classifier_guidance, scale=SCALE, sine_factor=SINE_FACTOR, label=y)
    k = diffusion.num_steps // 2  # mid-trajectory: the sine bump is near its peak and noise is added
    with torch.no_grad():
        x0 = diffusion.p_mean_variance(model_output(model, diffusion, x, k, y), x, k).pred_xstart

    def step(x_in, with_guidance):
        x_prev, info, _ = ddpm_step(model, diffusion, x_in, k, rng, y=y,
                                    guidance=guidance if with_guidance else None, sigma_max=0.0)
        return x_prev, info

    def recurrent_step(passes):
        # ddpm_sample's inner loop for one step index k > 0
        x_cur = x
        for r in range(passes):
            x_prev, _ = step(x_cur, True)
            if r + 1 < passes:
                x_cur = diffusion.renoise(x_prev, k, rng.randn_like(x_prev))
        return x_prev

    def forward_only():
        with torch.no_grad():
            return model_output(model, diffusion, x, k, y)

    cases = {
        "denoiser_forward": forward_only,
        "unguided_step": lambda: step(x, False),
        "guided_step": lambda: step(x, True),
        "classifier_grad": lambda: classifier_guidance.gradient(x0, y),
    }
    cases.update({f"recurrent_{r}": (lambda r=r: recurrent_step(r)) for r in recurrent if r > 1})

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - wall, time.process_time() - cpu

    for _ in range(warmup):
        for fn in cases.values():
            fn()
    wall = {name: [] for name in cases}
    cpu = {name: [] for name in cases}
    order = random.Random(0)
    for _ in range(repeats):
        names = list(cases)
        order.shuffle(names)  # no case always runs with the other network's weights in cache
        for name in names:
            w, c = timed(cases[name])
            wall[name].append(w)
            cpu[name].append(c)
    # r = 1 is one plain guided step: the same call, so it shares (b)'s timings
    for times in (wall, cpu):
        if 1 in recurrent:
            times["recurrent_1"] = times["guided_step"]
        for r in sorted(recurrent):
            times[f"recurrent_{r}"] = times.pop(f"recurrent_{r}")

    op_profile = profile_ops(cases, device) if profile else None
    median = {name: statistics.median(t) for name, t in wall.items()}
    median_cpu = {name: statistics.median(t) for name, t in cpu.items()}
    return dict(
        arch=arch, batch=batch, image_shape=list(shape), repeats=repeats, warmup=warmup,
        device=str(device), torch=torch.__version__, threads=torch.get_num_threads(),
        cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
        load_average=os.getloadavg(),
        model_dtype=str(next(model.parameters()).dtype),
        denoiser_params=sum(p.numel() for p in model.parameters()),
        classifier_params=sum(p.numel() for p in classifier.parameters()),
        step_index=k, num_steps=diffusion.num_steps, variance_type=diffusion.variance_type,
        softplus_beta=SOFTPLUS_BETA, joint_temperature=JOINT_TEMPERATURE, marginal_temperature=MARGINAL_TEMPERATURE,
        scale=SCALE, sine_factor=SINE_FACTOR,
        recurrent_method="r x ddpm_step with diffusion.renoise between passes (ddpm_sample's inner loop); "
                         "r=1 is the guided step itself",
        median_s=median, median_cpu_s=median_cpu, wall_s=wall, cpu_s=cpu,
        efficiency=_efficiency(median), efficiency_cpu=_efficiency(median_cpu),
        efficiency_paired_median=statistics.median(
            _efficiency({n: t[i] for n, t in wall.items()}) for i in range(repeats)),
        recurrent_relative={f"recurrent_{r}": median[f"recurrent_{r}"] / median["guided_step"] for r in recurrent},
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        op_profile=op_profile,
    )


def profile_ops(cases: dict, device: torch.device, top: int = 8) -> dict:
    """Self time per aten op of one (a), (b) and (c) call under torch.profiler, and the ops where
    ``b − a − c`` is largest: what the guided step spends beyond "unguided step + classifier
    gradient". Single calls, so the denoiser's own run-to-run jitter shows up here too."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    self_ms = {}
    for name in ("unguided_step", "guided_step", "classifier_grad"):
        with profile(activities=activities) as prof:
            cases[name]()
        self_ms[name] = {}
        for event in prof.key_averages():
            self_ms[name][event.key] = self_ms[name].get(event.key, 0.0) + event.self_cpu_time_total / 1e3
    a, b, c = self_ms["unguided_step"], self_ms["guided_step"], self_ms["classifier_grad"]
    residual = {op: b.get(op, 0.0) - a.get(op, 0.0) - c.get(op, 0.0) for op in set(a) | set(b) | set(c)}
    largest = sorted(residual, key=lambda op: -abs(residual[op]))[:top]
    return dict(total_self_cpu_ms={name: sum(ops.values()) for name, ops in self_ms.items()},
                residual_ms={op: dict(guided=b.get(op, 0.0), unguided=a.get(op, 0.0), classifier=c.get(op, 0.0),
                                      residual=residual[op]) for op in largest})


def _efficiency(t: dict) -> float:
    """(guided − unguided) / classifier forward+backward."""
    return (t["guided_step"] - t["unguided_step"]) / t["classifier_grad"]


def markdown_table(result: dict) -> str:
    wall, cpu = result["median_s"], result["median_cpu_s"]
    rows = [
        ("denoiser forward only", "denoiser_forward"),
        ("(a) unguided step", "unguided_step"),
        ("(b) guided step", "guided_step"),
        ("(c) classifier forward+backward", "classifier_grad"),
    ] + [(f"full step, recurrence r={name.split('_')[1]}", name) for name in wall if name.startswith("recurrent_")]
    lines = [f"**{result['arch']}**, batch {result['batch']}, {result['device']} "
             f"({result['threads']} torch threads, {result['model_dtype']}), median of {result['repeats']} "
             f"interleaved rounds after {result['warmup']} warm-up; load average at the end "
             f"{', '.join(f'{v:.1f}' for v in result['load_average'])}",
             "",
             "| component | wall median ms | wall min ms | CPU-time median ms | wall × guided step |",
             "|---|---:|---:|---:|---:|"]
    for label, name in rows:
        lines.append(f"| {label} | {1e3 * wall[name]:.1f} | {1e3 * min(result['wall_s'][name]):.1f} | "
                     f"{1e3 * cpu[name]:.1f} | {wall[name] / wall['guided_step']:.2f} |")
    lines += ["",
              f"efficiency (b − a)/c: wall {result['efficiency']:.2f} (median of per-round ratios "
              f"{result['efficiency_paired_median']:.2f}), CPU time {result['efficiency_cpu']:.2f}; target ≤ 1.10"]
    prof = result["op_profile"]
    if prof is not None:
        total = prof["total_self_cpu_ms"]
        lines += ["",
                  f"torch.profiler, one call each (self CPU ms): (a) {total['unguided_step']:.1f}, "
                  f"(b) {total['guided_step']:.1f}, (c) {total['classifier_grad']:.1f}; "
                  f"b − a − c = {total['guided_step'] - total['unguided_step'] - total['classifier_grad']:.1f}",
                  "",
                  "| aten op | (b) guided | (a) unguided | (c) classifier | b − a − c |",
                  "|---|---:|---:|---:|---:|"]
        for op, row in prof["residual_ms"].items():
            lines.append(f"| {op} | {row['guided']:.1f} | {row['unguided']:.1f} | {row['classifier']:.1f} | "
                         f"{row['residual']:.1f} |")
    return "\n".join(lines)


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="digits")
    parser.add_argument("--batch", type=int, default=None, help="default: 256 for digits, 1 for adm128")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds; default 20 (digits), 3 (adm128)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--recurrent", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--profile", action="store_true",
                        help="also attribute one call of (a), (b), (c) to aten ops with torch.profiler")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device")
    if any(r < 1 for r in args.recurrent):
        parser.error(f"--recurrent values must be >= 1, got {args.recurrent}")
    batch = args.batch or (256 if args.arch == "digits" else 1)
    repeats = args.repeats or (20 if args.arch == "digits" else 3)
    if batch < 1 or repeats < 1 or args.warmup < 0:
        parser.error("--batch and --repeats must be >= 1, --warmup >= 0")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = measure(args.arch, batch, repeats, args.warmup, args.device, args.recurrent, args.profile)
    print(markdown_table(result))
    if args.out is not None:
        write_json_atomic(args.out, result)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
