"""Expand a workflow config into the jobs it implies: table rows → settings (× regime × swept
scale, or a guidance-scale search), calibration probes and figures. Pure functions of the config
(and, for searched rows, of the search records the workflow wrote), so the Snakefile stays thin
and the expansion is unit-tested without Snakemake."""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from offshelf.search import (
    Evaluation, SearchSpec, evaluation_from_dict, evaluation_to_dict, format_trace, is_last_round, max_evaluations,
    max_rounds, next_evaluations, result,
)
from offshelf.settings import Setting, probe_setting

SETTING_KEYS = {f for f in Setting.__dataclass_fields__}


@dataclass(frozen=True)
class SearchPlan:
    """The guidance-scale search of a guided row (offshelf.search): ``setting`` is the row's setting
    (its scale is what the search chooses), ``spec`` the search, ``all_samples`` the config's
    ``sampling.num_samples`` (evaluation names say ``+n<N>`` below it). ``name`` is the search's
    stable key: the setting's name with the scale replaced by ``search``, plus ``+n<N>`` when the
    row's table evaluates fewer samples than a setting gets."""

    name: str
    setting: Setting
    spec: SearchSpec
    all_samples: int

    @property
    def family(self) -> str:
        """The setting's name with its scale replaced by ``search`` (no sample count)."""
        return family_name(self.setting)

    def at(self, scale: float) -> Setting:
        return replace(self.setting, scale=float(scale))

    def evaluation(self, scale: float, num_samples: int) -> str:
        """The metrics file stem of ``scale`` evaluated on its first ``num_samples`` samples."""
        name = self.at(scale).name
        return name if num_samples == self.all_samples else f"{name}+n{num_samples}"

    def to_dict(self) -> dict[str, Any]:
        spec = asdict(self.spec)
        spec.update(initial=list(spec["initial"]), bounds=list(spec["bounds"]))
        return {"name": self.name, "setting": self.setting.to_dict(), "spec": spec, "all_samples": self.all_samples}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SearchPlan":
        spec = dict(d["spec"], initial=tuple(d["spec"]["initial"]), bounds=tuple(d["spec"]["bounds"]))
        return cls(d["name"], Setting.from_dict(d["setting"]), SearchSpec(**spec), int(d["all_samples"]))


def family_name(setting: Setting) -> str:
    """``setting``'s name with its scale replaced by ``search``: every scale of a searched row
    shares it (``..._g0.3_ssearch_r1``)."""
    name = replace(setting, scale=math.nan).name
    if name.count("_snan_") != 1:
        raise ValueError(f"setting {setting.name}: cannot locate the scale in its name")
    return name.replace("_snan_", "_ssearch_")


@dataclass
class Row:
    """One table row: a label, its setting per regime, the settings swept over (the row reports
    the one with the best FID), the probe whose calibration it shows, and the paper's numbers.
    A searched row (``search`` set) has one candidate once its search finished: the chosen scale;
    none before."""

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
    search: SearchPlan | None = None  # the guidance-scale search that picks the row's scale
    search_result: dict[str, Any] | None = None  # its finished record (search_result_record)
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
    from offshelf.backends.capabilities import unavailable

    return unavailable(create(spec_from_config(config)), setting)


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


def search_plan(config: dict, setting: Setting, num_samples: int, where: str) -> SearchPlan | None:
    """The search that picks ``setting``'s scale (a guided row of a config with a ``search``
    section), or None. ``num_samples``: the row's reported count, the search's full fidelity."""
    search = config.get("search")
    if search is None or setting.method != "guided":
        return None
    initial = search["initial"].get(setting.regime)
    if initial is None:
        raise ValueError(f"config key 'search.initial.{setting.regime}' is missing: {where} is a guided row of "
                         f"regime {setting.regime!r}, whose scale the search chooses")
    low = search["low_fidelity"]
    if low > num_samples:
        raise ValueError(f"config key 'search.low_fidelity' = {low} exceeds the {num_samples} samples {where} "
                         f"reports (its full-fidelity evaluation)")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in search.items()
              if k not in ("initial", "low_fidelity")}
    try:
        spec = SearchSpec(initial=tuple(initial), low_fidelity=low, full_fidelity=num_samples, **fields)
    except ValueError as err:
        raise ValueError(f"config key 'search': {err}") from err
    all_samples = config["sampling"]["num_samples"]
    name = family_name(setting) + ("" if num_samples == all_samples else f"+n{num_samples}")
    return SearchPlan(name, replace(setting, scale=Setting.scale), spec, all_samples)


def table_rows(config: dict, search_results: Mapping[str, Mapping[str, Any]] | None = None) -> list[Row]:
    """Every (table row × regime). ``search_results``: finished search records by search name
    (the workflow's ``search/<name>/result.json``); a searched row without one has no candidate
    yet (its search has not run)."""
    rows = []
    for table, spec in config["tables"].items():
        base_row = baseline_index(table, spec)
        for position, row in enumerate(spec["rows"]):
            for regime in config["regimes"]:
                setting = row_setting(config, row, regime)
                probe = setting.probe if (spec.get("calibration") and setting.method == "guided") else None
                total = config.get("sampling", {}).get("num_samples")
                num_samples = spec.get("num_samples", total)
                if total is not None and num_samples > total:
                    raise ValueError(f"{table}.num_samples = {num_samples} exceeds sampling.num_samples = "
                                     f"{config['sampling']['num_samples']} (the samples a setting gets)")
                guided = guided_probe(config, setting).name if probe and guided_calibration(config) else None
                plan, found = None, None
                # a row (or its base: a tuned setting from `offshelf tune`) may pin its scale
                pinned = "scale" in row or "scale" in config.get("bases", {}).get(row.get("base"), {})
                if pinned and setting.method == "guided":
                    candidates, key = [setting], None
                elif (plan := search_plan(config, setting, num_samples, f"{table} row {row['label']!r}")):
                    found = (search_results or {}).get(plan.name)
                    candidates, key = ([plan.at(found["scale"])] if found else []), "scale"
                else:
                    candidates, key = sweep(config, setting)
                rows.append(Row(table, row["label"], regime, candidates, probe, dict(row.get("paper", {})), key,
                                num_samples, unavailable_reason(config, setting), position == base_row, plan, found, guided))
    return rows


def all_searches(config: dict) -> dict[str, SearchPlan]:
    """Every distinct guidance-scale search the tables need, by name (shared rows search once)."""
    return {row.search.name: row.search for row in table_rows(config) if row.search and not row.unavailable}


def lookup_setting(settings: Mapping[str, Setting], searches: Mapping[str, SearchPlan], name: str) -> Setting:
    """The setting named ``name``: one of the tables' fixed ``settings``, or a scale a search may
    propose (the family's setting at the scale the name spells). Anything else is an error naming it."""
    if name in settings:
        return settings[name]
    match = re.search(r"_s([^_]+)_r\d", name)
    if match:
        family = f"{name[:match.start()]}_ssearch{name[match.end(1):]}"
        for plan in searches.values():
            if plan.family == family:
                try:
                    setting = plan.at(float(match.group(1)))
                except ValueError:
                    break
                if setting.name == name:
                    return setting
    raise ValueError(f"setting {name!r} is neither a table row's setting nor a scale of a searched row "
                     f"(see the config's 'tables' and 'search')")


def _trace_through(plan: SearchPlan, record: Mapping[str, Any] | None,
                   metrics: Mapping[str, Mapping[str, Any]]) -> list[Evaluation]:
    """A round's trace plus the FIDs of the evaluations it proposed (from ``metrics``, by name)."""
    if record is None:
        return []
    trace = [evaluation_from_dict(e) for e in record["trace"]]
    for (scale, num_samples), name in zip(record["proposals"], record["evaluations"]):
        if name not in metrics:
            raise ValueError(f"search {plan.name}: no metrics for {name} (scale {scale:g} on {num_samples} samples)")
        trace.append(Evaluation(float(scale), int(num_samples), float(metrics[name].get("fid", math.nan))))
    return trace


def search_round_record(plan: SearchPlan, previous: Mapping[str, Any] | None,
                        metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Round k of a search: round k − 1's trace plus the FIDs of the evaluations it proposed (read
    from ``metrics``, by evaluation name), and the evaluations the search proposes next. Round 0
    (``previous`` None) proposes the initial scales. ``final``: the search is done once this
    round's proposals (the finalists) are evaluated, so no further round is made; the report
    reads the result from it (:func:`search_result_record`)."""
    trace = _trace_through(plan, previous, metrics)
    proposals = next_evaluations(plan.spec, trace)
    return {"search": plan.name, "round": 0 if previous is None else previous["round"] + 1,
            "final": is_last_round(plan.spec, proposals), "spec": plan.to_dict()["spec"],
            "trace": [evaluation_to_dict(e) for e in trace],
            "proposals": [[s, n] for s, n in proposals], "evaluations": [plan.evaluation(s, n) for s, n in proposals]}


def search_result_record(plan: SearchPlan, final: Mapping[str, Any], metrics: Mapping[str, Mapping[str, Any]],
                         denoiser_per_sample: int | None = None) -> dict[str, Any]:
    """A finished search, from its final round and the metrics of the finalists it proposed: the
    chosen scale, the setting and metrics file the row reports, whether the optimum sits on the
    searched range's edge, the trace and the compute it spent (samples; denoiser evaluations
    given ``denoiser_per_sample``)."""
    if not final["final"]:
        raise ValueError(f"search {plan.name}: round {final['round']} is not its last (it proposes "
                         f"{final['proposals']}, and more rounds follow)")
    found = result(plan.spec, _trace_through(plan, final, metrics))
    return {"search": plan.name, "scale": found.scale, "fid": found.value, "on_edge": found.on_edge,
            "setting": plan.at(found.scale).name, "evaluation": plan.evaluation(found.scale, plan.spec.full_fidelity),
            "samples": found.samples_spent,
            "denoiser_evaluations": None if denoiser_per_sample is None else found.samples_spent * denoiser_per_sample,
            "trace": [evaluation_to_dict(e) for e in found.trace], "trace_text": format_trace(found.trace),
            "rounds": final["round"] + 1}


def all_settings(config: dict) -> dict[str, Setting]:
    """Every distinct setting the tables need, by name (shared rows are sampled once). A searched
    row's scales are its search's to choose: see :func:`all_searches`."""
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
            out.setdefault(row.guided_probe, guided_probe(config, row.search.setting if row.search else row.candidates[0]))
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


def first_seeds(config: dict, num_samples: int) -> list[int]:
    """[first seed, count] of a setting's first ``num_samples`` samples: the seeds its leading
    shards hold (a search round draws exactly these in its own process)."""
    if num_samples > config["sampling"]["num_samples"]:
        raise ValueError(f"{num_samples} samples asked of a setting that samples "
                         f"'sampling.num_samples' = {config['sampling']['num_samples']}")
    return [config["sampling"].get("seed_offset", 0), int(num_samples)]


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


def job_counts(config: dict) -> dict[str, int]:
    """The per-setting jobs a config plans, counted without building a single job: ``sample``
    (each setting's shards, up to the most samples any table evaluates of it), ``evaluate``
    (metrics files), ``calibrate`` (probes), their ``total``, and ``settings`` / ``shards``
    (shards of a setting sampled in full). Jobs that do not scale with the config (training,
    downloads, reference features, the report, figures) are not counted: a handful per experiment.
    The guidance-scale searches (``searches`` of them) are counted apart, at their most
    (offshelf.search.max_evaluations / max_rounds: every extension and refinement taken):
    ``search_sample`` and ``search_evaluate`` (the finalists' full evaluations; the low-fidelity
    ones are drawn and judged inside the rounds) and ``search_round`` jobs, also in the ``total``.

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
    counts = dict(sample=sample, evaluate=len(evaluations), calibrate=len(all_probes(config)) + len(all_guided_probes(config)))
    searches = all_searches(config)
    if searches:
        counts.update({k: 0 for k in SEARCH_COUNTS})
        for plan in searches.values():
            full = max_evaluations(plan.spec)[1]  # the low-fidelity ones are drawn inside the rounds
            counts["search_sample"] += full * num_shards(config, plan.spec.full_fidelity)
            counts["search_evaluate"] += full
            counts["search_round"] += max_rounds(plan.spec)
    counts.update(total=sum(counts.values()), settings=len(most), shards=shards)
    if searches:
        counts["searches"] = len(searches)
    if counts["total"] > limit:
        raise _too_many(config, counts, limit)
    return counts


def describe_job_counts(config: dict) -> str:
    """One line for the start of a run: what the config plans, and the bound it is held to."""
    c = job_counts(config)
    search = (f"; {c['searches']} guidance-scale searches: at most {c['search_sample']} sample, "
              f"{c['search_evaluate']} evaluate, {c['search_round']} round" if "searches" in c else "")
    return (f"offshelf: {c['total']} jobs planned ({c['sample']} sample: {c['settings']} settings x up to "
            f"{c['shards']} shards; {c['evaluate']} evaluate; {c['calibrate']} calibrate{search}; plus the "
            f"per-experiment jobs); max_jobs = {config.get('max_jobs', DEFAULT_MAX_JOBS)}")


def cost_plan(config: dict, seconds: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """What sampling a config costs, per table and in total (settings shared by tables counted once
    in the total): samples, denoiser and classifier network evaluations, and, given ``seconds``
    per ``denoiser`` evaluation and per ``classifier`` forward+backward (per image, at the batch
    size you run), the hours: Σ count × seconds / 3600. Evaluation is not counted. A searched row
    counts its search at its most (every extension and refinement taken; offshelf.search)."""
    from offshelf.backends import create, spec_from_config
    from offshelf.backends.capabilities import Capability, require

    backend = create(spec_from_config(config))
    require(backend, Capability.COST, "a cost plan")  # declared, not found out by calling
    most: dict[str, dict[str, int]] = {}  # table -> setting (or search) -> most samples it reads
    settings = all_settings(config)
    for row in table_rows(config):
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
