"""What guided calibration adds to the digits run (CPU): one calibration profile of a probe along
unguided conditional trajectories (the ``calibrate`` job's work) against the same probe along its
own guided trajectories in each regime (``calibrate_guided``), timed with the workflow's own
stage function on the trained networks of a finished default run. Prints a Markdown table.

    .venv/bin/python benchmarks/calibration_costs.py --models results/digits/models
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from offshelf import stages
from offshelf.backends.digits import DigitsBackend
from offshelf.config import load_config
from offshelf.planning.plan import build_plan
from offshelf.planning.probes import guided_probe
from offshelf.settings import probe_setting


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="results/digits/models")
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--probe", default="offshelf-x0_sp3")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    calibration = config["calibration"]
    backend = DigitsBackend()
    files = {r: f"{args.models}/{r}.pt" for r in ("denoiser", "offshelf", "finetuned")}
    models = backend.load(files, config["sampling"])
    probe = probe_setting(args.probe)
    cases = {"unguided (cond)": (probe, False)}
    cases.update({f"guided {r}": (guided_probe(config, replace(probe, regime=r)), True) for r in config["regimes"]})
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (setting, guided) in cases.items():
            wall, cpu = time.perf_counter(), time.process_time()
            stages.calibration_profile(backend, models, setting, calibration, config["sampling"]["batch_size"],
                                       guided=guided)
            seconds[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    steps = models.diffusion.num_steps
    print(f"probe {args.probe}, {calibration['num_samples']} trajectories x {steps} steps, "
          f"{args.threads} thread(s); best of {args.rounds} rounds\n")
    print("| profile | wall (s) | CPU (s) |\n|---|---:|---:|")
    for name, times in seconds.items():
        print(f"| {name} | {min(w for w, _ in times):.1f} | {min(c for _, c in times):.1f} |")
    plan = build_plan(config)
    guided_jobs, unguided_jobs = len(plan.guided_probes), len(plan.probes)
    cpu_guided = sum(min(c for _, c in seconds[f"guided {r}"]) for r in config["regimes"]) / len(config["regimes"])
    print(f"\n{args.config}: {unguided_jobs} unguided + {guided_jobs} guided calibration jobs; the guided ones add "
          f"{guided_jobs} x {calibration['num_samples']} x {steps} = "
          f"{guided_jobs * calibration['num_samples'] * steps:,} guided sample-steps, ~{guided_jobs * cpu_guided:.0f} "
          f"s CPU (+ one process start-up each)")


if __name__ == "__main__":
    main()
