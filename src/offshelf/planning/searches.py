"""The guidance-scale search of a guided row (offshelf.search) as workflow data: its plan, the
record of each round (which names the settings it proposes *with their parameters*, so whatever
samples or evaluates a searched scale reads them from the record) and the finished search's result."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from offshelf.search import (
    Evaluation, SearchSpec, evaluation_from_dict, evaluation_to_dict, format_trace, is_last_round, next_evaluations,
    result,
)
from offshelf.settings import SCALED_METHODS, Setting


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


def search_plan(config: dict, setting: Setting, num_samples: int, where: str) -> SearchPlan | None:
    """The search that picks ``setting``'s scale (a guided or SMC row of a config with a ``search``
    section: the guidance scale, SMC's potential scale λ), or None. ``num_samples``: the row's reported count, the search's full fidelity."""
    search = config.get("search")
    if search is None or setting.method not in SCALED_METHODS:
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
    reads the result from it (:func:`search_result_record`).

    What it proposes is data: ``settings`` maps each proposed setting's name to its parameters
    (``Setting.to_dict``), ``evaluates`` each proposed evaluation (metrics file stem) to its
    setting's name and sample count. The jobs that sample and evaluate a proposal read them here."""
    trace = _trace_through(plan, previous, metrics)
    proposals = next_evaluations(plan.spec, trace)
    evaluations = [plan.evaluation(s, n) for s, n in proposals]
    return {"search": plan.name, "round": 0 if previous is None else previous["round"] + 1,
            "final": is_last_round(plan.spec, proposals), "spec": plan.to_dict()["spec"],
            "trace": [evaluation_to_dict(e) for e in trace],
            "proposals": [[s, n] for s, n in proposals], "evaluations": evaluations,
            "settings": {plan.at(s).name: plan.at(s).to_dict() for s, _ in proposals},
            "evaluates": {e: {"setting": plan.at(s).name, "num_samples": int(n)}
                          for e, (s, n) in zip(evaluations, proposals)}}


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


def finalists(plan: SearchPlan, final: Mapping[str, Any]) -> dict[str, str]:
    """Evaluation -> setting name of a search's finalists: the final round's evaluations, and the
    full-fidelity ones of earlier rounds (where low fidelity is the full count, the final round
    proposes nothing new), as the records name them."""
    full = final["spec"]["full_fidelity"]
    out = {e: final["evaluates"][e]["setting"] for e in final["evaluations"]}
    for e in final["trace"]:
        if e["num_samples"] == full:
            out.setdefault(plan.evaluation(e["scale"], full), plan.at(e["scale"]).name)
    return out


#: path -> ((mtime_ns, size, inode), record): the round files :func:`read_rounds` has parsed. The
#: workflow's input functions ask for the rounds once per job they expand (thousands of times per
#: DAG); a file whose modification time, size and inode (a round is written to a temporary file
#: renamed into place: a new inode) are unchanged is not read again.
_ROUNDS_READ: dict[Path, tuple[tuple[int, int, int], dict[str, Any]]] = {}


def read_round(path: Path) -> dict[str, Any] | None:
    """One round file's checked record (:func:`check_round`), or None when there is none; parsed
    again only when its (mtime_ns, size, inode) changed since the last read in this process."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    cached = _ROUNDS_READ.get(path)
    if cached is None or cached[0] != key:
        cached = _ROUNDS_READ[path] = (key, check_round(json.loads(path.read_text()), path))
    return cached[1]


@lru_cache(maxsize=None)
def initial_round(plan: SearchPlan) -> dict[str, Any]:
    """Round 0 of a search: the initial scales it proposes, a pure function of its plan. It is never
    a job or a file: round 1 starts from it, and :func:`read_rounds` yields it first. Shared between
    calls: read it, never change it. Never final (``is_last_round``): it proposes at least one
    initial scale (``SearchSpec``), and only the finalists' round or an empty one ends a search."""
    return search_round_record(plan, None, {})


def read_rounds(folder: str | Path, searches: Mapping[str, SearchPlan]) -> Iterator[dict[str, Any]]:
    """The round records of ``searches`` (name -> plan) made so far: each search's round 0
    (:func:`initial_round`), then its files under ``folder`` (``<search>/round<k>.json``, k = 1,
    2... up to the first missing one), lazily: a caller that finds what it wants early reads no
    further. A record is shared between calls (:func:`read_round`): read it, never change it."""
    for search, plan in searches.items():
        yield initial_round(plan)
        k = 1
        while (record := read_round(Path(folder) / search / f"round{k}.json")) is not None:
            yield record
            k += 1


def check_round(record: dict[str, Any], where: str | Path) -> dict[str, Any]:
    """``record``, refused (naming ``where`` and the fix) when it predates round records that carry
    their proposals' settings: delete its search's folder and the rounds are made again."""
    if "settings" not in record or "evaluates" not in record:
        raise ValueError(f"{where}: a search round without 'settings'/'evaluates' (made by an older offshelf); "
                         f"delete {Path(where).parent} to make the search's rounds again")
    return record


def proposed(rounds: Iterable[Mapping[str, Any]], searches: Mapping[str, SearchPlan],
             key: str, name: str) -> tuple[Mapping[str, Any], Any] | None:
    """(record, value) of the first round of one of ``searches`` whose ``key`` (``settings`` or
    ``evaluates``) holds ``name``, or None."""
    for record in rounds:
        if record.get("search") in searches and name in record.get(key, {}):
            return record, record[key][name]
    return None


def lookup_setting(settings: Mapping[str, Setting], searches: Mapping[str, SearchPlan],
                   rounds: Iterable[Mapping[str, Any]], name: str) -> Setting:
    """The setting named ``name``: one of the tables' fixed ``settings``, or one a round of one of
    ``searches`` proposed (its parameters read from the round's record). Anything else is an error
    naming it."""
    if name in settings:
        return settings[name]
    found = proposed(rounds, searches, "settings", name)
    if found is not None:
        setting = Setting.from_dict(found[1])
        if setting.name != name:
            raise ValueError(f"search {found[0]['search']} round {found[0]['round']}: its setting {name!r} "
                             f"has the parameters of {setting.name!r}")
        return setting
    raise ValueError(f"setting {name!r} is neither a table row's setting nor a scale of a searched row "
                     f"(proposed by a round of its search; see the config's 'tables' and 'search')")
