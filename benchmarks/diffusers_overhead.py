"""What does offshelf's guidance cost per diffusers scheduler step?

For each scheduler, one sampling loop of ``--steps`` steps (``scale_model_input``, the model,
``scheduler.step``) with the plain model and with ``offshelf.integrations.diffusers.GuidedModel``
(Softplus-β3 classifier on x̂0, τ1 = 1, τ2 = 0.5, s = 1, γ = 0.3, the default ``adm`` schedule),
and the classifier's forward+backward alone (``ClassifierGuidance.gradient``) at the same batch:

    ratio = guided step / unguided step
    extra / classifier pass = (guided − unguided) / classifier gradient   (1.0: one classifier pass)

Random-init weights (the cost of a pass does not depend on the values). Cases are interleaved in a
shuffled order per round so a busy machine slows them alike; each number is the median over
rounds after one warm-up round, wall time and process CPU time.

    python benchmarks/diffusers_overhead.py --threads 1 --repeats 5 --out diffusers_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

import torch
import torchvision

from offshelf.classifiers.softplus import softplus_surgery
from offshelf.guidance import ClassifierGuidance
from offshelf.integrations.diffusers import GuidedModel, SchedulerGuidance, scale_model_input

SCHEDULERS = ["DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler",
              "FlowMatchEulerDiscreteScheduler"]


def small_unet():
    """A small pixel UNet2DModel: 32×32 RGB, channels (32, 64, 64), 2 layers per block."""
    import diffusers

    return diffusers.UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                                 block_out_channels=(32, 64, 64), norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))


def small_dit_and_vae():
    """A small DiT (latent 8×8×4, 4 layers, width 128) and a small VAE decoding to 32×32."""
    import diffusers

    dit = diffusers.DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=32, in_channels=4, out_channels=8,
                                          num_layers=4, sample_size=8, patch_size=2, num_embeds_ada_norm=10)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64),
                                  down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                                  norm_num_groups=8, layers_per_block=1, sample_size=32)
    return dit, vae


def make_scheduler(name: str):
    import diffusers

    options = {"clip_sample": False} if name in ("DDPMScheduler", "DDIMScheduler") else {}
    return getattr(diffusers, name)(**options)


def sampling_loop(model, scheduler, x, steps, class_labels=None):
    scheduler.set_timesteps(steps)
    extra = {} if class_labels is None else {"class_labels": class_labels}
    channels = x.shape[1]
    with torch.no_grad():
        for t in scheduler.timesteps:
            x_in = scale_model_input(scheduler, x, t)
            out = model(x_in, timestep=t.reshape(1).expand(len(x)), **extra).sample
            x = scheduler.step(out[:, :channels], t, x).prev_sample
    return x


def measure(batch: int, steps: int, repeats: int) -> dict:
    torch.manual_seed(0)
    unet = small_unet().eval().requires_grad_(False)
    dit, vae = (m.eval().requires_grad_(False) for m in small_dit_and_vae())
    classifier = softplus_surgery(torchvision.models.resnet18(weights=None, num_classes=10), 3.0)
    classifier = classifier.eval().requires_grad_(False)
    guidance = ClassifierGuidance(classifier, joint_temperature=1.0, marginal_temperature=0.5)
    y = torch.arange(batch) % 10
    x_pixel, x_latent = torch.randn(batch, 3, 32, 32), torch.randn(batch, 4, 8, 8)

    cases = {}
    for name in SCHEDULERS:
        plain, guided = make_scheduler(name), make_scheduler(name)
        wrapped = GuidedModel(unet, SchedulerGuidance(guided, guidance, scale=1.0, sine_factor=0.3), target=y)
        cases[f"unet/{name}/unguided"] = lambda s=plain: sampling_loop(unet, s, x_pixel, steps)
        cases[f"unet/{name}/guided"] = lambda s=guided, m=wrapped: sampling_loop(m, s, x_pixel, steps)
    name = "DPMSolverMultistepScheduler"
    plain, guided = make_scheduler(name), make_scheduler(name)
    wrapped = GuidedModel(dit, SchedulerGuidance(guided, guidance, scale=1.0, sine_factor=0.3, vae=vae), target=y)
    cases[f"dit+vae/{name}/unguided"] = lambda: sampling_loop(dit, plain, x_latent, steps, y)
    cases[f"dit+vae/{name}/guided"] = lambda: sampling_loop(wrapped, guided, x_latent, steps, y)
    # the classifier pass alone, once per step: on the pixel x̂0, and through the VAE decoder on the latent one
    from offshelf.samplers.dit import decoder_gradient

    cases["classifier_grad/pixel"] = lambda: [guidance.gradient(x_pixel, y) for _ in range(steps)]
    cases["classifier_grad/latent"] = lambda: [decoder_gradient(guidance, vae, x_latent, y, None, 0.18215)
                                               for _ in range(steps)]

    def timed(fn):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps

    for fn in cases.values():  # warm-up
        fn()
    wall = {n: [] for n in cases}
    cpu = {n: [] for n in cases}
    order = random.Random(0)
    for _ in range(repeats):
        names = list(cases)
        order.shuffle(names)
        for n in names:
            w, c = timed(cases[n])
            wall[n].append(w)
            cpu[n].append(c)
    median = {n: statistics.median(v) for n, v in wall.items()}
    median_cpu = {n: statistics.median(v) for n, v in cpu.items()}
    return dict(batch=batch, steps=steps, repeats=repeats, threads=torch.get_num_threads(), torch=torch.__version__,
                diffusers=__import__("diffusers").__version__, cpu=platform.processor() or platform.machine(),
                cpu_count=os.cpu_count(), load_average=os.getloadavg(),
                unet_params=sum(p.numel() for p in unet.parameters()), dit_params=sum(p.numel() for p in dit.parameters()),
                vae_params=sum(p.numel() for p in vae.parameters()),
                classifier_params=sum(p.numel() for p in classifier.parameters()),
                median_s_per_step=median, median_cpu_s_per_step=median_cpu, wall_s_per_step=wall, cpu_s_per_step=cpu)


def markdown_table(result: dict) -> str:
    wall, cpu = result["median_s_per_step"], result["median_cpu_s_per_step"]
    lines = [f"batch {result['batch']}, {result['steps']} steps per loop, median of {result['repeats']} interleaved "
             f"rounds after one warm-up, CPU, {result['threads']} torch thread(s); load average at the end "
             f"{', '.join(f'{v:.1f}' for v in result['load_average'])}",
             "",
             "| model / scheduler | unguided ms/step | guided ms/step | ratio (wall) | ratio (CPU) "
             "| extra / classifier pass (wall) | extra / classifier pass (CPU) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for key in wall:
        if not key.endswith("/unguided"):
            continue
        stem = key[: -len("/unguided")]
        grad = "classifier_grad/latent" if stem.startswith("dit") else "classifier_grad/pixel"
        g, u = wall[stem + "/guided"], wall[key]
        g_cpu, u_cpu = cpu[stem + "/guided"], cpu[key]
        lines.append(f"| {stem} | {1e3 * u:.1f} | {1e3 * g:.1f} | {g / u:.2f} | {g_cpu / u_cpu:.2f} | "
                     f"{(g - u) / wall[grad]:.2f} | {(g_cpu - u_cpu) / cpu[grad]:.2f} |")
    lines += ["", f"classifier forward+backward per step: pixel {1e3 * wall['classifier_grad/pixel']:.1f} ms, "
                  f"through the VAE decoder {1e3 * wall['classifier_grad/latent']:.1f} ms"]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    parser.add_argument("--table", type=Path, default=None, help="only print the table of a result JSON written before")
    args = parser.parse_args(argv)
    if args.table is not None:
        print(markdown_table(json.loads(args.table.read_text())))
        return
    if args.batch < 1 or args.steps < 2 or args.repeats < 1:
        parser.error("--batch and --repeats must be >= 1, --steps >= 2")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = measure(args.batch, args.steps, args.repeats)
    print(markdown_table(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(f".{args.out.name}.tmp")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
