"""Evaluation cost on CPU: Inception features per second and 10k x 10k precision/recall.

    .venv/bin/python benchmarks/eval_throughput.py [--batches 3] [--threads 2]

(a) The network: clean-fid's TorchScript Inception (inception-2015-12-05.pt) cannot be built
    without that file, which is not available offline. Stand-in of the same size and graph
    family: torchvision inception_v3(weights=None, aux_logits=False, init_weights=False),
    random weights (cost only, features meaningless), fed 128x128 uint8 samples through
    offshelf's legacy_tensorflow wrapper with a bilinear resize to 299x299 in front of the
    network, as the TF graph does inside. Batch 50, as ADM's evaluator and pytorch-fid use.
(b) precision/recall (k = 3) on 10,000 reference x 10,000 sample 2048-d random features:
    two k-NN radius passes plus one cross pass, exact float32 distances in row batches.
"""

import argparse
import platform
import resource
import time

import numpy as np
import torch
import torchvision

from offshelf import metrics


class ResizeThenInception(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
        self.net.fc = torch.nn.Identity()  # 2048-d pool features

    def forward(self, x):  # NCHW float in [0, 255]
        x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.net((x - 128) / 128)


def bench_inception(batches: int, batch_size: int = 50) -> dict:
    model = ResizeThenInception().eval()
    feature_fn = metrics.cleanfid_feature_fn(model, "legacy_tensorflow", device="cpu")
    images = np.random.default_rng(0).integers(0, 256, ((batches + 1) * batch_size, 128, 128, 3), dtype=np.uint8)
    metrics.extract_features(images[:8], feature_fn, batch_size)  # warm-up
    start, cpu_start = time.perf_counter(), time.process_time()
    features = metrics.extract_features(images[batch_size:], feature_fn, batch_size)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    assert features.shape == (batches * batch_size, 2048)
    return dict(n=len(features), seconds=seconds, cpu_seconds=cpu_seconds, rate=len(features) / seconds)


def bench_precision_recall(n: int = 10_000, dim: int = 2048) -> dict:
    rng = np.random.default_rng(1)
    reference = rng.standard_normal((n, dim), dtype=np.float32)
    samples = rng.standard_normal((n, dim), dtype=np.float32) * 1.05 + 0.02
    start, cpu_start = time.perf_counter(), time.process_time()
    precision, recall = metrics.precision_recall(reference, samples)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return dict(n=n, seconds=seconds, cpu_seconds=cpu_seconds, precision=precision, recall=recall)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=2, help="timed batches of 50 images")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    inception = bench_inception(args.batches)
    pr = bench_precision_recall()
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, peak RSS {peak_gib:.2f} GiB\n")
    # CPU time next to wall time: on a shared machine the gap is time spent waiting for a core.
    print("| measurement | setting | work | wall (s) | CPU (s) | throughput (wall) |")
    print("|---|---|---|---|---|---|")
    print(f"| Inception features (stand-in: torchvision inception_v3, random init) | 128x128 uint8 -> bilinear 299 in-network, batch 50, CPU | "
          f"{inception['n']} images | {inception['seconds']:.1f} | {inception['cpu_seconds']:.1f} | {inception['rate']:.2f} images/s |")
    print(f"| precision/recall, k=3 (offshelf, float32 torch) | 10,000 ref x 10,000 samples, 2048-d, row batch 1000, CPU | "
          f"3 x 10k x 10k distances | {pr['seconds']:.1f} | {pr['cpu_seconds']:.1f} | {3 * pr['n'] ** 2 / pr['seconds'] / 1e6:.1f} M distances/s |")
    print(f"\n(random features: precision {pr['precision']:.4f}, recall {pr['recall']:.4f}; "
          f"50k samples at this feature rate: {50_000 / inception['rate'] / 3600:.1f} h on this CPU)")


if __name__ == "__main__":
    main()
