"""Job params that are pure functions of the config: the seeds a shard holds, the sampling and
calibration keys a job depends on (canonical: key order never reruns a job), and where the
workflow finds a registry file."""

from __future__ import annotations

import math
import os
from pathlib import Path


def shard_seeds(config: dict, shard: int) -> list[int]:
    """Seeds of shard ``shard``: a fixed, contiguous range, independent of every other shard."""
    sampling = config["sampling"]
    start = sampling.get("seed_offset", 0) + shard * sampling["shard_size"]
    stop = min(start + sampling["shard_size"], sampling.get("seed_offset", 0) + sampling["num_samples"])
    return list(range(start, stop))


def first_seeds(config: dict, num_samples: int) -> list[int]:
    """[first seed, count] of a setting's first ``num_samples`` samples: the seeds its leading
    shards hold (a search round draws exactly these in its own process)."""
    if num_samples > config["sampling"]["num_samples"]:
        raise ValueError(f"{num_samples} samples asked of a setting that samples "
                         f"'sampling.num_samples' = {config['sampling']['num_samples']}")
    return [config["sampling"].get("seed_offset", 0), int(num_samples)]


def pareto_in_all(config: dict) -> bool:
    """Whether ``all`` runs the pareto target too (config key ``pareto_in_all``, false when left
    out): a config whose run stays short enough says so (config.yaml); the tiny test config and the
    ImageNet ones keep it a named target (``snakemake pareto``)."""
    return "pareto" in config and bool(config.get("pareto_in_all", False))


def num_shards(config: dict, num_samples: int | None = None) -> int:
    """Shards holding the first ``num_samples`` samples (default: all of them)."""
    sampling = config["sampling"]
    return math.ceil((num_samples or sampling["num_samples"]) / sampling["shard_size"])


def sampling_params(config: dict) -> dict:
    """The sampling keys a shard's images depend on. ``num_samples``, ``shard_size`` and
    ``seed_offset`` only decide *which* seeds a shard holds (its ``seeds`` param), so growing a
    run from 1,000 to 2,000 samples adds shards without rerunning the finished ones."""
    return canonical({k: v for k, v in config["sampling"].items() if k not in ("num_samples", "shard_size", "seed_offset")})


def calibration_params(config: dict) -> dict:
    """The calibration keys a profile's numbers depend on (a calibrate job's param).
    ``trajectories`` and ``guided_scale`` decide which jobs exist (a guided job's scale travels in
    its setting), so turning guided calibration on never reruns an unguided job."""
    return canonical({k: v for k, v in config.get("calibration", {}).items() if k in ("num_samples", "num_bins")})


def canonical(value):
    """A job param with its mappings' keys sorted: Snakemake compares params as text, so the same
    values written in another key order would otherwise rerun every job."""
    if isinstance(value, dict):
        return {k: canonical(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


def cache_dir(config: dict) -> Path:
    """Where ``fetch_checkpoint`` downloads: ``checkpoints.cache``, else the registry's default."""
    from offshelf.checkpoints import default_cache_dir

    cache = config.get("checkpoints", {}).get("cache")
    return Path(os.path.expandvars(cache)).expanduser() if cache else default_cache_dir()


def pretrained_path(config: dict, name: str) -> str:
    """Where the workflow finds registry file ``name``: its ``checkpoints.local`` path, else
    ``<cache>/<registry filename>`` (made by the ``fetch_checkpoint`` rule)."""
    from offshelf.checkpoints import get

    checkpoints = config.get("checkpoints", {})
    local = checkpoints.get("local", {})
    if name in local:
        return str(Path(os.path.expandvars(local[name])).expanduser())
    return str(cache_dir(config) / get(name, checkpoints.get("registry")).filename)


def config_backend(config: dict):
    """The config's backend (offshelf.backends): the one place planning creates it, so what the
    plan asks of a backend (``capabilities.unavailable``, ``work_per_sample``) is easy to find and adapt."""
    from offshelf.backends import create, spec_from_config

    return create(spec_from_config(config))
