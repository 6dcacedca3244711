"""Sample-quality metrics at publication fidelity: FID, precision/recall, IS, CLIP score, accuracy.

What the paper's numbers are measured with, and what this module reproduces:

* Samples are ADM-evaluator shards: ``.npz`` with ``arr_0`` uint8 NHWC images in [0, 255]
  and ``arr_1`` integer labels (guided-diffusion ``classifier_sample.py``).
* FID against ADM's ``VIRTUAL_imagenet128_labeled.npz`` (``mu``/``sigma`` from the TensorFlow
  Inception pool_3) or EDM's ``fid-refs/imagenet-64x64.npz`` (same keys). Feature extraction
  goes through clean-fid: mode ``"legacy_tensorflow"`` runs the TF Inception graph ported to
  TorchScript (``inception-2015-12-05.pt``) with TF's resize *inside* the network, which is
  what ADM's TF evaluator computes; mode ``"clean"`` resizes with PIL bicubic first and gives
  different (not paper-comparable) numbers.
  Note: the official EluCD code computed FID with pytorch-fid 0.3.0 (PyTorch-port weights,
  bilinear resize) against those TF reference statistics, a mix that can move FID by a few
  hundredths (docs/method.md §7). The ADM evaluator is the consistent protocol
  and the one behind the baselines the paper quotes.
* The Fréchet distance is computed here (not with clean-fid's ``frechet_distance``, which
  passes ``disp=False`` to ``scipy.linalg.sqrtm``, removed in SciPy 1.18).
* Precision/recall follow ADM's ``ManifoldEstimator`` (Kynkäänniemi et al. 2019, k = 3).
"""

from __future__ import annotations

import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from offshelf.extras import needs

needs(__name__, "scipy.linalg", "scipy.special")  # offshelf[workflow]
import scipy.linalg
import scipy.special
import torch

from offshelf.atomic import save_npz
from offshelf.shards import check_images, open_npz

INCEPTION_FILENAME = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
INCEPTION_MODES = ("legacy_tensorflow", "clean")

# A feature function maps a uint8 NHWC batch (numpy) to a [B, D] array or tensor.
FeatureFn = Callable[[np.ndarray], "np.ndarray | torch.Tensor"]


# ----------------------------------------------------------------------------
# Gaussian feature statistics and the Fréchet distance.

@dataclass
class FeatureStats:
    mu: np.ndarray      # [D] float64
    sigma: np.ndarray   # [D, D] float64
    n: int | None       # number of feature vectors (None when read from a file without it)


def _check_features(features, name: str = "features") -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"{name} has shape {features.shape}, expected [N, D] feature vectors")
    if not np.isfinite(features).all():
        raise ValueError(f"{name} contains non-finite values")
    return features


def feature_statistics(features) -> FeatureStats:
    """mu = mean, sigma = unbiased covariance (np.cov(rowvar=False)), both float64."""
    features = _check_features(features).astype(np.float64)
    if len(features) < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {len(features)}")
    return FeatureStats(mu=features.mean(axis=0), sigma=np.atleast_2d(np.cov(features, rowvar=False)), n=len(features))


def load_reference_stats(path, expected_dim: int | None = None) -> FeatureStats:
    """Read ``mu`` [D] and ``sigma`` [D, D] (ADM VIRTUAL_*.npz, EDM fid-refs, or save_feature_stats)."""
    path = Path(path)
    data = open_npz(path, "reference statistics")
    try:
        with data:
            keys = list(data.keys())
            missing = [key for key in ("mu", "sigma") if key not in keys]
            if missing:
                raise ValueError(f"{path}: missing key(s) {missing}; expected 'mu' [D] and 'sigma' [D, D], found {keys}")
            mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
            n = int(data["n"]) if "n" in keys else None
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ValueError(f"{path}: not a readable .npz file ({error})") from error
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"{path}: mu has shape {mu.shape} and sigma {sigma.shape}, expected [D] and [D, D]")
    if expected_dim is not None and len(mu) != expected_dim:
        raise ValueError(f"{path}: reference statistics have dimension {len(mu)}, expected {expected_dim} (the feature extractor's output size)")
    return FeatureStats(mu=mu, sigma=sigma, n=n)


def save_feature_stats(path, stats: FeatureStats) -> None:
    """Write ``mu``/``sigma`` (and ``n``) in the layout load_reference_stats reads, atomically."""
    extra = {} if stats.n is None else {"n": np.int64(stats.n)}
    save_npz(path, mu=stats.mu, sigma=stats.sigma, **extra)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """d² = ||mu1 - mu2||² + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2}), in float64.

    As in pytorch-fid and ADM's evaluator: when sqrtm of the product is not finite (a
    near-singular product, e.g. fewer samples than feature dimensions), eps·I is added to
    both covariances and the root recomputed (with a warning); a negligible imaginary part
    from round-off is dropped, a large one (|imag| on the diagonal > 1e-3) raises.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors differ in length: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"covariances must both be [{len(mu1)}, {len(mu1)}], got {sigma1.shape} and {sigma2.shape}")

    diff = mu1 - mu2
    with warnings.catch_warnings():
        # SciPy warns on singular input; the finiteness check below decides what to do.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            warnings.warn(f"Frechet distance: sqrtm(sigma1 @ sigma2) is not finite; adding {eps} to the covariance diagonals")
            offset = np.eye(len(mu1)) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Frechet distance: sqrtm has a large imaginary component {np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def frechet_distance_few_samples(features, mu2, sigma2) -> float:
    """:func:`frechet_distance` of ``features``' statistics against (mu2, sigma2), exact and fast
    when there are no more feature vectors than dimensions (N <= D: a rehearsal's handful).

    Then sigma1 = CᵀC with C = (features − mu1)/√(N−1) (N×D) has rank < D, and the non-zero
    eigenvalues of sigma1·sigma2 are those of the small symmetric PSD matrix C·sigma2·Cᵀ (N×N), so
    Tr (sigma1 sigma2)^{1/2} = Σ √λ(C sigma2 Cᵀ): one N×N eigendecomposition instead of a D×D
    sqrtm (about 20 s on one core for D = 2048) of a singular product, which also needs the
    eps·I retry. With N > D it is :func:`frechet_distance` itself (the real runs: 10k, 50k)."""
    x = _check_features(features).astype(np.float64)
    mu2, sigma2 = np.asarray(mu2, np.float64), np.asarray(sigma2, np.float64)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {n}")
    if mu2.shape != (d,) or sigma2.shape != (d, d):
        raise ValueError(f"reference statistics have shapes {mu2.shape} / {sigma2.shape}; features have dimension {d}")
    mu1 = x.mean(axis=0)
    if n > d:
        stats = feature_statistics(x)
        return frechet_distance(stats.mu, stats.sigma, mu2, sigma2)
    c = (x - mu1) / np.sqrt(n - 1)
    small = c @ sigma2 @ c.T
    eigenvalues = np.linalg.eigvalsh((small + small.T) / 2)  # symmetric PSD up to round-off
    tr_covmean = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + (c * c).sum() + np.trace(sigma2) - 2 * tr_covmean)


def fid_from_features(features_a, features_b) -> float:
    a, b = feature_statistics(features_a), feature_statistics(features_b)
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"feature dimensions differ: {a.mu.shape[0]} vs {b.mu.shape[0]}")
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


# ----------------------------------------------------------------------------
# Improved precision and recall (Kynkäänniemi et al. 2019), ADM evaluator semantics.

def squared_distances(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """||u_i - v_j||² via the norm expansion, clamped at 0 (as ADM's _batch_pairwise_distances)."""
    return ((u * u).sum(1)[:, None] - 2 * (u @ v.T) + (v * v).sum(1)[None, :]).clamp_min_(0)


def manifold_radii(features, nhood_size: int = 3, batch_size: int = 1000, device=None) -> torch.Tensor:
    """Squared distance from each point to its k-th nearest neighbour in the same set.

    The point itself (distance 0) is the 0-th neighbour, so this is the (k+1)-th smallest
    value of its distance row, exactly ADM's ``np.partition(...)[:, nhood_sizes]``.
    """
    features = torch.as_tensor(_check_features(features), dtype=torch.float32, device=device)
    if len(features) <= nhood_size:
        raise ValueError(f"need more than k={nhood_size} feature vectors for k-NN radii, got {len(features)}")
    radii = []
    for start in range(0, len(features), batch_size):
        distances = squared_distances(features[start:start + batch_size], features)
        radii.append(distances.kthvalue(nhood_size + 1, dim=1).values)
    return torch.cat(radii)


def precision_recall(reference_features, sample_features, nhood_size: int = 3, batch_size: int = 1000, device=None) -> tuple[float, float]:
    """precision = fraction of samples inside some reference k-NN ball,
    recall = fraction of reference points inside some sample k-NN ball (balls closed: d² <= r²).

    Exact pairwise distances in float32 torch, ``batch_size`` rows at a time, so 10k x 10k
    needs only batch_size x N floats at once. ADM computed them in fp16 (falling back to fp32
    on overflow); float32 is at least as accurate.
    """
    reference = torch.as_tensor(_check_features(reference_features, "reference features"), dtype=torch.float32, device=device)
    samples = torch.as_tensor(_check_features(sample_features, "sample features"), dtype=torch.float32, device=device)
    if reference.shape[1] != samples.shape[1]:
        raise ValueError(f"feature dimensions differ: reference {reference.shape[1]} vs samples {samples.shape[1]}")
    reference_radii = manifold_radii(reference, nhood_size, batch_size, device)
    sample_radii = manifold_radii(samples, nhood_size, batch_size, device)

    sample_in_reference = torch.zeros(len(samples), dtype=torch.bool, device=reference.device)
    reference_in_samples = torch.zeros(len(reference), dtype=torch.bool, device=reference.device)
    for start in range(0, len(reference), batch_size):
        stop = start + batch_size
        distances = squared_distances(reference[start:stop], samples)  # [batch, n_samples]
        sample_in_reference |= (distances <= reference_radii[start:stop, None]).any(dim=0)
        reference_in_samples[start:stop] = (distances <= sample_radii[None, :]).any(dim=1)
    return sample_in_reference.float().mean().item(), reference_in_samples.float().mean().item()


# ----------------------------------------------------------------------------
# Inception score and CLIP score.

def _as_probabilities(probs_or_logits) -> np.ndarray:
    values = _check_features(probs_or_logits, "class predictions").astype(np.float64)
    if values.min() >= 0 and np.allclose(values.sum(axis=1), 1, atol=1e-4):
        return values
    return scipy.special.softmax(values, axis=1)


def inception_score(probs_or_logits, splits: int = 10) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) on each of ``splits`` contiguous parts; (mean, std).

    As in the original improved-GAN code (Salimans et al. 2016). Rows that are non-negative
    and sum to 1 are taken as probabilities, anything else as logits (softmax applied).
    0·log 0 is taken as 0, so one-hot predictions are allowed.
    """
    probs = _as_probabilities(probs_or_logits)
    if not 1 <= splits <= len(probs):
        raise ValueError(f"splits must be between 1 and the number of samples ({len(probs)}), got {splits}")
    scores = []
    for i in range(splits):
        part = probs[i * len(probs) // splits:(i + 1) * len(probs) // splits]
        marginal = part.mean(axis=0, keepdims=True)
        kl = scipy.special.xlogy(part, part) - scipy.special.xlogy(part, marginal)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def clip_score(image_embeds, text_embeds) -> float:
    """mean over pairs of 100 · max(cos(image_i, text_i), 0).

    The torchmetrics / common text-to-image convention; Hessel et al.'s CLIPScore uses
    2.5 · max(cos, 0) instead, i.e. this value times 0.025.
    """
    image = _check_features(image_embeds, "image embeddings").astype(np.float64)
    text = _check_features(text_embeds, "text embeddings").astype(np.float64)
    if image.shape != text.shape:
        raise ValueError(f"image and text embeddings must pair up, got {image.shape} and {text.shape}")
    cos = (image * text).sum(1) / (np.linalg.norm(image, axis=1) * np.linalg.norm(text, axis=1))
    return float(np.mean(100 * np.maximum(cos, 0)))


# ----------------------------------------------------------------------------
# Feature extraction.

def extract_features(images: np.ndarray, feature_fn: FeatureFn, batch_size: int = 50) -> np.ndarray:
    """Apply ``feature_fn`` to uint8 NHWC ``images`` in batches; returns [N, D] float32."""
    check_images(images, "images", key="array")
    features = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        out = feature_fn(batch)
        out = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
        out = out.reshape(len(batch), -1) if out.ndim > 2 and out.shape[0] == len(batch) else out
        if out.ndim != 2 or out.shape[0] != len(batch):
            raise ValueError(f"feature_fn returned shape {out.shape} for a batch of {len(batch)} images, expected [{len(batch)}, D]")
        features.append(out.astype(np.float32))
    return np.concatenate(features)


def cleanfid_feature_fn(model, mode: str, device="cpu", custom_fn_resize=None) -> FeatureFn:
    """Wrap a clean-fid feature model (NCHW float in [0, 255] -> [B, D]) as a FeatureFn.

    Per image, as clean-fid's ResizeDataset does for a folder: grey -> RGB, then
    ``cleanfid.resize.build_resizer(mode)`` (identity for legacy_tensorflow, PIL bicubic to
    299 in float for clean) or ``custom_fn_resize``, then CHW float in [0, 255]. uint8 pixels
    are converted exactly (x -> float(x)), as ADM's TF evaluator feeds them. ``model`` can be
    clean-fid's InceptionV3W or anything accepted as its ``custom_feat_extractor``.
    """
    from cleanfid.fid import get_batch_features
    from cleanfid.resize import build_resizer

    fn_resize = custom_fn_resize if custom_fn_resize is not None else build_resizer(mode)
    device = torch.device(device)

    def feature_fn(images: np.ndarray) -> np.ndarray:
        check_images(images, "images", key="array")
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        resized = [np.asarray(fn_resize(image)) for image in images]
        batch = torch.from_numpy(np.stack(resized).astype(np.float32)).permute(0, 3, 1, 2).contiguous()
        return get_batch_features(batch, model, device)

    return feature_fn


def load_inception(weights_path, mode: str = "legacy_tensorflow", device="cpu"):
    """clean-fid's InceptionV3W from a local ``inception-2015-12-05.pt`` (never downloads).

    ``legacy_tensorflow`` resizes inside the TorchScript graph (TF bilinear), ``clean`` expects
    299x299 input already resized by PIL bicubic.
    """
    from cleanfid.inception_torchscript import InceptionV3W

    if mode not in INCEPTION_MODES:
        raise ValueError(f"unknown Inception mode {mode!r}; expected one of {INCEPTION_MODES}")
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Inception weights not found (clean-fid's {INCEPTION_FILENAME}, from {INCEPTION_URL})")
    if path.name != INCEPTION_FILENAME:
        raise ValueError(f"{path}: clean-fid loads the Inception file by its fixed name; expected a file named {INCEPTION_FILENAME}")
    try:
        model = InceptionV3W(str(path.parent), download=False, resize_inside=(mode == "legacy_tensorflow"))
    except RuntimeError as error:
        raise ValueError(f"{path}: not a loadable TorchScript Inception ({error})") from error
    return model.to(device).eval()


def inception_feature_fn(mode: str, weights_path, device="cpu") -> FeatureFn:
    """2048-d Inception pool_3 features of uint8 NHWC images via clean-fid.

    ``"legacy_tensorflow"``: matches ADM's TF evaluator (and so the mu/sigma in
    VIRTUAL_imagenet128_labeled.npz): paper-comparable. ``"clean"``: clean-fid's PIL bicubic
    resize to 299 before the network; the resize differs from TF's, so FIDs shift and are NOT
    comparable with the paper or with ADM's reference statistics.
    """
    return cleanfid_feature_fn(load_inception(weights_path, mode, device), mode, device)


# ----------------------------------------------------------------------------
# One call per setting.

def evaluate(samples: np.ndarray, labels, feature_fn: FeatureFn, *, reference_stats: FeatureStats | None = None,
             reference_features=None, classifier_fn: FeatureFn | None = None, batch_size: int = 50,
             nhood_size: int = 3, splits: int = 10, device=None, arrays: dict | None = None) -> dict:
    """FID, precision, recall and (with ``classifier_fn``) inception_score and accuracy.

    FID uses ``reference_stats`` when given (ADM: mu/sigma of the full reference set), else the
    statistics of ``reference_features``; precision/recall need ``reference_features`` (ADM:
    the 10k reference images' features) and are NaN without them. ``classifier_fn`` maps a
    uint8 NHWC batch to logits or probabilities: accuracy = mean(argmax == label) and the
    inception score is computed under that classifier (the Inception softmax gives the usual IS).

    ``arrays``, when given, receives the per-sample ``features`` and (with ``classifier_fn`` and
    labels) ``correct``: what offshelf.statistics resamples, without a second feature pass.
    """
    if reference_stats is None and reference_features is None:
        raise ValueError("evaluate needs reference_stats (mu/sigma) or reference_features")
    check_images(samples, "samples", key="array")
    if labels is not None and len(labels) != len(samples):
        raise ValueError(f"{len(labels)} labels for {len(samples)} samples; expected equal lengths")

    features = extract_features(samples, feature_fn, batch_size)
    stats = feature_statistics(features)
    reference = reference_stats if reference_stats is not None else feature_statistics(reference_features)
    if reference.mu.shape != stats.mu.shape:
        raise ValueError(f"reference statistics have dimension {reference.mu.shape[0]}, sample features {stats.mu.shape[0]}")
    # N <= D (a rehearsal's few samples): the exact low-rank form, not a D×D sqrtm per evaluation
    fid = (frechet_distance_few_samples(features, reference.mu, reference.sigma) if len(features) <= features.shape[1]
           else frechet_distance(stats.mu, stats.sigma, reference.mu, reference.sigma))
    result = {"n": len(samples), "fid": fid}
    if reference_features is not None:
        result["precision"], result["recall"] = precision_recall(reference_features, features, nhood_size, device=device)
    else:
        result["precision"] = result["recall"] = float("nan")

    if classifier_fn is not None:
        logits = extract_features(samples, classifier_fn, batch_size)
        result["inception_score"], result["inception_score_std"] = inception_score(logits, min(splits, len(samples)))
        if labels is not None:
            correct = logits.argmax(axis=1) == np.asarray(labels)
            result["accuracy"] = float(np.mean(correct))
            if arrays is not None:
                arrays["correct"] = correct
    if arrays is not None:
        arrays["features"] = features
    return result
