"""What a plan costs: the per-setting jobs it plans (bounded by ``max_jobs``) and the network
evaluations its sampling takes, per table and in total."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offshelf.planning.params import config_backend, num_shards, pareto_in_all
from offshelf.planning.probes import report_figures
from offshelf.search import max_evaluations, max_rounds

# A workflow whose DAG holds tens of thousands of jobs takes minutes and gigabytes before the
# first job starts (a dry run of 80,000 sample jobs: 70 s, 1 GB), and almost always comes from a
# typo in `sampling.shard_size`. Above this many jobs a config must say so (`max_jobs`).
DEFAULT_MAX_JOBS = 20_000


class TooManyJobsError(ValueError):
    """The config plans more jobs than ``max_jobs`` allows; the message says which keys to change."""


SEARCH_COUNTS = ("search_sample", "search_evaluate", "search_round")


def _too_many(config: dict, counts: dict[str, int], limit: int) -> TooManyJobsError:
    sampling = config["sampling"]
    parts = [f"{counts['sample']} sample"] + [f"{counts[k]} {k.replace('_', ' ')}"
                                             for k in ("evaluate", "calibrate") + SEARCH_COUNTS if k in counts]
    return TooManyJobsError(
        f"config keys 'sampling.num_samples' = {sampling['num_samples']} / 'sampling.shard_size' = "
        f"{sampling['shard_size']} plan {counts['total']} jobs ({', '.join(parts)}), above max_jobs = {limit}: "
        f"raise sampling.shard_size (fewer, larger shards) or set the config key 'max_jobs' to at least "
        f"{counts['total']}")


def check_shards(config: dict) -> None:
    """Refuses cheaply, before any setting is built: shards are ``ceil(num_samples / shard_size)``,
    pure arithmetic, and every sampled setting needs all of them."""
    limit = config.get("max_jobs", DEFAULT_MAX_JOBS)
    shards = num_shards(config)
    if shards > limit:
        raise _too_many(config, {"sample": shards, "total": shards}, limit)


# Per-experiment jobs: a handful each, whatever the size of the config (the pareto target's two:
# its report, and the named target, which `all` does not run even where it runs the report).
EXPERIMENT_COUNTS = ("train_model", "fetch_checkpoint", "reference_features", "figure", "publish_results",
                     "report", "all", "pareto_report", "pareto")


def count_jobs(config: dict, plan, backend, target: str = "all") -> dict[str, int]:
    """Every job a fresh run of ``plan`` (offshelf.planning.plan.Plan, built from ``config``; this
    module is below it) runs, by kind, counted without building a single job; the guidance-scale
    searches at their most (offshelf.search.max_evaluations / max_rounds: every extension and
    refinement taken), so ``total`` is exact for a run whose searches take every step, an upper
    bound otherwise.

    Per setting: ``sample`` (each setting's shards, up to the most samples any table evaluates of
    it), ``evaluate`` (metrics files), ``calibrate`` (probes, unguided and guided). Per search:
    ``search_round``, ``search_sample`` and ``search_evaluate`` (the finalists' full evaluations;
    the low-fidelity ones are drawn and judged inside the rounds; round 0 is no job) and
    ``search_result``. Per experiment (rule names): ``train_model``, ``fetch_checkpoint``,
    ``reference_features``, ``figure`` (one job per calibration figure and Figure 4, one for all
    analytic figures), ``publish_results`` (with ``results_doc``), ``report`` (which also draws the
    sample grids) and ``all``. Where ``pareto_in_all``
    puts the pareto target in ``all``, ``all`` counts its jobs too (``plan.pareto``; a setting,
    evaluation or search the tables share with it once) and its ``pareto_report``. For
    ``target="pareto"`` (the plan of the config's ``pareto`` table,
    offshelf.planning.plan.pareto_config) ``pareto_report`` and ``pareto`` instead. Also
    ``settings`` / ``shards`` (shards of a setting sampled in full), ``searches``, and
    ``first_dag``: the jobs Snakemake's first "Job stats" lists before any search round has run
    (the rest are added as the rounds finish). Refuses above ``max_jobs``
    (:class:`TooManyJobsError`); settings are bounded by the size of the config itself
    (rows × regimes × scale grid)."""
    from offshelf.backends.capabilities import Capability

    limit = config.get("max_jobs", DEFAULT_MAX_JOBS)
    check_shards(config)
    with_pareto = target == "all" and pareto_in_all(config) and plan.pareto is not None
    parts = (plan, plan.pareto) if with_pareto else (plan,)
    # jobs are files: what the tables and the pareto target share (same name) is one job
    evaluations = {name: e for part in parts for name, e in part.evaluations.items()}
    searches = {name: search for part in parts for name, search in part.searches.items()}
    probes = {name for part in parts for name in part.probes}
    guided_probes = {name for part in parts for name in part.guided_probes}
    most: dict[str, int] = {}  # setting -> most samples any evaluation of it reads
    for setting, n in evaluations.values():
        most[setting] = max(most.get(setting, 0), n)
    counts = dict(sample=sum(num_shards(config, n) for n in most.values()), evaluate=len(evaluations),
                  calibrate=len(probes) + len(guided_probes))
    counts.update({k: 0 for k in SEARCH_COUNTS + ("search_result",)})
    for search in searches.values():
        full = max_evaluations(search.spec)[1]  # the low-fidelity ones are drawn inside the rounds
        counts["search_sample"] += full * num_shards(config, search.spec.full_fidelity)
        counts["search_evaluate"] += full
        counts["search_round"] += max_rounds(search.spec) - 1  # round 0 is the plan's (initial_round), no job
        counts["search_result"] += 1
    figures = report_figures(config, backend)
    analytic = set(getattr(backend, "analytic_figures", ())) & set(figures)
    counts.update({k: 0 for k in EXPERIMENT_COUNTS})
    if target == "pareto":  # its own report; its networks and figures are the tables' (`all`'s)
        counts.update(pareto_report=1, pareto=1)
    else:
        counts.update(
            train_model=len({role for part in parts for role in part.trained_roles(config, backend)}),
            fetch_checkpoint=len({name for part in parts for name in part.fetched_files(config, backend)}),
            reference_features=int(Capability.REFERENCE_FEATURES in backend.capabilities),
            figure=len(set(figures) - analytic) + bool(analytic),
            publish_results=int("results_doc" in config),
            report=1, all=1, pareto_report=int(with_pareto))
    counts["total"] = sum(counts.values())
    late = counts["search_sample"] + counts["search_evaluate"]
    counts.update(first_dag=counts["total"] - late - (counts["search_round"] - len(searches)),
                  settings=len(most), shards=num_shards(config), searches=len(searches))
    if counts["total"] > limit:
        raise _too_many(config, counts, limit)
    return counts


def describe_job_counts(config: dict, plan) -> str:
    """The job count of ``plan``, in one line: printed by `offshelf plan` and at the start of a run."""
    c = plan.job_counts
    search = (f"; {c['searches']} guidance-scale searches: {c['search_round']} round, {c['search_sample']} sample, "
              f"{c['search_evaluate']} evaluate, {c['search_result']} result"
              if c["searches"] else "")
    experiment = ", ".join(f"{c[k]} {k}" for k in EXPERIMENT_COUNTS if c[k])
    bound = (f"at most (a search that stops early runs fewer); Snakemake's first 'Job stats' lists "
             f"{c['first_dag']} of them, before the search rounds add theirs" if c["searches"] else "exactly")
    pareto = "; target `pareto` in `all` (pareto_in_all)" if pareto_in_all(config) else ""
    if plan.pareto is not None and not pareto_in_all(config):  # a named target: `all` does not run it
        p = plan.pareto.job_counts
        pareto = (f"; target `pareto` (not in `all`): at most {p['total']} jobs more ({p['sample']} sample, "
                  f"{p['evaluate']} evaluate" + (f", {p['searches']} searches" if p["searches"] else "") +
                  ", fewer where it shares settings with the tables)")
    shards = f"{c['shards']} shard{'' if c['shards'] == 1 else 's'}"
    return (f"offshelf: {c['total']} jobs planned ({c['sample']} sample: {c['settings']} settings x up to {shards}; "
            f"{c['evaluate']} evaluate; {c['calibrate']} calibrate{search}; per experiment: {experiment}), "
            f"{bound}{pareto}; max_jobs = {config.get('max_jobs', DEFAULT_MAX_JOBS)}")


def cost_plan(config: dict, plan, costs: EvaluationCosts | None = None) -> list[dict[str, Any]]:
    """What sampling a config costs (``plan``: its offshelf.planning.plan.Plan), per table and in total (settings shared by tables counted once
    in the total; the ``pareto`` target on its own line, in the total where ``pareto_in_all`` puts it in ``all``,
    else outside it): samples, denoiser and classifier network evaluations, and, given ``costs``
    (seconds per image for one denoiser evaluation and one classifier gradient, at the batch they
    were measured at), the hours (:func:`gpu_hours`). Evaluation is not counted. A searched row
    counts its search at its most (every extension and refinement taken; offshelf.search)."""
    from offshelf.backends.capabilities import Capability, require

    backend = config_backend(config)
    require(backend, Capability.COST, "a cost plan")  # declared, not found out by calling
    most: dict[str, dict[str, int]] = {}  # table -> setting (or search) -> most samples it reads
    settings = {**plan.settings, **(plan.pareto.settings if plan.pareto else {})}
    for row in plan.rows + (plan.pareto.rows if plan.pareto else ()):
        if row.unavailable:
            continue
        table = most.setdefault(row.table, {})
        for s in row.candidates:
            table[s.name] = max(table.get(s.name, 0), row.num_samples or config["sampling"]["num_samples"])
        if row.search:
            low, full = max_evaluations(row.search.spec)
            table[row.search.name] = low * row.search.spec.low_fidelity + full * row.search.spec.full_fidelity
            settings[row.search.name] = row.search.setting  # every scale costs the same per sample
    total: dict[str, int] = {}
    in_all = pareto_in_all(config)
    for label, table in most.items():
        if label == "pareto" and not in_all:  # a target of its own (`snakemake pareto`): outside the total of `all`
            continue
        for name, n in table.items():
            total[name] = max(total.get(name, 0), n)

    def line(label: str, samples_by_setting: dict[str, int]) -> dict[str, Any]:
        out = {"table": label, "settings": len(samples_by_setting), "samples": 0, "denoiser": 0, "classifier": 0}
        for name, n in samples_by_setting.items():
            work = backend.work_per_sample(settings[name], config.get("sampling", {}))
            out["samples"] += n
            out["denoiser"] += n * work["denoiser"]
            out["classifier"] += n * work["classifier"]
            if "classifier_backward" in work:  # the backends counting forwards and backwards apart
                out["classifier_backward"] = out.get("classifier_backward", 0) + n * work["classifier_backward"]
        if costs is not None:
            out["hours"] = gpu_hours(out["denoiser"], out["classifier"], costs)
        return out

    tables = [line(table, samples) for table, samples in most.items() if table != "pareto"]
    pareto_label = "pareto (in all)" if in_all else "pareto (own target, not in total)"
    pareto = [line(pareto_label, most["pareto"])] if "pareto" in most else []
    return tables + pareto + [line("total", total)]


# ------------------------------------------------------------------ seconds per network evaluation
#
# GPU-hours need what one network evaluation costs on the GPU the run will use. They come from a
# costs file (benchmarks/gpu_throughput.py writes one per device), or, as a shorthand for a number
# measured by hand, from two command-line values; both become one EvaluationCosts here.

class CostsFileError(ValueError):
    """A costs file that cannot be read as one; the message names the file and the key."""


@dataclass(frozen=True)
class EvaluationCosts:
    """Seconds per image for one denoiser evaluation and for one classifier gradient (forward and
    input-gradient backward; DiT's goes through the VAE decoder), at the batch they were measured at.
    A CFG pair is two denoiser evaluations: the backends' ``work_per_sample`` counts both, so the
    seconds here are for one. ``source`` says where the numbers come from (printed beside the hours)."""

    denoiser: float
    classifier: float
    source: str


def _positive_seconds(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise CostsFileError(f"{where} = {value!r}: expected a positive finite number of seconds per image "
                             f"per evaluation")
    return float(value)


def read_costs(path: str | os.PathLike, backbone: str) -> EvaluationCosts:
    """The costs of ``backbone`` in a costs file (benchmarks/gpu_throughput.py's format)::

        {"device": str, "torch": str, "command": str,
         "backbones": {"<backbone>": {"levers": {...}, "batch": int,
                                      "seconds_per_denoiser": float, "seconds_per_classifier": float}}}

    Other keys are allowed (the benchmark's own measurements). A missing or malformed key raises
    :class:`CostsFileError`, one line naming the file and the key."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CostsFileError(f"costs file {path}: no such file (benchmarks/gpu_throughput.py writes one)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CostsFileError(f"costs file {path}: not readable as JSON ({err})") from None

    def fail(key: str, expected: str, value: Any = None) -> CostsFileError:
        shown = "" if value is None else f" = {value!r}"
        return CostsFileError(f"costs file {path}: key '{key}'{shown}: expected {expected}")

    if not isinstance(data, dict):
        raise CostsFileError(f"costs file {path}: expected a JSON object at the top, got {type(data).__name__}")
    for key in ("device", "torch", "command"):
        if not isinstance(data.get(key), str):
            raise fail(key, "a string (where and how the costs were measured)", data.get(key))
    backbones = data.get("backbones")
    if not isinstance(backbones, dict):
        raise fail("backbones", "an object of per-backbone costs", backbones)
    if backbone not in backbones:
        measured = ", ".join(sorted(backbones)) or "none"
        raise CostsFileError(f"costs file {path}: no key 'backbones.{backbone}' (the config's backbone); it "
                             f"has {measured}: measure {backbone} with benchmarks/gpu_throughput.py")
    entry = backbones[backbone]
    where = f"backbones.{backbone}"
    if not isinstance(entry, dict):
        raise fail(where, "an object with levers, batch, seconds_per_denoiser, seconds_per_classifier", entry)
    if not isinstance(entry.get("levers"), dict):
        raise fail(f"{where}.levers", "an object (the speed levers the costs were measured with)", entry.get("levers"))
    batch = entry.get("batch")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise fail(f"{where}.batch", "a positive integer (images per batch when measured)", batch)
    for key in ("seconds_per_denoiser", "seconds_per_classifier"):
        if key not in entry:
            raise fail(f"{where}.{key}", "a positive finite number of seconds per image per evaluation")
    seconds = {key: _positive_seconds(entry[key], f"costs file {path}: key '{where}.{key}'")
               for key in ("seconds_per_denoiser", "seconds_per_classifier")}
    levers = ", ".join(f"{k}={v}" for k, v in sorted(entry["levers"].items())) or "none"
    source = (f"{path}, backbone {backbone}: batch {batch}, levers {levers}; on {data['device']}, torch "
              f"{data['torch']}; measured by `{data['command']}`")
    return EvaluationCosts(seconds["seconds_per_denoiser"], seconds["seconds_per_classifier"], source)


def evaluation_costs(backbone: str, costs_file: str | os.PathLike | None = None,
                     seconds_per_denoiser: float | None = None,
                     seconds_per_classifier: float | None = None) -> EvaluationCosts | None:
    """The costs ``offshelf plan`` turns into hours: a costs file's entry for ``backbone``, or the
    two seconds given by hand (both, never with a file), or None (no hours)."""
    by_hand = (seconds_per_denoiser, seconds_per_classifier)
    if costs_file is not None:
        if any(s is not None for s in by_hand):
            raise ValueError("--costs: give a costs file or --seconds-per-denoiser/--seconds-per-classifier, not both")
        return read_costs(costs_file, backbone)
    if all(s is None for s in by_hand):
        return None
    if any(s is None for s in by_hand):
        raise ValueError("--seconds-per-denoiser: give both per-evaluation costs (or a --costs file), or neither")
    return EvaluationCosts(
        _positive_seconds(seconds_per_denoiser, "--seconds-per-denoiser"),
        _positive_seconds(seconds_per_classifier, "--seconds-per-classifier"),
        "--seconds-per-denoiser / --seconds-per-classifier, measured by hand")


def gpu_hours(denoiser_evaluations: int, classifier_gradients: int, costs: EvaluationCosts) -> float:
    """Σ count × seconds per image per evaluation / 3600."""
    return (denoiser_evaluations * costs.denoiser + classifier_gradients * costs.classifier) / 3600
