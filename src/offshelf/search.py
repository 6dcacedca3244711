"""Guidance-scale search: a log-scale bracketing search with a multi-fidelity schedule.

A guided row's FID is, to a good approximation, a unimodal function of log(scale): too little
guidance leaves class-agnostic samples, too much collapses diversity. The search

1. evaluates the ``initial`` (log-spaced) scales at ``low_fidelity`` samples;
2. *brackets* the minimum: while the best scale sits on an edge of the scales tried so far, it
   steps past that edge by ``factor`` (at most ``max_extensions`` times per side, never beyond
   ``bounds``); a best scale still on the edge afterwards is reported as ``on_edge``;
3. *refines* it: ``refinements`` rounds, each evaluating the log-midpoints between the best scale
   and its neighbours;
4. re-evaluates the ``finalists`` best low-fidelity scales at ``full_fidelity`` samples and
   reports the best of those.

Every step is a pure function of the trace (the evaluations made so far): :func:`next_evaluations`
replays the search over the trace and returns what it needs next, so a search interrupted after
any round resumes from its trace alone (the workflow keeps one JSON file per round).

Low- and full-fidelity evaluations of one scale share their seeds (a full evaluation's first
``low_fidelity`` samples are the low-fidelity ones), so the finalists are compared on the very
samples they were screened on, plus more. ``samples_spent`` counts every evaluation's samples: the
workflow draws a screen inside its search round and a finalist in its own sample jobs, so a
finalist's first ``low_fidelity`` samples are drawn twice (on digits, a process per draw costs more
than the samples it would save). An in-process caller that keeps each scale's samples and only
adds seeds (``offshelf.tuning``) counts what it drew instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

SIGNIFICANT_DIGITS = 3  # scales are rounded to this many significant digits: stable setting names


def canonical_scale(scale: float) -> float:
    """``scale`` rounded to :data:`SIGNIFICANT_DIGITS` significant digits (a log-midpoint such as
    sqrt(3 * 10) = 5.4772... becomes 5.48), so the same scale always gives the same setting name."""
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"a guidance scale must be a finite number > 0, got {scale!r}")
    return float(f"{scale:.{SIGNIFICANT_DIGITS}g}")


@dataclass(frozen=True)
class SearchSpec:
    initial: tuple[float, ...]  # log-spaced starting scales (> 0), e.g. (1.0, 3.0, 10.0)
    low_fidelity: int  # samples per low-fidelity evaluation
    full_fidelity: int  # samples of a finalist's evaluation (the row's reported count)
    factor: float = 3.0  # ratio to step past an edge of the bracket
    max_extensions: int = 2  # steps past an edge before the row says its optimum is on the edge
    refinements: int = 1  # log-midpoint refinement rounds once the minimum is bracketed
    finalists: int = 2  # best low-fidelity scales re-evaluated at full fidelity
    bounds: tuple[float, float] = (1e-3, 1e3)

    def __post_init__(self):
        low, high = (float(b) for b in self.bounds)
        if not (0 < low < high and math.isfinite(high)):
            raise ValueError(f"search.bounds must be two finite numbers 0 < low < high, got {self.bounds!r}")
        if not self.initial:
            raise ValueError("search.initial: at least one starting scale is needed")
        initial = tuple(sorted({canonical_scale(float(s)) for s in self.initial}))
        outside = [s for s in initial if not low <= s <= high]
        if outside:
            raise ValueError(f"search.initial: scales {outside} lie outside search.bounds = [{low:g}, {high:g}]")
        for key in ("low_fidelity", "full_fidelity", "finalists"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"search.{key} must be an integer >= 1, got {getattr(self, key)!r}")
        for key in ("max_extensions", "refinements"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 0:
                raise ValueError(f"search.{key} must be an integer >= 0, got {getattr(self, key)!r}")
        if self.low_fidelity > self.full_fidelity:
            raise ValueError(f"search.low_fidelity = {self.low_fidelity} exceeds search.full_fidelity = "
                             f"{self.full_fidelity}: a low-fidelity evaluation draws fewer samples than a full one")
        if not (math.isfinite(self.factor) and self.factor > 1):
            raise ValueError(f"search.factor must be a finite number > 1, got {self.factor!r}")
        object.__setattr__(self, "initial", initial)
        object.__setattr__(self, "bounds", (low, high))
        object.__setattr__(self, "factor", float(self.factor))


@dataclass(frozen=True)
class Evaluation:
    scale: float
    num_samples: int
    value: float  # the objective (FID), lower is better


@dataclass(frozen=True)
class SearchResult:
    scale: float
    value: float
    on_edge: str | None  # "low"/"high" if the optimum sits on the searched range's edge after all extensions
    trace: tuple[Evaluation, ...]
    samples_spent: int  # samples drawn, each scale counted once (its low-fidelity samples are reused)


class SearchNotFinished(ValueError):
    """:func:`result` was asked for before the search had evaluated everything it needs."""


def _lookup(trace: Sequence[Evaluation]) -> dict[tuple[float, int], float]:
    values: dict[tuple[float, int], float] = {}
    for e in trace:
        key = (canonical_scale(e.scale), int(e.num_samples))
        value = float(e.value)
        if not math.isfinite(value):
            raise ValueError(f"search: the objective at scale {e.scale:g} on {e.num_samples} samples is {value} "
                             f"(not finite); the search cannot rank it")
        if key in values and values[key] != value:
            raise ValueError(f"search: scale {e.scale:g} on {e.num_samples} samples appears twice in the trace "
                             f"with different values ({values[key]} and {value})")
        values[key] = value
    return values


def _best(low: dict[float, float]) -> float:
    return min(low, key=lambda s: (low[s], s))  # ties go to the smaller scale: deterministic


def _replay(spec: SearchSpec, values: dict[tuple[float, int], float]) -> tuple[list[tuple[float, int]], list[tuple[float, int]]]:
    """Run the search over the known ``values``: (the evaluations it made, in order; the ones it
    needs next, [] when done). The search only ever sees values it asked for."""
    done: list[tuple[float, int]] = []
    low: dict[float, float] = {}  # scale -> low-fidelity value, for the evaluations made so far

    def ask(proposals: list[tuple[float, int]]) -> list[tuple[float, int]]:
        """Make ``proposals`` if all are known; else return the missing ones."""
        proposals = list(dict.fromkeys(p for p in proposals if p not in done))
        missing = [p for p in proposals if p not in values]
        if missing:
            return missing
        for p in proposals:
            done.append(p)
            if p[1] == spec.low_fidelity:
                low[p[0]] = values[p]
        return []

    missing = ask([(s, spec.low_fidelity) for s in spec.initial])
    if missing:
        return done, missing
    lowest, highest = spec.initial[0], spec.initial[-1]
    while True:  # bracket: step past an edge while the best scale sits on it
        best, tried = _best(low), sorted(low)
        proposals = []
        if best == tried[0] and sum(s < lowest for s in low) < spec.max_extensions:
            step = canonical_scale(max(best / spec.factor, spec.bounds[0]))
            if step < best:
                proposals.append((step, spec.low_fidelity))
        if best == tried[-1] and sum(s > highest for s in low) < spec.max_extensions:
            step = canonical_scale(min(best * spec.factor, spec.bounds[1]))
            if step > best:
                proposals.append((step, spec.low_fidelity))
        if not proposals:
            break
        missing = ask(proposals)
        if missing:
            return done, missing
    for _ in range(spec.refinements):  # refine: log-midpoints between the best and its neighbours
        best, tried = _best(low), sorted(low)
        i = tried.index(best)
        neighbours = tried[max(i - 1, 0):i] + tried[i + 1:i + 2]
        proposals = [(canonical_scale(math.sqrt(best * n)), spec.low_fidelity) for n in neighbours]
        proposals = [p for p in proposals if p[0] not in low]  # rounding may land on a tried scale
        missing = ask(proposals)
        if missing:
            return done, missing
    ranked = sorted(low, key=lambda s: (low[s], s))
    missing = ask([(s, spec.full_fidelity) for s in ranked[:spec.finalists]])
    return done, missing


def next_evaluations(spec: SearchSpec, trace: Sequence[Evaluation]) -> list[tuple[float, int]]:
    """The (scale, num_samples) evaluations the search needs next, [] when it is done. A pure
    function of the trace (its order does not matter): every round is resumable."""
    return _replay(spec, _lookup(trace))[1]


def samples_spent(trace: Sequence[Evaluation]) -> int:
    """Samples drawn for ``trace``: every evaluation's own (a finalist's full-fidelity evaluation
    draws its samples anew, see the module's docstring)."""
    return sum(int(e.num_samples) for e in trace)


def result(spec: SearchSpec, trace: Sequence[Evaluation]) -> SearchResult:
    """The finished search's answer: the finalist with the lowest full-fidelity value. Raises
    :class:`SearchNotFinished` while :func:`next_evaluations` still proposes evaluations, and a
    ValueError for evaluations in the trace the search never asked for (a trace of another spec)."""
    values = _lookup(trace)
    done, missing = _replay(spec, values)
    if missing:
        raise SearchNotFinished(f"search not finished: it still needs (scale, samples) {missing}")
    extra = sorted(set(values) - set(done))
    if extra:
        raise ValueError(f"search: the trace holds evaluations (scale, samples) {extra} this search never "
                         f"proposed; it belongs to a search with another spec")
    full = {s: values[(s, n)] for s, n in done if n == spec.full_fidelity}
    chosen = _best(full)
    searched = sorted({s for s, _ in done})
    on_edge = "low" if chosen == searched[0] else "high" if chosen == searched[-1] else None
    ordered = tuple(Evaluation(s, n, values[(s, n)]) for s, n in done)
    return SearchResult(chosen, full[chosen], on_edge, ordered, samples_spent(ordered))


def run_search(spec: SearchSpec, evaluate: Callable[[float, int], float]) -> SearchResult:
    """Run the whole search in-process: ``evaluate(scale, num_samples)`` returns the objective."""
    trace: list[Evaluation] = []
    while proposals := next_evaluations(spec, trace):
        trace.extend(Evaluation(s, n, float(evaluate(s, n))) for s, n in proposals)
    return result(spec, trace)


def is_last_round(spec: SearchSpec, proposals: Sequence[tuple[float, int]]) -> bool:
    """Whether the search is done once ``proposals`` (one round's) are evaluated, whatever their
    values: the finalists' full-fidelity round is always the last (or nothing is left to propose)."""
    return not proposals or (spec.low_fidelity < spec.full_fidelity
                             and all(n == spec.full_fidelity for _, n in proposals))


def max_evaluations(spec: SearchSpec) -> tuple[int, int]:
    """At most how many (low-fidelity, full-fidelity) evaluations a search makes: the initial
    scales, ``max_extensions`` steps past one edge (the bracket never turns: a step that does not
    improve leaves the best inside; a single initial scale steps both ways once), two midpoints
    per refinement round, and the finalists. For job-count and cost bounds before a search runs."""
    both_ways = 1 if len(spec.initial) == 1 and spec.max_extensions else 0
    low = len(spec.initial) + spec.max_extensions + both_ways + 2 * spec.refinements
    return low, min(spec.finalists, low)


def max_rounds(spec: SearchSpec) -> int:
    """At most how many rounds of proposals a search makes: the initial scales, the steps past an
    edge, the refinements and the finalists."""
    return 1 + spec.max_extensions + spec.refinements + 1


def format_trace(trace: Sequence[Evaluation]) -> str:
    """The trace on one line for a CSV cell: ``scale@samples:value`` per evaluation, in order."""
    return " ".join(f"{e.scale:g}@{e.num_samples}:{e.value:.4g}" for e in trace)


def evaluation_to_dict(e: Evaluation) -> dict:
    return {"scale": e.scale, "num_samples": e.num_samples, "value": e.value}


def evaluation_from_dict(d: dict) -> Evaluation:
    return Evaluation(float(d["scale"]), int(d["num_samples"]), float(d["value"]))
