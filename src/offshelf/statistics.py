"""95 % intervals for every table cell, and paired differences against a table's baseline row.

The method and why it was chosen are in docs/statistics.md; in short:

* **Bootstrap over samples**, not seed replicates: a replicate costs a whole sampling run (on
  ImageNet: GPU-days), a bootstrap replicate costs one covariance and one eigen-decomposition of
  the features already extracted. The reference set is fixed (the same real images for every
  row), so only the generated samples are resampled.
* **Fixed indices.** The resample indices are a function of (:data:`SEED`, N, B) alone. Every
  setting evaluated on N samples gets the *same* indices, and sample i of every setting comes
  from seed i (same noise): the replicates of two rows taken element by element are a paired
  bootstrap of their difference, with no recomputation at report time.
* **FID** (biased upward by O(1/N)): the *basic* bootstrap interval ``[2θ̂ − q97.5, 2θ̂ − q2.5]``.
  The bootstrap distribution sits above θ̂ by about as much as θ̂ sits above the infinite-N
  value, so reflecting it around θ̂ removes that bias to first order; a percentile interval
  would carry it twice. The bootstrap bias estimate ``mean(θ*) − θ̂`` is reported as
  ``fid_bias``. The lower end is clipped at 0 (a Fréchet distance is never negative).
* **Precision, accuracy**: means of per-sample indicators (sample inside the fixed reference
  manifold; argmax == label): percentile bootstrap of the same indices.
* **Recall** is not a mean over samples: it counts reference points covered by the union of the
  samples' k-NN balls, and a with-replacement resample (63 % distinct points, duplicates at
  distance 0 shrinking the radii) is biased far below it. It uses **half-sampling** instead:
  ⌊N/2⌋ samples without replacement, radii recomputed within the half. For a mean the variance
  of a half-sample mean is σ²/(N/2)·(1 − 1/2) = σ²/N, the full-sample variance (finite-population
  correction), so the deviations of the half-sample recalls from their own mean, added to the
  full-N recall, give the interval (clipped to [0, 1]).
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import numpy as np
import torch

#: One seed for every resample of every setting: the pairing of rows rests on it.
SEED = 20240613
LEVEL = 0.95
METRICS = ("fid", "precision", "recall", "accuracy")
#: Fewest resamples behind an interval (docs/statistics.md "How many resamples"): each end of a 95 %
#: interval must have at least one replicate beyond it, (B − 1)·0.025 ≥ 1, so B ≥ 41. Fewer give
#: an interval that is the replicates' min and max (B = 1: a point; the interval may miss its own
#: estimate, and every paired difference looks significant). 0 = no intervals at all.
MIN_RESAMPLES = 41
# Elements of one [chunk, N, D] gather of resampled features: bounds memory (ImageNet: N = 10k,
# D = 2048) while a digits evaluation (N = 1000, D = 32) does every replicate in one batch.
_CHUNK_ELEMENTS = 1 << 25
# Pairwise-distance matrices (samples x samples, reference x samples) are precomputed for recall's
# half-samples up to this many elements (1 GiB of float32); larger sets recompute per replicate.
_PRECOMPUTE_ELEMENTS = 1 << 28


def check_num_resamples(num_resamples: int, what: str = "num_resamples") -> None:
    """0 (no intervals) or at least :data:`MIN_RESAMPLES`; anything else cannot make a 95 % interval."""
    if num_resamples != 0 and not MIN_RESAMPLES <= num_resamples:
        raise ValueError(f"{what} = {num_resamples}: a 95% interval needs at least {MIN_RESAMPLES} bootstrap "
                         f"resamples (one beyond each end; docs/statistics.md); use 0 for no intervals")


def resample_indices(n: int, num_resamples: int, seed: int = SEED) -> np.ndarray:
    """[B, n] with-replacement indices, a function of (seed, n, B) only."""
    return np.random.default_rng([seed, n, num_resamples, 0]).integers(0, n, size=(num_resamples, n))


def half_indices(n: int, num_resamples: int, seed: int = SEED) -> np.ndarray:
    """[B, ⌊n/2⌋] without-replacement half-samples, a function of (seed, n, B) only."""
    rng = np.random.default_rng([seed, n, num_resamples, 1])
    return np.stack([rng.permutation(n)[: n // 2] for _ in range(num_resamples)]) if num_resamples else \
        np.zeros((0, n // 2), dtype=np.int64)


def indices_digest(n: int, num_resamples: int, seed: int = SEED) -> str:
    """Fingerprint of both index sets: two rows pair only if theirs are equal."""
    h = hashlib.sha256()
    h.update(resample_indices(n, num_resamples, seed).astype(np.int64).tobytes())
    h.update(half_indices(n, num_resamples, seed).astype(np.int64).tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------
# Replicates of each metric.

def fid_replicates(features: np.ndarray, ref_mu: np.ndarray, ref_sigma: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """FID of each resample ``features[indices[b]]`` against fixed reference statistics, vectorised.

    Tr (Σ_b Σ_r)^{1/2} = Σ √λ(R Σ_b R) with R = Σ_r^{1/2} (symmetric, computed once): R Σ_b R is
    symmetric PSD with the eigenvalues of Σ_b Σ_r, so a batched ``eigvalsh`` replaces one general
    ``sqrtm`` per replicate (measured at D = 1024 on the project VM: 0.27 s vs 15 s of CPU; batched
    at D = 32)."""
    x = np.asarray(features, np.float64)
    n, d = x.shape
    # Centre once on the full-sample mean: each resample's mean is then near 0, so the raw second
    # moment minus n·μμᵀ loses no precision, and no [c, n, d] centred copy is made per chunk.
    shift = x.mean(axis=0)
    x = x - shift
    w, v = np.linalg.eigh(np.asarray(ref_sigma, np.float64))
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    trace_ref = float(np.trace(ref_sigma))
    out = np.empty(len(indices))
    chunk = max(1, _CHUNK_ELEMENTS // max(n * d, 1))
    for start in range(0, len(indices), chunk):
        xb = x[indices[start:start + chunk]]                     # [c, n, d]
        mu = xb.mean(axis=1)                                     # [c, d]
        sigma = (np.matmul(xb.transpose(0, 2, 1), xb) - n * mu[:, :, None] * mu[:, None, :]) / (n - 1)
        eig = np.linalg.eigvalsh(root @ sigma @ root)
        diff = mu + shift - ref_mu
        out[start:start + chunk] = ((diff * diff).sum(1) + np.trace(sigma, axis1=1, axis2=2) + trace_ref
                                    - 2 * np.sqrt(np.clip(eig, 0, None)).sum(1))
    return out


def mean_replicates(values: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Mean of ``values[indices[b]]`` per replicate (precision, accuracy)."""
    return np.asarray(values, np.float64)[indices].mean(axis=1)


def in_reference_manifold(features, reference_features, nhood_size: int = 3, device=None) -> np.ndarray:
    """Per sample: inside some reference point's k-NN ball (precision = its mean; the reference
    radii are fixed, so precision is a mean of independent per-sample indicators)."""
    from offshelf.metrics import manifold_radii, squared_distances

    ref = torch.as_tensor(np.asarray(reference_features), dtype=torch.float32, device=device)
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32, device=device)
    radii = manifold_radii(ref, nhood_size, device=device)
    inside = torch.zeros(len(x), dtype=torch.bool, device=ref.device)
    for start in range(0, len(ref), 1000):
        inside |= (squared_distances(ref[start:start + 1000], x) <= radii[start:start + 1000, None]).any(dim=0)
    return inside.cpu().numpy()


def recall_replicates(features, reference_features, halves: np.ndarray, nhood_size: int = 3, device=None) -> np.ndarray:
    """Recall of each half-sample ``features[halves[b]]``: its k-NN radii recomputed within the half,
    then the fraction of reference points inside some ball (ADM's definition, closed balls)."""
    from offshelf.metrics import manifold_radii, squared_distances

    ref = torch.as_tensor(np.asarray(reference_features), dtype=torch.float32, device=device)
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32, device=device)
    out = np.empty(len(halves))
    n = len(x)
    if n ** 2 + len(ref) * n <= _PRECOMPUTE_ELEMENTS:
        # Sort once, index per half (exact, ~10x faster than a k-th value of each half's matrix):
        # * a sample's k-NN radius within a half is the distance to the (k+1)-th *member* of the half
        #   along its full-set neighbour list; with half the points members, that member sits within
        #   the first ~2(k+1) neighbours, so a list of `width` is searched (whole matrix if not);
        # * the reference points inside sample i's ball are a prefix of its reference list sorted by
        #   distance, of length searchsorted(radius): the union is a scatter of those prefixes.
        within = squared_distances(x, x)
        width = min(n, max(64, 16 * (nhood_size + 1)))
        near, order = within.sort(dim=1)
        near, order = near[:, :width].contiguous(), order[:, :width].contiguous()
        to_ref, ref_order = squared_distances(x, ref).sort(dim=1)                 # [N, M] each
        for b, idx in enumerate(torch.as_tensor(halves, device=ref.device)):
            member = torch.zeros(n, dtype=torch.bool, device=ref.device)
            member[idx] = True
            counts = member[order[idx]].cumsum(dim=1)                              # members seen so far
            radii = torch.full((n,), -1.0, device=ref.device)                      # non-members cover nothing
            if counts[:, -1].min() > nhood_size:
                radii[idx] = near[idx].gather(1, (counts <= nhood_size).sum(dim=1, keepdim=True))[:, 0]
            else:  # a sample whose (k+1)-th member lies beyond the list: the exact way, this half only
                radii[idx] = within[idx][:, idx].kthvalue(nhood_size + 1, dim=1).values
            covers = torch.searchsorted(to_ref, radii[:, None].contiguous(), right=True)[:, 0]  # #{d <= r}
            covered = torch.zeros(len(ref), dtype=torch.bool, device=ref.device)
            longest = int(covers.max())
            if longest:
                mask = torch.arange(longest, device=ref.device)[None, :] < covers[:, None]
                covered[ref_order[:, :longest][mask]] = True
            out[b] = covered.float().mean().item()
        return out
    for b, idx in enumerate(torch.as_tensor(halves, device=ref.device)):
        half = x[idx]
        radii = manifold_radii(half, nhood_size, device=device)
        covered = torch.cat([(squared_distances(ref[s:s + 1000], half) <= radii[None, :]).any(dim=1)
                             for s in range(0, len(ref), 1000)])
        out[b] = covered.float().mean().item()
    return out


# ----------------------------------------------------------------------------
# Intervals.

def interval(point: float, replicates: np.ndarray, method: str, level: float = LEVEL,
             bounds: tuple[float, float] = (-np.inf, np.inf)) -> tuple[float, float]:
    """``basic``: [2θ̂ − q_hi, 2θ̂ − q_lo] (bias-correcting); ``percentile``: [q_lo, q_hi];
    ``centred``: θ̂ + quantiles of (θ* − mean θ*) (half-samples, whose mean is another N's);
    clipped to ``bounds``. NaN without replicates."""
    replicates = np.asarray(replicates, np.float64)
    if not len(replicates) or not np.isfinite(point):
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    lo_q, hi_q = np.quantile(replicates, [alpha, 1 - alpha])
    if method == "basic":
        lo, hi = 2 * point - hi_q, 2 * point - lo_q
    elif method == "percentile":
        lo, hi = lo_q, hi_q
    elif method == "centred":
        centre = replicates.mean()
        lo, hi = point + lo_q - centre, point + hi_q - centre
    else:
        raise ValueError(f"unknown interval method {method!r}; expected basic, percentile or centred")
    return float(np.clip(lo, *bounds)), float(np.clip(hi, *bounds))


def interval_centre(point: float, replicates: np.ndarray, method: str,
                    bounds: tuple[float, float] = (-np.inf, np.inf)) -> float:
    """The point an :func:`interval` is built around: its replicates' median, mapped as the
    interval maps its quantiles (``basic``: 2θ̂ − median θ*, the median-bias-corrected estimate;
    ``percentile``: median θ*; ``centred``: θ̂ + median θ* − mean θ*), clipped to ``bounds``.

    It always lies in the interval of the same replicates (the median lies between the 2.5 % and
    97.5 % quantiles, and every map and the clipping are monotone), whereas θ̂ itself need not: a
    basic interval reflects FID's upward finite-N bias around θ̂, so with a large bias it lies below
    θ̂ (``0.315 [0, 0.31]``). A table prints this point where θ̂ falls outside (docs/statistics.md).
    NaN without replicates."""
    replicates = np.asarray(replicates, np.float64)
    if not len(replicates) or not np.isfinite(point):
        return float("nan")
    median = np.quantile(replicates, 0.5)
    if method == "basic":
        centre = 2 * point - median
    elif method == "percentile":
        centre = median
    elif method == "centred":
        centre = point + median - replicates.mean()
    else:
        raise ValueError(f"unknown interval method {method!r}; expected basic, percentile or centred")
    return float(np.clip(centre, *bounds))


# How each metric's replicates become an interval, and the range it lives in.
METHODS = {"fid": ("basic", (0.0, np.inf)), "precision": ("percentile", (0.0, 1.0)),
           "recall": ("centred", (0.0, 1.0)), "accuracy": ("percentile", (0.0, 1.0))}
# A difference of two rows: the same methods, unbounded (fid's basic interval, precision's
# percentile...) since a difference may have either sign.
DIFF_BOUNDS = {"fid": (-np.inf, np.inf), "precision": (-1.0, 1.0), "recall": (-1.0, 1.0), "accuracy": (-1.0, 1.0)}


def bootstrap(features: np.ndarray, *, reference_mu: np.ndarray, reference_sigma: np.ndarray,
              reference_features: np.ndarray | None = None, correct: np.ndarray | None = None,
              num_resamples: int, nhood_size: int = 3, device=None, seed: int = SEED) -> dict[str, np.ndarray]:
    """Replicates of every metric the inputs allow: ``fid`` (and, with reference features,
    ``precision`` and ``recall``; with per-sample correctness, ``accuracy``), plus the per-sample
    arrays they came from. Everything a report needs to pair two settings later."""
    check_num_resamples(num_resamples)
    n = len(features)
    boot, halves = resample_indices(n, num_resamples, seed), half_indices(n, num_resamples, seed)
    out: dict[str, np.ndarray] = {"fid": fid_replicates(features, reference_mu, reference_sigma, boot)}
    if reference_features is not None:
        inside = in_reference_manifold(features, reference_features, nhood_size, device)
        out["in_reference"] = inside
        out["precision"] = mean_replicates(inside, boot)
        if n // 2 > nhood_size:  # a half needs more than k points to have k-NN radii; else no recall interval
            out["recall"] = recall_replicates(features, reference_features, halves, nhood_size, device)
    if correct is not None:
        out["correct"] = np.asarray(correct, bool)
        out["accuracy"] = mean_replicates(out["correct"], boot)
    return out


def intervals(point: Mapping[str, Any], replicates: Mapping[str, np.ndarray], level: float = LEVEL) -> dict[str, float]:
    """``<metric>_lo`` / ``<metric>_hi`` for every metric with replicates and a finite point
    estimate, and ``fid_bias`` (the bootstrap's estimate of FID's finite-N bias)."""
    out: dict[str, float] = {}
    for metric in METRICS:
        if metric in replicates and metric in point:
            method, bounds = METHODS[metric]
            out[f"{metric}_lo"], out[f"{metric}_hi"] = interval(float(point[metric]), replicates[metric], method,
                                                                level, bounds)
    if len(replicates.get("fid", ())) and np.isfinite(point.get("fid", np.nan)):
        out["fid_bias"] = float(np.mean(replicates["fid"]) - point["fid"])
    return out


def paired_difference(metric: str, point_row: float, point_base: float, replicates_row: np.ndarray,
                      replicates_base: np.ndarray, level: float = LEVEL) -> tuple[float, float, float]:
    """(row − baseline, lo, hi) from replicates drawn with the same indices for both rows.

    Identical rows give exactly (0, 0, 0): the replicates cancel element by element."""
    diff = float(point_row) - float(point_base)
    replicates_row, replicates_base = np.asarray(replicates_row), np.asarray(replicates_base)
    if replicates_row.shape != replicates_base.shape:
        raise ValueError(f"{metric}: {replicates_row.shape} vs {replicates_base.shape} replicates; a paired "
                         f"difference needs both rows resampled with the same indices")
    lo, hi = interval(diff, replicates_row - replicates_base, METHODS[metric][0], level, DIFF_BOUNDS[metric])
    return diff, lo, hi
