"""The plan of a workflow config, built once (:func:`build_plan`) per Snakemake invocation and per
``offshelf plan``: its table rows and everything the rules expand from them."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

from offshelf.planning.costs import check_shards, count_jobs
from offshelf.planning.params import config_backend
from offshelf.planning.probes import (FIGURE4_SETTING, calibrates_guided, figure_guided_settings, figure_probes,
                                      guided_probe)
from offshelf.planning.rows import Row, evaluation_name, table_rows
from offshelf.planning.searches import SearchPlan, lookup_setting, proposed
from offshelf.settings import Setting, probe_setting

# A file build_plan appends a line to on each build (tests count them: the Snakefile builds one plan)
COUNT_BUILDS = "OFFSHELF_COUNT_PLAN_BUILDS"


@dataclass(frozen=True)
class Plan:
    """Everything a config plans. ``rows``: every (table row × regime); ``settings``: the tables'
    fixed settings by name (a searched row's scales come from its search's round records);
    ``evaluations``: metrics file stem -> (setting name, number of samples); ``searches``: search
    name -> :class:`SearchPlan`; ``probes``: unguided calibrations, by probe name; ``guided_probes``:
    guided calibrations by setting name (empty unless ``calibrates_guided``); ``job_counts``: every
    job the workflow runs, by kind, searches at their most (:func:`offshelf.planning.costs.count_jobs`);
    ``all_samples``: the samples a setting gets (``sampling.num_samples``)."""

    rows: tuple[Row, ...]
    settings: Mapping[str, Setting]
    evaluations: Mapping[str, tuple[str, int]]
    searches: Mapping[str, SearchPlan]
    probes: tuple[str, ...]
    guided_probes: Mapping[str, Setting]
    calibrates_guided: bool
    job_counts: Mapping[str, int]
    all_samples: int
    #: the quality-per-compute target (the config's ``pareto`` table; ``snakemake pareto``), planned
    #: apart so that the tables' report does not wait on it: its own rows, settings, evaluations and
    #: searches; ``all`` runs it only where ``pareto_in_all`` says so (its ``job_counts`` then count it)
    pareto: "Plan | None" = None

    @classmethod
    def from_config(cls, config: dict) -> "Plan":
        return build_plan(config)

    @property
    def all_searches(self) -> dict[str, SearchPlan]:
        """The tables' searches and the pareto target's."""
        return {**self.searches, **(self.pareto.searches if self.pareto else {})}

    def setting(self, name: str, rounds: Iterable[Mapping[str, Any]] = ()) -> Setting:
        """A fixed setting, or one a search round proposed (``rounds``: their records, read lazily);
        the tables' or the pareto target's."""
        rounds = list(rounds)
        if self.pareto is not None and name not in self.settings and (
                name in self.pareto.settings or proposed(rounds, self.pareto.searches, "settings", name)):
            return self.pareto.setting(name, rounds)
        return lookup_setting(self.settings, self.searches, rounds, name)

    def evaluation(self, name: str, rounds: Iterable[Mapping[str, Any]] = ()) -> tuple[str, int]:
        """(setting name, number of samples) of a metrics file stem: one the tables (or the pareto
        target) need, or one a search round proposed (as its record names it)."""
        rounds = list(rounds)
        if name in self.evaluations:
            return self.evaluations[name]
        found = proposed(rounds, self.searches, "evaluates", name)
        if found is None and self.pareto is not None:
            return self.pareto.evaluation(name, rounds)
        if found is None:
            raise ValueError(f"evaluation {name!r} is neither a table row's nor one a search proposed")
        return found[1]["setting"], int(found[1]["num_samples"])

    def sampled_counts(self, setting: str, rounds: Iterable[Mapping[str, Any]] = ()) -> list[int]:
        """The sample counts the evaluations of ``setting`` read: the tables' (and the pareto
        target's), or, for a scale a search proposed, its search's full fidelity (a finalist is
        sampled in full)."""
        rounds = list(rounds)
        counts = [n for name, n in self.evaluations.values() if name == setting]
        if not counts and (found := proposed(rounds, self.searches, "settings", setting)):
            counts = [self.searches[found[0]["search"]].spec.full_fidelity]
        if self.pareto is not None:
            counts += self.pareto.sampled_counts(setting, rounds)
        return counts

    def sources(self, config: dict, backend) -> set:
        """Every file (offshelf.backends.base.FileSource) a job of this plan reads: the networks of
        each setting, search, probe and Figure 4, and the judge's."""
        settings = list(self.settings.values()) + [plan.setting for plan in self.searches.values()]
        settings += [probe_setting(p) for p in self.probes] + list(self.guided_probes.values())
        settings += [FIGURE4_SETTING] if "figure4" in config.get("figures", {}) else []
        files = [backend.evaluation_files()] + [backend.files(s) for s in settings]
        return {source for role_files in files for source in role_files.values()}

    def trained_roles(self, config: dict, backend) -> list[str]:
        """Roles the workflow trains (rule train_model), in the config's order."""
        from offshelf.backends.base import Trained
        from offshelf.backends.capabilities import Capability

        if Capability.TRAINING not in backend.capabilities:
            return []
        needed = {s.role for s in self.sources(config, backend) if isinstance(s, Trained)}
        return [role for role in backend.training_from_config(config) if role in needed]

    def fetched_files(self, config: dict, backend) -> dict[str, str]:
        """Registry filename -> name of every pretrained file the checkpoint cache must hold (rule
        fetch_checkpoint): those not given a ``checkpoints.local`` path."""
        from offshelf.backends.base import Pretrained
        from offshelf.checkpoints import get as registry_entry

        checkpoints = config.get("checkpoints", {})
        local = checkpoints.get("local", {})
        return {registry_entry(s.name, checkpoints.get("registry")).filename: s.name
                for s in self.sources(config, backend) if isinstance(s, Pretrained) and s.name not in local}


def _count_build() -> None:
    path = os.environ.get(COUNT_BUILDS)
    if path:
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")


def build_plan(config: dict) -> Plan:
    """The plan of a (validated) config. Raises :class:`~offshelf.planning.costs.TooManyJobsError`
    above ``max_jobs`` (a runaway shard count before any row is built) and ValueError naming the
    key of an invalid row. The config's ``pareto`` table is planned as :attr:`Plan.pareto`, first:
    the job count of ``all`` includes it where ``pareto_in_all`` puts it there."""
    _count_build()
    pareto = _build(pareto_config(config), target="pareto") if "pareto" in config else None
    return _build(config, pareto=pareto)


def pareto_config(config: dict) -> dict:
    """The config of the pareto target alone: its one table, no figures, no other target."""
    rest = {k: v for k, v in config.items() if k not in ("pareto", "pareto_in_all", "figures", "tables")}
    return {**rest, "tables": {"pareto": config["pareto"]}}


def _build(config: dict, target: str = "all", pareto: Plan | None = None) -> Plan:
    check_shards(config)
    all_samples = config["sampling"]["num_samples"]
    backend = config_backend(config)
    rows = tuple(table_rows(config, backend=backend))
    settings: dict[str, Setting] = {}
    evaluations: dict[str, tuple[str, int]] = {}
    searches: dict[str, SearchPlan] = {}
    for row in rows:
        if row.unavailable:
            continue
        for s in row.candidates:
            settings.setdefault(s.name, s.canonical())
            evaluations.setdefault(evaluation_name(config, s.name, row.num_samples), (s.name, row.num_samples))
        if row.search:
            searches.setdefault(row.search.name, row.search)
    probes = tuple(sorted({row.probe for row in rows if row.probe} | set(figure_probes(config))))
    guided: dict[str, Setting] = {}
    if calibrates_guided(config):
        for row in rows:
            if row.guided_probe and not row.unavailable:
                guided.setdefault(row.guided_probe,
                                  guided_probe(config, row.search.setting if row.search else row.candidates[0]))
        for s in figure_guided_settings(config):
            guided.setdefault(s.name, s)
    plan = Plan(rows=rows, settings=settings, evaluations=evaluations, searches=searches, probes=probes,
                guided_probes=guided, calibrates_guided=calibrates_guided(config), job_counts={},
                all_samples=all_samples, pareto=pareto)
    return replace(plan, job_counts=count_jobs(config, plan, backend, target))
