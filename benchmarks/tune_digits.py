"""offshelf tune vs a dense grid on the digits benchmark (docs/tuning.md §6).

Per classifier family: run the tuner (Stage 1 on held-out digits, Stage 2's scale search), then
sample a dense grid over β × τ2 × γ × scale with N samples per point (seeds 0 … N−1), and the
tuned setting with the same N seeds (fresh samples: the search's own FIDs were used to choose it).
Pass = the tuned FID lies within the 95 % bootstrap interval of the grid's best point (or below
it) at ≤ 20 % of the grid's sampling compute, counted in denoiser evaluations. Beside it, the
paired difference tuned − grid best (same seeds, the same bootstrap indices; its interval is for
the difference, in which FID's finite-N bias largely cancels): "not worse" when its interval
reaches 0 or below. Out of sample: the grid best was chosen on the seeds it is judged on, so both
it and the tuned setting are drawn again on seeds N … 2N−1 and compared the same way. Every FID is judged
by the digits evaluation network, which guides nothing. Prints a Markdown table; writes the grid
to --out.

    PYTHONPATH=src .venv/bin/python benchmarks/tune_digits.py --models results/digits/models \\
        --regime uncond --samples 500 --out results/digits/tune_benchmark
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from digits_family import load_digits_family  # beside this script

from offshelf import statistics
from offshelf.metrics import extract_features, feature_statistics, frechet_distance
from offshelf.settings import Setting
from offshelf.stages import sample_shard
from offshelf.tuning import TuneSpec, run_tune


def numbers(text: str) -> list[float]:
    return [math.inf if v in ("inf", "relu") else float(v) for v in text.split(",")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="results/digits/models")
    parser.add_argument("--respacing", default="25", help="the default config's sampling.respacing")
    parser.add_argument("--regime", default="uncond", choices=["cond", "uncond"])
    parser.add_argument("--classifier", default="offshelf", help="the family to tune (digits: offshelf)")
    parser.add_argument("--network", default="", help="the classifier family (mlp, vit, wide...; default: the ResNet)")
    parser.add_argument("--samples", type=int, default=500, help="samples per grid point and for the tuned setting")
    parser.add_argument("--betas", default="inf,3", help="the grid's Softplus β (inf = ReLU)")
    parser.add_argument("--tune-betas", default="inf,8,5,4,3,2",
                        help="Stage 1's β candidates (a family without ReLU, e.g. vit: inf)")
    parser.add_argument("--temperatures", default="0.1,0.2,0.5,1.0")
    parser.add_argument("--sine-factors", default="0,0.3")
    parser.add_argument("--scales", default="1,3,10,30")
    parser.add_argument("--beta-choice", default="guided", choices=["guided", "unguided"], help="tune.beta_choice")
    parser.add_argument("--low-fidelity", type=int, default=100, help="the scale search's screening samples")
    parser.add_argument("--full-fidelity", type=int, default=500, help="the scale search's finalist samples")
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="results/digits/tune_benchmark")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    digits = load_digits_family(args.models, args.regime, args.network, args.respacing)
    backend, guiding, judging, sampling = digits.backend, digits.guiding, digits.judging, digits.sampling
    models, extractor, reference, ref = digits.models, digits.extractor, digits.reference, digits.reference_statistics

    def fid_of(setting: Setting, first_seed: int = 0) -> tuple[float, np.ndarray, float]:
        seeds = list(range(first_seed, first_seed + args.samples))
        images, _, seconds = sample_shard(backend, models, setting, seeds, args.batch_size)
        features = extract_features(images, extractor.features, extractor.batch_size)
        stats = feature_statistics(features)
        return frechet_distance(stats.mu, stats.sigma, ref.mu, ref.sigma), features, seconds

    # --- the tuner
    start = time.perf_counter()
    spec = TuneSpec(classifier=args.classifier, network=args.network, regime=args.regime,
                    softplus_betas=tuple(numbers(args.tune_betas)), beta_choice=args.beta_choice,
                    search={"initial": (1.0, 3.0, 10.0), "low_fidelity": args.low_fidelity,
                            "full_fidelity": args.full_fidelity})
    summary = run_tune(backend, models, spec, out / "tuned", guiding, judging, {"reference_split": "train"}, sampling,
                       args.batch_size, reference_features=reference)
    tune_seconds = time.perf_counter() - start
    tuned = Setting(regime=args.regime, classifier=args.classifier, network=args.network, softplus_beta=float(summary["chosen"]["softplus_beta"]),
                    marginal_temperature=summary["chosen"]["marginal_temperature"], sine_factor=summary["sine_factor"],
                    scale=summary["scale"])
    tuned_fid, tuned_features, _ = fid_of(tuned)
    tuned_work = (summary["stage1_denoiser_evaluations"] + summary["stage1_guided_denoiser_evaluations"]
                  + summary["stage2_denoiser_evaluations"])

    # --- the dense grid
    per_sample = backend.work_per_sample(tuned, sampling)["denoiser"]
    rows, best = [], None
    grid = list(itertools.product(numbers(args.betas), numbers(args.temperatures), numbers(args.sine_factors),
                                  numbers(args.scales)))
    start = time.perf_counter()
    for beta, tau, gamma, scale in grid:
        setting = Setting(regime=args.regime, classifier=args.classifier, network=args.network, softplus_beta=beta,
                          marginal_temperature=tau, sine_factor=gamma, scale=scale)
        fid, features, seconds = fid_of(setting)
        rows.append(dict(softplus_beta=beta, marginal_temperature=tau, sine_factor=gamma, scale=scale, fid=fid,
                         seconds=seconds))
        if best is None or fid < best[0]:
            best = (fid, features, setting)
        pd.DataFrame(rows).to_csv(out / "grid.csv", index=False)
    grid_seconds = time.perf_counter() - start
    grid_work = len(grid) * args.samples * per_sample

    def compare(best_fid, best_features, tuned_fid, tuned_features):
        """The grid best's 95 % interval and the paired difference tuned − best (same bootstrap indices)."""
        best_replicates = statistics.bootstrap(best_features, reference_mu=ref.mu, reference_sigma=ref.sigma,
                                               num_resamples=args.bootstrap)
        tuned_replicates = statistics.bootstrap(tuned_features, reference_mu=ref.mu, reference_sigma=ref.sigma,
                                                num_resamples=args.bootstrap)
        return (statistics.intervals({"fid": best_fid}, best_replicates),
                statistics.paired_difference("fid", tuned_fid, best_fid, tuned_replicates["fid"],
                                             best_replicates["fid"]))

    interval, (diff, diff_lo, diff_hi) = compare(best[0], best[1], tuned_fid, tuned_features)
    within = tuned_fid <= interval["fid_hi"]
    cheap = tuned_work <= 0.2 * grid_work

    # out of sample: the grid best was chosen on seeds 0 … N−1 (the minimum of many noisy values,
    # biased low there); the grid best and the tuned setting again on seeds N … 2N−1, which chose nothing
    best_fresh, best_fresh_features, _ = fid_of(best[2], args.samples)
    tuned_fresh, tuned_fresh_features, _ = fid_of(tuned, args.samples)
    fresh_interval, fresh_diff = compare(best_fresh, best_fresh_features, tuned_fresh, tuned_fresh_features)
    result = {
        "regime": args.regime, "classifier": args.classifier, "judge": extractor.name, "samples": args.samples,
        "grid_points": len(grid), "grid_best": best[2].name, "grid_best_fid": best[0],
        "grid_best_fid_lo": interval["fid_lo"], "grid_best_fid_hi": interval["fid_hi"],
        "tuned": tuned.name, "tuned_fid": tuned_fid, "tuned_denoiser_evaluations": tuned_work,
        "grid_denoiser_evaluations": grid_work, "compute_ratio": tuned_work / grid_work,
        "pass": bool(within and cheap), "fid_diff": diff, "fid_diff_lo": diff_lo, "fid_diff_hi": diff_hi,
        "not_worse_paired": bool(diff_lo <= 0), "tune_seconds": tune_seconds, "grid_seconds": grid_seconds,
        "fresh_seeds": [args.samples, 2 * args.samples - 1], "grid_best_fresh_fid": best_fresh,
        "grid_best_fresh_fid_lo": fresh_interval["fid_lo"], "grid_best_fresh_fid_hi": fresh_interval["fid_hi"],
        "tuned_fresh_fid": tuned_fresh, "pass_fresh": bool(tuned_fresh <= fresh_interval["fid_hi"] and cheap),
        "fresh_fid_diff": fresh_diff[0], "fresh_fid_diff_lo": fresh_diff[1], "fresh_fid_diff_hi": fresh_diff[2],
        "tuner_summary": summary,
    }
    (out / "result.json").write_text(json.dumps(result, indent=2, default=str))
    print("| family | regime | tuned setting | tuned FID | grid best | grid best FID [95 %] | denoiser evals tuned / grid | pass "
          "| tuned − best [95 %, paired] | not worse (paired) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.network or args.classifier} | {args.regime} | {tuned.name} | {tuned_fid:.3f} | {best[2].name} | "
          f"{best[0]:.3f} [{interval['fid_lo']:.3f}, {interval['fid_hi']:.3f}] | "
          f"{tuned_work:,} / {grid_work:,} ({100 * tuned_work / grid_work:.1f} %) | "
          f"{'yes' if result['pass'] else 'no'} | {diff:+.3f} [{diff_lo:+.3f}, {diff_hi:+.3f}] | "
          f"{'yes' if result['not_worse_paired'] else 'no'} |")
    print()
    print(f"| family | regime | seeds {args.samples}…{2 * args.samples - 1}: grid best FID [95 %] | tuned FID | pass "
          f"| tuned − best [95 %, paired] |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.network or args.classifier} | {args.regime} | {best_fresh:.3f} [{fresh_interval['fid_lo']:.3f}, "
          f"{fresh_interval['fid_hi']:.3f}] | {tuned_fresh:.3f} | {'yes' if result['pass_fresh'] else 'no'} | "
          f"{fresh_diff[0]:+.3f} [{fresh_diff[1]:+.3f}, {fresh_diff[2]:+.3f}] |")
    print(f"tuner {tune_seconds:.0f} s, grid {grid_seconds:.0f} s ({len(grid)} points × {args.samples} samples)")


if __name__ == "__main__":
    main()
