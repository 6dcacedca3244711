"""Evaluation vs generation cost on the digits benchmark (CPU).

Loads the trained digits networks of a finished default run and times (a) generating guided
samples with the paper's calibrated setting and (b) evaluating 10,000 samples: evaluation-network
features, FID and k=3 precision/recall. Prints a Markdown table.

    .venv/bin/python benchmarks/digits_costs.py --models results/digits/models
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from offshelf.backends.digits import DigitsBackend
from offshelf.metrics import extract_features, fid_from_features, precision_recall
from offshelf.settings import Setting
from offshelf.stages import sample_shard


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="results/digits/models")
    parser.add_argument("--respacing", default="50")
    parser.add_argument("--generate", type=int, default=1000, help="samples to generate")
    parser.add_argument("--evaluate", type=int, default=10_000, help="samples to evaluate")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    files = {r: f"{args.models}/{r}.pt" for r in ("denoiser", "offshelf", "finetuned", "evaluator")}
    backend = DigitsBackend()
    models = backend.load(files, {"respacing": args.respacing})
    setting = Setting(regime="uncond", softplus_beta=3, marginal_temperature=0.5, sine_factor=0.3, scale=3)

    images, _, generate_s = sample_shard(backend, models, setting, list(range(args.generate)), batch_size=500)
    per_sample_generate = generate_s / args.generate

    pool = np.concatenate([images] * int(np.ceil(args.evaluate / len(images))))[:args.evaluate]
    extractor = backend.feature_extractor(files)
    features_fn = extractor.features
    start = time.perf_counter()
    features = extract_features(pool, features_fn, batch_size=512)
    features_s = time.perf_counter() - start
    reference = backend.reference_features(files, extractor, {"reference_split": "train"})["features"]
    start = time.perf_counter()
    fid_from_features(features, reference)
    precision_recall(reference, features, nhood_size=3)
    metrics_s = time.perf_counter() - start

    evaluate_s = features_s + metrics_s
    print("| measurement | value |\n|---|---|")
    print(f"| generation ({args.respacing} steps, calibrated guidance, batch 500) | {1 / per_sample_generate:.0f} samples/s |")
    print(f"| evaluation-network features | {args.evaluate / features_s:.0f} images/s |")
    print(f"| FID + k=3 precision/recall on {args.evaluate} vs {len(reference)} reference | {metrics_s:.2f} s |")
    print(f"| evaluating {args.evaluate} samples / generating them | {evaluate_s / (per_sample_generate * args.evaluate):.3f} |")


if __name__ == "__main__":
    main()
