"""The guidance-scale search on known unimodal functions of log(scale): it finds the optimum to
within one final refinement step in log-space, extends past the initial range, reports an optimum
beyond its bounds as on the edge, and counts the samples its trace implies."""

import math
import random

import pytest

from offshelf.search import (
    Evaluation, SearchNotFinished, SearchSpec, canonical_scale, format_trace, is_last_round, max_evaluations,
    max_rounds, next_evaluations, result, run_search, samples_spent,
)

SPEC = SearchSpec(initial=(1.0, 3.0, 10.0), low_fidelity=250, full_fidelity=1000)


def bowl(optimum: float):
    """A unimodal objective of log(scale), minimal at ``optimum``; the same at every fidelity."""
    return lambda scale, n: (math.log(scale) - math.log(optimum)) ** 2


def refined_step(spec: SearchSpec) -> float:
    """The widest log-spacing between neighbouring scales near the best after the refinement rounds:
    the coarse grid's widest spacing (log(10/3) in 1, 3, 10; log(factor) past its edges), halved
    per round, plus the rounding to 3 significant digits."""
    coarse = max([math.log(b / a) for a, b in zip(spec.initial, spec.initial[1:])] + [math.log(spec.factor)])
    return coarse / 2 ** spec.refinements + 1e-2


@pytest.mark.parametrize("optimum", [2.0, 4.0, 5.0])
def test_optimum_inside_the_initial_range(optimum):
    r = run_search(SPEC, bowl(optimum))
    assert r.on_edge is None
    # within half a refined step of the optimum: the best of a grid whose spacing is one refined step
    assert abs(math.log(r.scale) - math.log(optimum)) <= refined_step(SPEC) / 2
    assert all(s >= 1.0 and s <= 10.0 for s in {e.scale for e in r.trace})  # no extension was needed


@pytest.mark.parametrize("optimum, extended", [(40.0, "high"), (0.2, "low")])
def test_optimum_beyond_the_initial_range_extends(optimum, extended):
    r = run_search(SPEC, bowl(optimum))
    scales = {e.scale for e in r.trace}
    assert (max(scales) > 10.0) if extended == "high" else (min(scales) < 1.0)
    assert r.on_edge is None
    assert abs(math.log(r.scale) - math.log(optimum)) <= refined_step(SPEC) / 2


@pytest.mark.parametrize("optimum, edge, reached", [(5000.0, "high", 90.0), (1e-4, "low", 0.111)])
def test_optimum_beyond_the_extensions_is_reported_on_the_edge(optimum, edge, reached):
    r = run_search(SPEC, bowl(optimum))
    assert r.on_edge == edge
    assert r.scale == reached  # two steps of factor 3 past the initial range: 10 * 9, 1 / 9
    scales = {e.scale for e in r.trace}
    steps = {30.0, 90.0} if edge == "high" else {0.333, 0.111}
    assert steps <= scales and min(scales) >= 0.111 and max(scales) <= 90.0  # no third step


def test_bounds_stop_the_extension():
    spec = SearchSpec(initial=(1.0, 3.0, 10.0), low_fidelity=10, full_fidelity=20, bounds=(0.5, 20.0), max_extensions=5)
    r = run_search(spec, bowl(1000.0))
    assert r.on_edge == "high" and r.scale == 20.0
    assert max(e.scale for e in r.trace) == 20.0


def test_samples_spent_counts_every_evaluation():
    r = run_search(SPEC, bowl(4.0))
    low = [e for e in r.trace if e.num_samples == SPEC.low_fidelity]
    full = [e for e in r.trace if e.num_samples == SPEC.full_fidelity]
    assert len(full) == SPEC.finalists and {e.scale for e in full} <= {e.scale for e in low}
    # the finalists are drawn anew in full (the workflow screens inside its rounds)
    assert r.samples_spent == len(low) * SPEC.low_fidelity + len(full) * SPEC.full_fidelity
    assert r.samples_spent == samples_spent(r.trace)
    # 3 initial + 2 midpoints at 250, 2 finalists at 1000: 5 * 250 + 2 * 1000
    assert r.samples_spent == 3250


def test_finalists_are_chosen_on_full_fidelity():
    """Low fidelity prefers 3 (runner-up 1.73), full fidelity prefers 1.5: the row reports 1.73."""
    def objective(scale, n):
        return bowl(3.0)(scale, n) if n == SPEC.low_fidelity else bowl(1.5)(scale, n)
    r = run_search(SPEC, objective)
    full = {e.scale: e.value for e in r.trace if e.num_samples == SPEC.full_fidelity}
    assert r.scale == min(full, key=full.get) and r.value == full[r.scale]
    assert r.scale == 1.73


def test_next_evaluations_is_a_pure_function_of_the_trace():
    objective = bowl(4.0)
    trace = []
    while proposals := next_evaluations(SPEC, trace):
        assert next_evaluations(SPEC, list(trace)) == proposals  # same trace, same proposals
        assert next_evaluations(SPEC, list(reversed(trace))) == proposals  # order does not matter
        # a resumed search (a fresh trace of the same evaluations) proposes the same
        copy = [Evaluation(e.scale, e.num_samples, e.value) for e in trace]
        assert next_evaluations(SPEC, copy) == proposals
        trace += [Evaluation(s, n, objective(s, n)) for s, n in proposals]
    assert result(SPEC, trace) == run_search(SPEC, objective)


def test_partial_trace_is_not_a_result():
    with pytest.raises(SearchNotFinished, match="not finished"):
        result(SPEC, [Evaluation(1.0, 250, 1.0)])


def test_non_finite_values_are_refused():
    with pytest.raises(ValueError, match=r"scale 3 on 250 samples is nan"):
        next_evaluations(SPEC, [Evaluation(1.0, 250, 1.0), Evaluation(3.0, 250, float("nan"))])
    with pytest.raises(ValueError, match="not finite"):
        run_search(SPEC, lambda s, n: math.inf)


def test_foreign_evaluations_are_refused():
    trace = list(run_search(SPEC, bowl(4.0)).trace) + [Evaluation(77.0, 250, 0.0)]
    with pytest.raises(ValueError, match="never proposed"):
        result(SPEC, trace)


def test_scales_are_canonical():
    assert canonical_scale(math.sqrt(30)) == 5.48
    assert canonical_scale(1 / 3) == 0.333
    r = run_search(SPEC, bowl(40.0))
    assert all(e.scale == float(f"{e.scale:.3g}") for e in r.trace)
    assert SearchSpec(initial=(10, 3.0000001, 1), low_fidelity=1, full_fidelity=1).initial == (1.0, 3.0, 10.0)


@pytest.mark.parametrize("bad, key", [
    (dict(initial=()), "search.initial"), (dict(initial=(0.0,)), "finite number > 0"),
    (dict(low_fidelity=2000), "search.low_fidelity"), (dict(factor=1.0), "search.factor"),
    (dict(bounds=(1.0, 0.5)), "search.bounds"), (dict(initial=(5000.0,)), "outside search.bounds"),
    (dict(finalists=0), "search.finalists"),
])
def test_bad_specs_name_the_key(bad, key):
    fields = dict(initial=(1.0, 3.0, 10.0), low_fidelity=250, full_fidelity=1000) | bad
    with pytest.raises(ValueError, match=key):
        SearchSpec(**fields)


def test_format_trace():
    assert format_trace([Evaluation(3.0, 250, 0.912345), Evaluation(10.0, 250, 0.62)]) == "3@250:0.9123 10@250:0.62"


def test_noisy_low_fidelity_still_lands_near_the_optimum():
    """Low-fidelity values carry noise (sd 0.05 on a bowl that rises 1.2 per factor 3); the
    finalists' full-fidelity values are exact. Over seeds, the chosen scale stays within one
    initial grid step (log 3) of the optimum."""
    for seed in range(20):
        rng = random.Random(seed)
        noise = {}

        def objective(scale, n):
            exact = bowl(4.0)(scale, n)
            return exact if n == SPEC.full_fidelity else exact + noise.setdefault(scale, rng.gauss(0, 0.05))
        r = run_search(SPEC, objective)
        assert abs(math.log(r.scale) - math.log(4.0)) <= math.log(3.0)


@pytest.mark.parametrize("spec", [
    SPEC, SearchSpec(initial=(2.0,), low_fidelity=32, full_fidelity=64, max_extensions=1, refinements=0, finalists=1),
    SearchSpec(initial=(1.0, 3.0), low_fidelity=5, full_fidelity=10, max_extensions=3, refinements=2, finalists=3),
])
def test_bounds_on_evaluations_and_rounds_hold_and_are_reached(spec):
    """Over optima from far below to far above the initial range, no search exceeds
    max_evaluations / max_rounds, and the extreme ones reach them; the last round of each is the
    one is_last_round names."""
    low_most, full_most = max_evaluations(spec)
    seen_low, seen_rounds = 0, 0
    for optimum in (1e-3, 0.05, 0.4, 1.5, 2.5, 7.0, 30.0, 1e3):
        objective = bowl(optimum)
        trace, rounds = [], []
        while proposals := next_evaluations(spec, trace):
            rounds.append(proposals)
            trace += [Evaluation(s, n, objective(s, n)) for s, n in proposals]
        assert [is_last_round(spec, p) for p in rounds] == [False] * (len(rounds) - 1) + [True]
        low = [e for e in trace if e.num_samples == spec.low_fidelity]
        assert len(low) <= low_most and len(trace) - len(low) <= full_most and len(rounds) <= max_rounds(spec)
        seen_low, seen_rounds = max(seen_low, len(low)), max(seen_rounds, len(rounds))
    assert seen_low == low_most and seen_rounds == max_rounds(spec)
