"""Table rows: each (table row × regime) of the config, its setting, the settings swept over (or
the search that picks its scale), its calibration probes and the paper's numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from offshelf.backends.capabilities import unavailable
from offshelf.planning.params import config_backend
from offshelf.planning.probes import calibrates_guided, guided_probe
from offshelf.planning.searches import SearchPlan, search_plan
from offshelf.settings import SCALED_METHODS, Setting

SETTING_KEYS = {f for f in Setting.__dataclass_fields__}


@dataclass(kw_only=True)
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
    """The scale grid of a guided (or SMC) setting (per regime), the CFG grid of a CFG setting."""
    if setting.method in SCALED_METHODS:
        grid = config["scales"][setting.regime]
        return [replace(setting, scale=float(s)) for s in grid], "scale"
    if setting.method == "cfg":
        return [replace(setting, cfg_scale=float(w)) for w in config["cfg_scales"]], "cfg_scale"
    return [setting], None


def _row_samples(config: dict, table: str, spec: dict) -> int | None:
    """The samples a table's metrics use (``num_samples``, at most ``sampling.num_samples``)."""
    total = config.get("sampling", {}).get("num_samples")
    num_samples = spec.get("num_samples", total)
    if total is not None and num_samples > total:
        raise ValueError(f"{table}.num_samples = {num_samples} exceeds sampling.num_samples = "
                         f"{config['sampling']['num_samples']} (the samples a setting gets)")
    return num_samples


def _candidates(config: dict, row: dict, setting: Setting, num_samples: int, where: str,
                search_results: Mapping[str, Mapping[str, Any]]):
    """(candidates, sweep key, search plan, its finished record) of one row in one regime."""
    # a row (or its base: a tuned setting from `offshelf tune`) may pin its scale
    pinned = "scale" in row or "scale" in config.get("bases", {}).get(row.get("base"), {})
    if pinned and setting.method in SCALED_METHODS:
        return [setting], None, None, None
    if (plan := search_plan(config, setting, num_samples, where)):
        found = search_results.get(plan.name)
        return ([plan.at(found["scale"])] if found else []), "scale", plan, found
    return (*sweep(config, setting), None, None)


def table_rows(config: dict, search_results: Mapping[str, Mapping[str, Any]] | None = None,
               backend=None) -> list[Row]:
    """Every (table row × regime). ``search_results``: finished search records by search name
    (the workflow's ``search/<name>/result.json``); a searched row without one has no candidate
    yet (its search has not run). ``backend``: the config's (made here when not given)."""
    backend = config_backend(config) if backend is None else backend
    rows = []
    for table, spec in config["tables"].items():
        base_row = baseline_index(table, spec)
        for position, row in enumerate(spec["rows"]):
            for regime in config["regimes"]:
                setting = row_setting(config, row, regime)
                probe = setting.probe if (spec.get("calibration") and setting.method == "guided") else None
                num_samples = _row_samples(config, table, spec)
                guided = guided_probe(config, setting).name if probe and calibrates_guided(config) else None
                candidates, key, plan, found = _candidates(config, row, setting, num_samples,
                                                           f"{table} row {row['label']!r}", search_results or {})
                rows.append(Row(table=table, label=row["label"], regime=regime, candidates=candidates, probe=probe,
                                paper=dict(row.get("paper", {})), sweep_key=key, num_samples=num_samples,
                                unavailable=unavailable(backend, setting), baseline=position == base_row,
                                search=plan, search_result=found, guided_probe=guided))
    return rows


def evaluation_name(config: dict, setting_name: str, num_samples: int) -> str:
    """Metrics file stem: the setting's name, plus ``+n<N>`` when it is evaluated on fewer than
    all of its samples (the paper's ablations use 10,000 of the 50,000 a setting gets)."""
    return setting_name if num_samples == config["sampling"]["num_samples"] else f"{setting_name}+n{num_samples}"
