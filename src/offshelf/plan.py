"""Expand a workflow config into the jobs it implies: table rows → settings (× regime × swept
scale), calibration probes and figures. Pure functions of the config, so the Snakefile stays
thin and the expansion is unit-tested without Snakemake."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from offshelf.settings import Setting, probe_setting

SETTING_KEYS = {f for f in Setting.__dataclass_fields__}


@dataclass
class Row:
    """One table row: a label, its setting per regime, the settings swept over (the row reports
    the one with the best FID), the probe whose calibration it shows, and the paper's numbers."""

    table: str
    label: str
    regime: str
    candidates: list[Setting]
    probe: str | None
    paper: dict[str, Any] = field(default_factory=dict)
    sweep_key: str | None = None
    num_samples: int | None = None  # samples its metrics use (a table may evaluate fewer than it samples)
    unavailable: str | None = None  # why this backbone cannot run the row (it is reported, not sampled)
    baseline: bool = False  # the row its table's paired differences are taken against
    guided_probe: str | None = None  # its guided calibration (calibration.trajectories: guided), by setting name


def baseline_index(table: str, spec: dict) -> int:
    """The row a table compares every other row to: the one flagged ``baseline: true``, else the
    first (each table of the paper opens with its reference design)."""
    flagged = [i for i, row in enumerate(spec["rows"]) if row.get("baseline")]
    if len(flagged) > 1:
        raise ValueError(f"tables.{table}.rows[{flagged[1]}].baseline: rows {flagged} of {table} are all flagged "
                         f"baseline: true; a table has one baseline row")
    return flagged[0] if flagged else 0


def unavailable_reason(config: dict, setting: Setting) -> str | None:
    """Why the config's backend cannot run a row's setting (reported, not sampled), or None."""
    from offshelf.backends import create, spec_from_config

    return create(spec_from_config(config)).unsupported(setting)


def row_setting(config: dict, row: dict, regime: str) -> Setting:
    base_name = row.get("base")
    values: dict[str, Any] = {}
    if base_name is not None:
        bases = config.get("bases", {})
        if base_name not in bases:
            raise ValueError(f"table row {row.get('label')!r}: base {base_name!r} is not defined under 'bases' "
                             f"(defined: {', '.join(bases) or 'none'})")
        values.update(bases[base_name])
    values.update({k: v for k, v in row.items() if k in SETTING_KEYS})
    values["regime"] = regime
    if values.get("network") == config.get("imagenet", {}).get("classifier"):
        values["network"] = ""  # the default architecture: one name for one experiment
    if "softplus_beta" in values and values["softplus_beta"] in ("inf", "relu", None):
        values["softplus_beta"] = math.inf
    return Setting.from_dict(values)


def sweep(config: dict, setting: Setting) -> tuple[list[Setting], str | None]:
    """The scale grid of a guided setting (per regime), the CFG grid of a CFG setting."""
    if setting.method == "guided":
        grid = config["scales"][setting.regime]
        return [replace(setting, scale=float(s)) for s in grid], "scale"
    if setting.method == "cfg":
        return [replace(setting, cfg_scale=float(w)) for w in config["cfg_scales"]], "cfg_scale"
    return [setting], None


def table_rows(config: dict) -> list[Row]:
    rows = []
    for table, spec in config["tables"].items():
        base_row = baseline_index(table, spec)
        for position, row in enumerate(spec["rows"]):
            for regime in config["regimes"]:
                setting = row_setting(config, row, regime)
                candidates, key = sweep(config, setting)
                if "scale" in row and setting.method == "guided":  # a row may pin its scale
                    candidates, key = [setting], None
                probe = setting.probe if (spec.get("calibration") and setting.method == "guided") else None
                total = config.get("sampling", {}).get("num_samples")
                num_samples = spec.get("num_samples", total)
                if total is not None and num_samples > total:
                    raise ValueError(f"{table}.num_samples = {num_samples} exceeds sampling.num_samples = "
                                     f"{config['sampling']['num_samples']} (the samples a setting gets)")
                guided = guided_probe(config, setting).name if probe and guided_calibration(config) else None
                rows.append(Row(table, row["label"], regime, candidates, probe, dict(row.get("paper", {})), key,
                                num_samples, unavailable_reason(config, setting), position == base_row, guided))
    return rows


def all_settings(config: dict) -> dict[str, Setting]:
    """Every distinct setting the tables need, by name (shared rows are sampled once)."""
    out: dict[str, Setting] = {}
    for row in table_rows(config):
        if row.unavailable:
            continue
        for s in row.candidates:
            out.setdefault(s.name, s.canonical())
    return out


def evaluation_name(config: dict, setting_name: str, num_samples: int) -> str:
    """Metrics file stem: the setting's name, plus ``+n<N>`` when it is evaluated on fewer than
    all of its samples (the paper's ablations use 10,000 of the 50,000 a setting gets)."""
    return setting_name if num_samples == config["sampling"]["num_samples"] else f"{setting_name}+n{num_samples}"


def parse_evaluation_name(name: str) -> tuple[str, int | None]:
    """Inverse of :func:`evaluation_name`: (setting name, number of samples or None for all)."""
    setting, sep, n = name.rpartition("+n")
    return (setting, int(n)) if sep and n.isdigit() else (name, None)


def all_evaluations(config: dict) -> dict[str, tuple[str, int]]:
    """Every metrics file the tables need: name -> (setting name, number of samples)."""
    out: dict[str, tuple[str, int]] = {}
    for row in table_rows(config):
        if row.unavailable:
            continue
        for s in row.candidates:
            out.setdefault(evaluation_name(config, s.name, row.num_samples), (s.name, row.num_samples))
    return out


def all_probes(config: dict) -> list[str]:
    probes = {row.probe for row in table_rows(config) if row.probe}
    for figure in ("figure1", "figure2"):
        probes.update(config.get("figures", {}).get(figure, {}).get("probes", []))
    return sorted(probes)


def calibration_params(config: dict) -> dict:
    """The calibration keys a profile's numbers depend on (a calibrate job's param).
    ``trajectories`` and ``guided_scale`` decide which jobs exist (a guided job's scale travels in
    its setting), so turning guided calibration on never reruns an unguided job."""
    return canonical({k: v for k, v in config.get("calibration", {}).items() if k in ("num_samples", "num_bins")})


def guided_calibration(config: dict) -> bool:
    """Whether probes are also measured along guided trajectories (``calibration.trajectories``;
    default: unguided only)."""
    return "guided" in config.get("calibration", {}).get("trajectories", ["unguided"])


def guided_probe(config: dict, setting: Setting) -> Setting:
    """The trajectories of ``setting``'s guided calibration: its own design (classifier, input, β,
    τ1, τ2, γ, recurrent steps, regime) at its regime's ``calibration.guided_scale``, one fixed scale
    for every row, never the row's best-of-grid scale (docs/method.md §6)."""
    scales = config.get("calibration", {}).get("guided_scale", {})
    if setting.regime not in scales:
        raise ValueError(f"config key 'calibration.guided_scale.{setting.regime}' is missing: guided calibration "
                         f"of regime {setting.regime!r} needs its scale")
    return replace(setting, scale=float(scales[setting.regime])).canonical()


def figure_guided_probes(config: dict, figure: str) -> dict[str, list[Setting]]:
    """Regime -> the guided calibrations of a calibration figure's probes, in the figure's order: each
    probe's classifier with the other knobs at their defaults (τ1 = τ2 = 1, γ = 0, one step), the
    design of Tables 2-4's rows, so a figure's curve is the same file as the table's ``ice_guided``."""
    probes = config["figures"][figure]["probes"]
    return {regime: [guided_probe(config, replace(probe_setting(p), regime=regime)) for p in probes]
            for regime in config["regimes"]}


def all_guided_probes(config: dict) -> dict[str, Setting]:
    """Every guided calibration the tables and figures need, by setting name (empty unless
    ``calibration.trajectories`` has ``guided``)."""
    if not guided_calibration(config):
        return {}
    out: dict[str, Setting] = {}
    for row in table_rows(config):
        if row.guided_probe and not row.unavailable:
            out.setdefault(row.guided_probe, guided_probe(config, row.candidates[0]))
    for figure in ("figure1", "figure2"):
        if figure in config.get("figures", {}):
            for settings in figure_guided_probes(config, figure).values():
                for s in settings:
                    out.setdefault(s.name, s)
    return out


def shard_seeds(config: dict, shard: int) -> list[int]:
    """Seeds of shard ``shard``: a fixed, contiguous range, independent of every other shard."""
    sampling = config["sampling"]
    start = sampling.get("seed_offset", 0) + shard * sampling["shard_size"]
    stop = min(start + sampling["shard_size"], sampling.get("seed_offset", 0) + sampling["num_samples"])
    return list(range(start, stop))


def num_shards(config: dict, num_samples: int | None = None) -> int:
    """Shards holding the first ``num_samples`` samples (default: all of them)."""
    sampling = config["sampling"]
    return math.ceil((num_samples or sampling["num_samples"]) / sampling["shard_size"])


def sampling_params(config: dict) -> dict:
    """The sampling keys a shard's images depend on. ``num_samples``, ``shard_size`` and
    ``seed_offset`` only decide *which* seeds a shard holds (its ``seeds`` param), so growing a
    run from 1,000 to 2,000 samples adds shards without rerunning the finished ones."""
    return canonical({k: v for k, v in config["sampling"].items() if k not in ("num_samples", "shard_size", "seed_offset")})


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


# A workflow whose DAG holds tens of thousands of jobs takes minutes and gigabytes before the
# first job starts (a dry run of 80,000 sample jobs: 70 s, 1 GB), and almost always comes from a
# typo in `sampling.shard_size`. Above this many jobs a config must say so (`max_jobs`).
DEFAULT_MAX_JOBS = 20_000


class TooManyJobsError(ValueError):
    """The config plans more jobs than ``max_jobs`` allows; the message says which keys to change."""


def _too_many(config: dict, counts: dict[str, int], limit: int) -> TooManyJobsError:
    sampling = config["sampling"]
    parts = [f"{counts['sample']} sample"] + [f"{counts[k]} {k}" for k in ("evaluate", "calibrate") if k in counts]
    return TooManyJobsError(
        f"config keys 'sampling.num_samples' = {sampling['num_samples']} / 'sampling.shard_size' = "
        f"{sampling['shard_size']} plan {counts['total']} jobs ({', '.join(parts)}), above max_jobs = {limit}: "
        f"raise sampling.shard_size (fewer, larger shards) or set the config key 'max_jobs' to at least "
        f"{counts['total']}")


def job_counts(config: dict) -> dict[str, int]:
    """The per-setting jobs a config plans, counted without building a single job: ``sample``
    (each setting's shards, up to the most samples any table evaluates of it), ``evaluate``
    (metrics files), ``calibrate`` (probes), their ``total``, and ``settings`` / ``shards``
    (shards of a setting sampled in full). Jobs that do not scale with the config (training,
    downloads, reference features, the report, figures) are not counted: a handful per experiment.

    Refuses cheaply first: shards are ``ceil(num_samples / shard_size)``, pure arithmetic, so a
    runaway ``shard_size`` is refused before any setting is built; settings are bounded by the
    size of the config itself (rows × regimes × scale grid)."""
    limit = config.get("max_jobs", DEFAULT_MAX_JOBS)
    shards = num_shards(config)
    if shards > limit:  # every sampled setting needs all these shards: no need to count settings
        raise _too_many(config, {"sample": shards, "total": shards}, limit)
    evaluations = all_evaluations(config)
    most: dict[str, int] = {}  # setting -> most samples any evaluation of it reads
    for setting, n in evaluations.values():
        most[setting] = max(most.get(setting, 0), n)
    sample = sum(num_shards(config, n) for n in most.values())
    counts = dict(sample=sample, evaluate=len(evaluations),
                  calibrate=len(all_probes(config)) + len(all_guided_probes(config)))
    counts.update(total=sum(counts.values()), settings=len(most), shards=shards)
    if counts["total"] > limit:
        raise _too_many(config, counts, limit)
    return counts


def describe_job_counts(config: dict) -> str:
    """One line for the start of a run: what the config plans, and the bound it is held to."""
    c = job_counts(config)
    return (f"offshelf: {c['total']} jobs planned ({c['sample']} sample: {c['settings']} settings x up to "
            f"{c['shards']} shards; {c['evaluate']} evaluate; {c['calibrate']} calibrate; plus the per-experiment "
            f"jobs); max_jobs = {config.get('max_jobs', DEFAULT_MAX_JOBS)}")


def cost_plan(config: dict, seconds: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """What sampling a config costs, per table and in total (settings shared by tables counted once
    in the total): samples, denoiser and classifier network evaluations, and, given ``seconds``
    per ``denoiser`` evaluation and per ``classifier`` forward+backward (per image, at the batch
    size you run), the hours: Σ count × seconds / 3600. Evaluation is not counted."""
    from offshelf.backends import create, spec_from_config

    backend = create(spec_from_config(config))
    most: dict[str, dict[str, int]] = {}  # table -> setting -> most samples it reads
    for row in table_rows(config):
        if not row.unavailable:
            for s in row.candidates:
                table = most.setdefault(row.table, {})
                table[s.name] = max(table.get(s.name, 0), row.num_samples or config["sampling"]["num_samples"])
    settings = all_settings(config)
    total: dict[str, int] = {}
    for table in most.values():
        for name, n in table.items():
            total[name] = max(total.get(name, 0), n)

    def line(label: str, samples_by_setting: dict[str, int]) -> dict[str, Any]:
        out = {"table": label, "settings": len(samples_by_setting), "samples": 0, "denoiser": 0, "classifier": 0}
        for name, n in samples_by_setting.items():
            work = backend.work_per_sample(settings[name], config.get("sampling", {}))
            out["samples"] += n
            out["denoiser"] += n * work["denoiser"]
            out["classifier"] += n * work["classifier"]
        if seconds:
            out["hours"] = (out["denoiser"] * seconds["denoiser"] + out["classifier"] * seconds["classifier"]) / 3600
        return out

    return [line(table, samples) for table, samples in most.items()] + [line("total", total)]
