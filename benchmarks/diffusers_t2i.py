"""What does off-the-shelf guidance cost per step of a text-to-image pipeline?

For each family (Stable Diffusion, SDXL, SD3, Flux: random pipelines from
``offshelf.integrations.tiny_pipelines``, ``--width`` channels, ``--size``² images), one pipeline
call of ``--steps`` steps, two prompts, the pipeline's CFG where it has one (Flux: none), timed per
step with ``callback_on_step_end`` (the mean time between consecutive step ends; the first
step, the text encoders and the final decode are not counted):

* ``unguided`` -- the pipeline itself;
* ``guided/vae`` -- ``offshelf.guide(pipe, reward, scale=1)``: x̂0 decoded by the full VAE and the
  reward's gradient back through it, every step;
* ``guided/tiny`` -- the same through an AutoencoderTiny (TAESD's architecture) instead;
* ``guided/vae/every2`` -- the full VAE, every other step (``every=2``).

The reward is −‖x − target‖² (its own cost is negligible: the numbers are the decoder's). Cases are
interleaved in a shuffled order per round so a busy machine slows them alike; each number is the
median over rounds (after one warm-up round) of a call's mean per-step wall (and process CPU) time.

    python benchmarks/diffusers_t2i.py --threads 1 --repeats 3 --out diffusers_t2i.json
    python benchmarks/diffusers_t2i.py --table diffusers_t2i.json     # the table again
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

import offshelf
from offshelf.integrations.tiny_pipelines import FAMILIES, build, tiny_taesd

CASES = ("unguided", "guided/vae", "guided/tiny", "guided/vae/every2")


def reward_towards(size: int):
    target = torch.linspace(-0.8, 0.8, size).view(1, 1, 1, size)

    def reward(images):
        return -((images - target.to(images)) ** 2).flatten(1).sum(1)
    return reward


def pipelines(family: str, size: int, width: int, folder: Path) -> dict:
    pipe = build(family, folder, size=size, width=width)
    pipe.set_progress_bar_config(disable=True)
    reward = reward_towards(size)
    return {"unguided": pipe,
            "guided/vae": offshelf.guide(pipe, reward, scale=1.0),
            "guided/tiny": offshelf.guide(pipe, reward, scale=1.0, decoder=tiny_taesd(width=width)),
            "guided/vae/every2": offshelf.guide(pipe, reward, scale=1.0, every=2)}


def timed_call(pipe, family: str, size: int, steps: int) -> tuple[float, float]:
    """Mean wall and CPU seconds per step over steps 2..N of one call (with ``every=2`` an odd
    ``steps`` makes half of them guided)."""
    marks = []

    def on_step_end(p, i, t, tensors):
        marks.append((time.perf_counter(), time.process_time()))
        return tensors

    options = dict(num_inference_steps=steps, height=size, width=size, output_type="latent",
                   generator=torch.Generator().manual_seed(0), callback_on_step_end=on_step_end)
    if family != "flux":
        options.update(negative_prompt=["", "blurry"], guidance_scale=4.0)
    pipe(["a red cat", "a dog"], **options)
    return (marks[-1][0] - marks[0][0]) / (len(marks) - 1), (marks[-1][1] - marks[0][1]) / (len(marks) - 1)


def measure(size: int, width: int, steps: int, repeats: int) -> dict:
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        pipes = {family: pipelines(family, size, width, Path(folder) / family) for family in FAMILIES}
        params = {family: dict(denoiser=sum(p.numel() for p in (pipes[family]["unguided"].unet if family in ("sd", "sdxl")
                                                               else pipes[family]["unguided"].transformer).parameters()),
                               vae_decoder=sum(p.numel() for p in pipes[family]["unguided"].vae.decoder.parameters()),
                               tiny_decoder=sum(p.numel() for p in tiny_taesd(width=width).decoder.parameters()))
                  for family in FAMILIES}
        work = [(family, case) for family in FAMILIES for case in CASES]
        samples = {key: ([], []) for key in work}
        for round_ in range(repeats + 1):
            random.Random(round_).shuffle(work)
            for family, case in work:
                wall, cpu = timed_call(pipes[family][case], family, size, steps)
                if round_:  # round 0 warms up
                    samples[(family, case)][0].append(wall)
                    samples[(family, case)][1].append(cpu)
        for (family, case), (wall, cpu) in samples.items():
            rows[f"{family}/{case}"] = dict(wall_ms=1000 * statistics.median(wall), cpu_ms=1000 * statistics.median(cpu))
    return dict(rows=rows, params=params, size=size, width=width, steps=steps, repeats=repeats,
                threads=torch.get_num_threads(), torch=torch.__version__, machine=platform.machine(),
                cpu_count=os.cpu_count(), load_average=os.getloadavg(), device="cpu")


def markdown_table(result: dict) -> str:
    lines = [f"{result['size']}×{result['size']} images, 2 prompts (CFG: batch 4 except Flux), width "
             f"{result['width']}, {result['steps']} steps, mean per step (steps 2..N), median over {result['repeats']} "
             f"interleaved rounds after one warm-up, CPU, {result['threads']} torch thread(s); load average at the end "
             f"{', '.join(f'{v:.1f}' for v in result['load_average'])}", "",
             "| family | unguided ms/step | guided, VAE | guided, TAESD | guided, VAE, every 2nd | "
             "ratio VAE (wall) | ratio TAESD (wall) | ratio VAE (CPU) | ratio TAESD (CPU) | ratio every 2nd (CPU) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows = result["rows"]
    for family in FAMILIES:
        r = {case: rows[f"{family}/{case}"] for case in CASES}
        base_wall, base_cpu = r["unguided"]["wall_ms"], r["unguided"]["cpu_ms"]
        lines.append(f"| {family} | {base_wall:.1f} | {r['guided/vae']['wall_ms']:.1f} | "
                     f"{r['guided/tiny']['wall_ms']:.1f} | {r['guided/vae/every2']['wall_ms']:.1f} | "
                     f"{r['guided/vae']['wall_ms'] / base_wall:.2f} | {r['guided/tiny']['wall_ms'] / base_wall:.2f} | "
                     f"{r['guided/vae']['cpu_ms'] / base_cpu:.2f} | {r['guided/tiny']['cpu_ms'] / base_cpu:.2f} | "
                     f"{r['guided/vae/every2']['cpu_ms'] / base_cpu:.2f} |")
    lines.append("")
    lines.append("parameters: " + "; ".join(f"{f}: denoiser {p['denoiser'] / 1e6:.2f}M, VAE decoder "
                                            f"{p['vae_decoder'] / 1e6:.2f}M, TAESD decoder {p['tiny_decoder'] / 1e6:.2f}M"
                                            for f, p in result["params"].items()))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64, help="image side (pixels; latents are half)")
    parser.add_argument("--width", type=int, default=32, help="UNet/VAE channel width (transformer heads: width/4)")
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--table", type=Path, help="print the table of a saved result and stop")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())))
        return
    torch.set_num_threads(args.threads)
    result = measure(args.size, args.width, args.steps, args.repeats)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown_table(result))


if __name__ == "__main__":
    main()
