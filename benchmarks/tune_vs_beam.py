"""offshelf tune (calibrated) against TFG's beam search on digits (issue 27 item 3, docs/tuning.md §8).

Per classifier family and regime: run the calibrated tuner (`run_tune`, its defaults), then TFG's
beam search (`run_tfg_beam`) three times: as published (64 samples per candidate, top-2, 6 rounds,
the best finalist at the tuner's full fidelity, 500); at the tuner's budget (samples per candidate
such that the most candidates the rounds can screen, plus the finalist's full draw, cost what the
calibrated tuner spent in all: Stage 1, the guided β choice and Stage 2; the beam spends at most
that, less when its rounds run out of neighbours); and, whatever it costs, with every candidate
screened on the finalists' 500 samples (``--full-screen-samples``: the beam without screening
noise). Both searches draw their own samples on seeds 40,000,000…; their chosen settings are then
drawn again on seeds 0 … N−1, which chose nothing, and judged by the digits evaluation network
(which guides nothing): FID with the basic bootstrap 95 % interval, and the paired difference
beam − calibrated on the same seeds and bootstrap indices. Prints a Markdown table row per
method; writes result.json to --out.

    PYTHONPATH=src .venv/bin/python benchmarks/tune_vs_beam.py --models results/digits/models \\
        --regime uncond --out results/bench_beam/uncond
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from digits_family import load_digits_family  # beside this script

from offshelf import statistics
from offshelf.metrics import extract_features, feature_statistics, frechet_distance
from offshelf.settings import Setting
from offshelf.stages import sample_shard
from offshelf.beam_search import BeamSpec, max_candidates
from offshelf.tuning import TuneSpec, beam_knobs, run_tfg_beam, run_tune


def calibrated_cost(summary: dict) -> int:
    return (summary["stage1_denoiser_evaluations"] + summary["stage1_guided_denoiser_evaluations"]
            + summary["stage2_denoiser_evaluations"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="results/digits/models")
    parser.add_argument("--respacing", default="25", help="the default config's sampling.respacing")
    parser.add_argument("--regime", default="uncond", choices=["cond", "uncond"])
    parser.add_argument("--network", default="", help="the classifier family (mlp, vit; default: the ResNet)")
    parser.add_argument("--samples", type=int, default=500, help="fresh samples per chosen setting (seeds 0 … N−1)")
    parser.add_argument("--full-fidelity", type=int, default=500, help="both searches' finalist samples")
    parser.add_argument("--full-screen-samples", type=int, default=500,
                        help="a third beam with this many samples per candidate, whatever it costs (0: none)")
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="results/bench_beam/uncond")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    digits = load_digits_family(args.models, args.regime, args.network, args.respacing)
    backend, family, guiding, judging, sampling = digits.backend, digits.family, digits.guiding, digits.judging, digits.sampling
    models, extractor, reference, ref = digits.models, digits.extractor, digits.reference, digits.reference_statistics
    per_sample = backend.work_per_sample(family, sampling)["denoiser"]
    has_relu = not args.network == "vit"
    spec = TuneSpec(network=args.network, regime=args.regime, softplus_betas=(math.inf, 8.0, 5.0, 4.0, 3.0, 2.0)
                    if has_relu else (math.inf,),
                    search={"initial": (1.0, 3.0, 10.0), "low_fidelity": 100, "full_fidelity": args.full_fidelity})

    def timed(run, *a, **k):
        start = time.perf_counter()
        value = run(*a, **k)
        return value, time.perf_counter() - start

    common = dict(evaluation={"reference_split": "train"}, sampling=sampling, batch_size=args.batch_size,
                  reference_features=reference)
    tuned, tuned_seconds = timed(run_tune, backend, models, spec, out / "calibrated", guiding, judging, **common)
    budget = calibrated_cost(tuned)
    published, published_seconds = timed(run_tfg_beam, backend, models, spec, out / "beam_published", guiding,
                                         judging, **common)
    # at the tuner's budget: the most candidates the rounds can screen (max_candidates, whatever the
    # FIDs) × n, plus the finalist's (full − n) more seeds, = the tuner's samples; so the beam never
    # spends more than the tuner, and spends less when its rounds run out of neighbours early
    knobs, _ = beam_knobs(backend, spec)
    most = max_candidates(BeamSpec(knobs=knobs))
    n_equal = int((budget / per_sample - args.full_fidelity) // (most - 1))
    n_equal = max(1, min(n_equal, args.full_fidelity))
    equal, equal_seconds = timed(run_tfg_beam, backend, models, spec, out / "beam_equal", guiding, judging,
                                 beam={"samples_per_candidate": n_equal}, **common)

    variants = [("tfg-beam (published, 64/candidate)", published, published_seconds),
                (f"tfg-beam (equal budget, {n_equal}/candidate)", equal, equal_seconds)]
    if args.full_screen_samples:  # screening noise removed: every candidate on as many samples as a finalist
        full, full_seconds = timed(run_tfg_beam, backend, models, spec, out / "beam_full_screen", guiding, judging,
                                   beam={"samples_per_candidate": args.full_screen_samples}, **common)
        variants.append((f"tfg-beam ({args.full_screen_samples}/candidate, over budget)", full, full_seconds))

    def fresh(setting: Setting):
        images, _, _ = sample_shard(backend, models, setting, list(range(args.samples)), args.batch_size)
        features = extract_features(images, extractor.features, extractor.batch_size)
        stats = feature_statistics(features)
        fid = frechet_distance(stats.mu, stats.sigma, ref.mu, ref.sigma)
        replicates = statistics.bootstrap(features, reference_mu=ref.mu, reference_sigma=ref.sigma,
                                          num_resamples=args.bootstrap)
        return fid, replicates, statistics.intervals({"fid": fid}, replicates)

    def setting_of(summary) -> Setting:
        from offshelf.tuning import beam_setting

        if summary.get("method") == "tfg-beam":
            return beam_setting(spec, summary["knobs"])
        return Setting(regime=args.regime, network=args.network,
                       softplus_beta=float(summary["chosen"]["softplus_beta"]),
                       marginal_temperature=summary["chosen"]["marginal_temperature"],
                       sine_factor=summary["sine_factor"], scale=summary["scale"])

    rows = {}
    base_fid, base_rep, base_interval = fresh(setting_of(tuned))
    rows["calibrated"] = dict(setting=setting_of(tuned).name, fid=base_fid, fid_lo=base_interval["fid_lo"],
                              fid_hi=base_interval["fid_hi"], denoiser_evaluations=budget, seconds=tuned_seconds)
    for label, summary, seconds in variants:
        fid, rep, interval = fresh(setting_of(summary))
        diff, lo, hi = statistics.paired_difference("fid", fid, base_fid, rep["fid"], base_rep["fid"])
        rows[label] = dict(setting=setting_of(summary).name, fid=fid, fid_lo=interval["fid_lo"],
                           fid_hi=interval["fid_hi"], denoiser_evaluations=summary["denoiser_evaluations"],
                           seconds=seconds, diff=diff, diff_lo=lo, diff_hi=hi,
                           candidates=sum(summary["candidates_per_round"]), dropped_knobs=summary["dropped_knobs"])
    result = {"regime": args.regime, "network": args.network or "resnet", "judge": extractor.name,
              "fresh_seeds": [0, args.samples - 1], "rows": rows, "calibrated_summary": tuned,
              "beam_summaries": {label: summary for label, summary, _ in variants}}
    (out / "result.json").write_text(json.dumps(result, indent=2, default=str))
    family_name = {"": "ResNet", "mlp": "MLP", "vit": "ViT"}.get(args.network, args.network)
    for label, row in rows.items():
        paired = ("—" if "diff" not in row else
                  f"{row['diff']:+.3f} [{row['diff_lo']:+.3f}, {row['diff_hi']:+.3f}]")
        print(f"| {family_name} | {args.regime} | {label} | {row['setting']} | {row['fid']:.3f} "
              f"[{row['fid_lo']:.3f}, {row['fid_hi']:.3f}] | {row['denoiser_evaluations']:,} | {paired} | "
              f"{row['seconds']:.0f} |")


if __name__ == "__main__":
    main()
