"""The workflow's stages as plain functions of a backend: one shard of samples, a calibration
profile, reference features, an evaluation. The Snakemake scripts and the ``offshelf`` command
call these, so a shard written by either is the same file."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from offshelf.atomic import save_npz
from offshelf.backends.base import Backend, FeatureExtractor, Pretrained, Reference
from offshelf.backends.capabilities import Capability, UnsupportedError, require, unavailable
from offshelf.guidance import NonFiniteError, check_finite
from offshelf.settings import Setting
from offshelf.shards import load_shards, seed_list


def verified_files(files: Mapping[str, str], sources: Mapping[str, Any],
                   checkpoints: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Check every pretrained file against its registry pins and the lock file before it is loaded
    (``checkpoints``: the config's section: ``lock``, ``cache``, ``registry`` overrides)."""
    from offshelf.checkpoints import fetch

    cfg = checkpoints or {}
    return {role: str(fetch(sources[role].name, cache_dir=cfg.get("cache"), lock_file=cfg.get("lock"),
                            local_path=path, registry_file=cfg.get("registry")))
            if isinstance(sources.get(role), Pretrained) else str(path) for role, path in files.items()}


def load_models(backend: Backend, files: Mapping[str, str], sampling: Mapping[str, Any],
                setting: Setting | None = None, checkpoints: Mapping[str, Any] | None = None):
    """Verify the files of ``setting`` (see :meth:`Backend.files`) and load them."""
    sources = backend.files(setting or Setting(method="unguided"))
    return backend.load(verified_files(files, sources, checkpoints), sampling, setting)


def resolve_batch_size(backend: Backend, models, setting: Setting, batch_size: int | str, count: int,
                       probed: dict | None = None) -> int:
    """``sampling.batch_size`` for a job of ``count`` samples: an int as it is; ``auto`` the largest
    batch that fits in free device memory (a short probe of this setting's sampling,
    :func:`offshelf.levers.auto_batch_size`; on a CPU :data:`offshelf.levers.CPU_AUTO_BATCH`).

    ``probed``: the sizes one job has found so far, for a job that samples one setting at several
    scales on the same ``models`` (a search round): the probe's memory depends on the models, the
    setting's sampler and ``count``, never on the guidance scale, so it runs once per job."""
    if batch_size != "auto":
        return int(batch_size)
    key = (replace(setting, scale=Setting.scale), count)
    if probed is not None and key in probed:
        return probed[key]
    from offshelf.levers import auto_batch_size, probe_sampler

    probe = probe_sampler(lambda stopped, seeds: backend.sample(stopped, setting, seeds), models)
    size = auto_batch_size(getattr(models, "device", "cpu"), probe, count)
    if probed is not None:
        probed[key] = size
    return size


def sample_shard(backend: Backend, models, setting: Setting, seeds: Sequence[int], batch_size: int | str,
                 progress: bool = False, labels: Sequence[int] | None = None,
                 facts: dict[str, Any] | None = None,
                 probed: dict | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """uint8 NHWC images, labels and the wall seconds of one shard (``seeds``, in batches of
    ``batch_size``: an int or ``auto``, :func:`resolve_batch_size`, which reuses ``probed``).
    ``labels``: the class of each seed's sample (``offshelf sample --classes``); default, and
    always in the workflow: the class each seed draws itself (the backend's ``sample``).
    ``facts``, when given, receives the batch size used and the networks' compile seconds (the shard records both).

    A NaN or inf anywhere stops the shard with the setting's name: nothing is returned to write."""
    from offshelf.levers import job_compile_seconds

    reason = unavailable(backend, setting, chosen_classes=labels is not None)
    if reason:
        raise UnsupportedError(f"backend {backend.name!r} cannot run setting {setting.name}: {reason}")
    seeds = [int(s) for s in seeds]
    batch_size = resolve_batch_size(backend, models, setting, batch_size, len(seeds), probed)
    chosen = None if labels is None else torch.as_tensor([int(c) for c in labels])
    start = time.perf_counter()
    images, labels = [], []
    for i in range(0, len(seeds), batch_size):
        batch = seeds[i:i + batch_size]
        try:
            given = {} if chosen is None else {"labels": chosen[i:i + batch_size]}  # only where declared: plug-ins
            x, y = backend.sample(models, setting, batch, progress=progress, **given)
            check_finite("sampled images", x, step=-1)
        except NonFiniteError as err:
            raise NonFiniteError(f"setting {setting.name}, seeds {batch[0]}..{batch[-1]}: {err}") from None
        images.append(backend.to_uint8(x))
        labels.append(y.cpu().numpy())
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if facts is not None:
        facts.update(batch_size=batch_size, compile_seconds=job_compile_seconds(models))
    return np.concatenate(images), np.concatenate(labels).astype(np.int64), seconds


def reference_features(backend: Backend, files: Mapping[str, str], evaluation: Mapping[str, Any]) -> dict:
    require(backend, Capability.REFERENCE_FEATURES, "real-image features for precision/recall")
    return backend.reference_features(files, backend.feature_extractor(files), evaluation)


@dataclass(frozen=True)
class Judge:
    """The evaluation network, loaded once, what it compares samples against, and the facts each
    metrics file records about it: a search round judges every scale it screens with one."""

    extractor: FeatureExtractor
    reference: Reference
    provenance: dict[str, Any]


def judge_files(backend: Backend, inputs: Mapping[str, str], checkpoints: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The evaluation network's files among a job's ``inputs``, verified (:func:`verified_files`)."""
    sources = backend.evaluation_files()
    return verified_files({role: inputs[role] for role in sources}, sources, checkpoints)


def load_judge(backend: Backend, files: Mapping[str, str], reference_features_path=None) -> Judge:
    """The judge of ``backend`` from its (verified) evaluation files and, where the backend keeps
    them, the real images' features (:func:`reference_features`)."""
    reference = None
    if reference_features_path:
        with np.load(reference_features_path) as stored:
            reference = {k: stored[k] for k in stored.files}
    provenance = backend.provenance(files) if Capability.PROVENANCE in backend.capabilities else {}
    return Judge(backend.feature_extractor(files), backend.reference(files, reference), provenance)


def evaluate(backend: Backend, judge: Judge, shard_paths: Sequence[str],
             evaluation: Mapping[str, Any] | None = None, num_samples: int | None = None,
             expected_seeds: Sequence[Sequence[int]] | None = None, features_path=None,
             chosen_classes: bool = False) -> dict[str, Any]:
    """:func:`evaluate_samples` of the shards' first ``num_samples`` samples (checked to hold
    ``expected_seeds``), with their summed sampling time. ``chosen_classes``: shards of
    ``offshelf sample --classes`` are read too (``offshelf evaluate``; never the workflow's)."""
    images, labels, seconds = load_shards(backend, shard_paths, expected_seeds, num_samples, chosen_classes)
    seeds = None if expected_seeds is None else np.concatenate([seed_list(s) for s in expected_seeds])[:len(images)]
    return evaluate_samples(judge, images, labels, seconds, evaluation, seeds, features_path,
                            where=f"shards {shard_paths[0]} ..")


def evaluate_samples(judge: Judge, images: np.ndarray, labels: np.ndarray, seconds: float,
                     evaluation: Mapping[str, Any] | None = None, seeds: Sequence[int] | None = None,
                     features_path=None, where: str = "samples") -> dict[str, Any]:
    """FID / precision / recall (and accuracy where the extractor has logits) of uint8 NHWC
    ``images``, the ``seconds`` it took to sample them, and which network judged them.

    With ``evaluation.bootstrap`` = B > 0, each metric also gets its 95 % interval
    (``<metric>_lo``/``_hi``, offshelf.statistics), and ``features_path`` (when given) receives
    the per-sample features, ``seeds``, correctness and the B replicates of every metric, so a
    report can pair this setting with another resampled by the same indices."""
    from offshelf import statistics
    from offshelf.metrics import evaluate as evaluate_features, feature_statistics

    evaluation = evaluation or {}
    extractor, reference = judge.extractor, judge.reference
    arrays: dict[str, np.ndarray] = {}
    nhood_size = evaluation.get("nhood_size", 3)
    result = evaluate_features(images, labels, extractor.features, reference_stats=reference.stats,
                               reference_features=reference.features, classifier_fn=extractor.logits,
                               batch_size=extractor.batch_size, nhood_size=nhood_size,
                               device=extractor.device, arrays=arrays)
    if not np.isfinite(result["fid"]):
        raise NonFiniteError(f"{where}: FID is {result['fid']} (non-finite features from "
                             f"{extractor.name or 'the feature extractor'}); no metrics file is written")
    num_resamples = int(evaluation.get("bootstrap", 0))
    replicates: dict[str, np.ndarray] = {}
    if num_resamples > 0:
        ref_stats = reference.stats if reference.stats is not None else feature_statistics(reference.features)
        replicates = statistics.bootstrap(arrays["features"], reference_mu=ref_stats.mu, reference_sigma=ref_stats.sigma,
                                          reference_features=reference.features, correct=arrays.get("correct"),
                                          num_resamples=num_resamples, nhood_size=nhood_size, device=extractor.device)
        result.update(statistics.intervals(result, replicates))
    result["bootstrap"] = num_resamples
    result["bootstrap_digest"] = statistics.indices_digest(len(images), num_resamples)
    if features_path is not None:
        # Metric replicates go in as "replicate_<metric>"; per-sample arrays under their own names.
        per_sample = {"features": arrays["features"], "labels": np.asarray(labels, np.int64),
                      "digest": np.array(result["bootstrap_digest"])}
        if seeds is not None:  # what the report checks before pairing sample i with sample i
            per_sample["seeds"] = np.asarray(seeds, np.int64)
        per_sample.update({k: v for k, v in replicates.items() if k not in statistics.METRICS})
        if "correct" in arrays:
            per_sample["correct"] = arrays["correct"]
        per_sample.update({f"replicate_{k}": replicates[k] for k in statistics.METRICS if k in replicates})
        save_npz(features_path, **per_sample)
    result["seconds"] = seconds
    result["judge"] = extractor.name
    result.update(judge.provenance)
    return result


def evaluate_round(backend: Backend, models, judge: Judge, evaluations: Mapping[str, Mapping[str, Any]],
                   batch_size: int | str, evaluation: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A search round's job: each evaluation (name -> its setting's dict and its seeds) sampled and
    judged; the metrics per name. Its settings are one setting at several scales, so ``auto``
    probes the batch size once for the round (:func:`resolve_batch_size`)."""
    probed: dict = {}
    metrics = {}
    for name, e in evaluations.items():
        seeds = seed_list(e["seeds"])
        images, labels, seconds = sample_shard(backend, models, Setting.from_dict(e["setting"]), seeds, batch_size,
                                               probed=probed)
        metrics[name] = evaluate_samples(judge, images, labels, seconds, evaluation, seeds, where=name)
        print(f"{name}: FID {metrics[name]['fid']:.4g} on {metrics[name]['n']} samples (drawn in {seconds:.1f} s)")
    return metrics


def calibration_profile(backend: Backend, models, probe: Setting, calibration: Mapping[str, Any], batch_size: int | str,
                        guided: bool = False):
    """Per-step ECE of ``probe``'s classifier; its seeds sit far from the sampling seeds
    (independent trajectories). ``guided``: along the trajectories ``probe`` (a guided setting)
    samples itself, from the same seeds, so guided and unguided profiles start from the same
    noise and labels (docs/method.md §6)."""
    require(backend, Capability.CALIBRATION, "a calibration profile")
    seeds = list(range(10_000_000, 10_000_000 + calibration["num_samples"]))
    # `guided` goes only where asked: a backend written before guided profiles still runs unguided ones
    extra = {"guided": True} if guided else {}
    batch_size = resolve_batch_size(backend, models, probe, batch_size, len(seeds))
    return backend.calibration_profile(models, probe, seeds, batch_size, calibration.get("num_bins", 15), **extra)
