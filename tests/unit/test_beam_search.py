"""TFG's beam search (offshelf.beam_search): the candidate schedule equals the published one, written
out by hand from the description in TFG's searching.py (see the module docstring for its lines)."""

import math

import pytest

from offshelf.beam_search import (TFG_KNOBS, BeamSearchError, BeamSpec, Knob, beam_rounds, max_candidates,
                                  neighbours, run_beam_search)

RHO = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
MU = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
SIGMA = [0.001, 0.01, 0.1, 1.0]


def ladder_score(candidate):
    """A bowl with its minimum at ρ = 2, μ = 1, σ = 0.1, in ladder steps, each knob weighted
    differently so no two candidates on a round's path tie: a·|steps from 2| + ..."""
    rho, mu, sigma = candidate
    return (1.0 * abs(math.log2(rho / 2.0)) + 1.1 * abs(math.log2(mu / 1.0))
            + 1.3 * abs(round(math.log10(sigma / 0.1))))


def at(i, j, k):
    """The candidate i steps up ρ's ladder, j up μ's, k up σ's."""
    return (RHO[i], MU[j], SIGMA[k])


def test_published_ladders():
    assert [k.name for k in TFG_KNOBS] == ["rho", "mu", "sigma"]
    assert [k.ladder() for k in TFG_KNOBS] == [RHO, MU, SIGMA]
    spec = BeamSpec()
    assert (spec.top_k, spec.rounds, spec.samples_per_candidate, spec.finalists) == (2, 6, 64, 1)


def test_candidate_schedule_equals_the_published_rule_by_hand():
    """Round 0: the initial candidate and its one-knob neighbours; every later round: the
    neighbours of the top 2 of everything evaluated so far, member by member (best first), knob by
    knob (ρ, μ, σ), dropping any already evaluated or already proposed. Scores by hand (a = 1,
    b = 1.1, c = 1.3 per step from the minimum at indices (3, 2, 2)):"""
    expected = [
        # round 0: (0,0,0) 7.8, (1,0,0) 6.8, (0,1,0) 6.7, (0,0,1) 6.5 -> beam (0,0,1), (0,1,0)
        [at(0, 0, 0), at(1, 0, 0), at(0, 1, 0), at(0, 0, 1)],
        # round 1: from (0,0,1): ρ, μ, σ up; from (0,1,0): ρ, μ up (σ up = (0,1,1), already proposed)
        # scores 5.5, 5.4, 5.2, 5.7, 5.6 -> beam (0,0,2) 5.2, (0,1,1) 5.4
        [at(1, 0, 1), at(0, 1, 1), at(0, 0, 2), at(1, 1, 0), at(0, 2, 0)],
        # round 2: from (0,0,2); from (0,1,1) ((0,1,2) again: dropped)
        # scores 4.2, 4.1, 6.5, 4.4, 4.3 -> beam (0,1,2) 4.1, (1,0,2) 4.2
        [at(1, 0, 2), at(0, 1, 2), at(0, 0, 3), at(1, 1, 1), at(0, 2, 1)],
        # round 3: from (0,1,2); from (1,0,2) ((1,1,2) again: dropped)
        # scores 3.1, 3.0, 5.4, 3.2, 5.5 -> beam (0,2,2) 3.0, (1,1,2) 3.1
        [at(1, 1, 2), at(0, 2, 2), at(0, 1, 3), at(2, 0, 2), at(1, 0, 3)],
        # round 4: from (0,2,2); from (1,1,2) ((1,2,2) again: dropped)
        # scores 2.0, 4.1, 4.3, 2.1, 4.4 -> beam (1,2,2) 2.0, (2,1,2) 2.1
        [at(1, 2, 2), at(0, 3, 2), at(0, 2, 3), at(2, 1, 2), at(1, 1, 3)],
        # round 5: from (1,2,2); from (2,1,2) ((2,2,2) again: dropped)
        # scores 1.0, 3.1, 3.3, 1.1, 3.4 -> best (2,2,2) 1.0, then (3,1,2) 1.1
        [at(2, 2, 2), at(1, 3, 2), at(1, 2, 3), at(3, 1, 2), at(2, 1, 3)],
    ]
    rounds = beam_rounds(BeamSpec(), ladder_score)
    assert [list(r.candidates) for r in rounds] == expected
    beams = [r.beam(2) for r in rounds]
    assert beams == [(at(0, 0, 1), at(0, 1, 0)), (at(0, 0, 2), at(0, 1, 1)), (at(0, 1, 2), at(1, 0, 2)),
                     (at(0, 2, 2), at(1, 1, 2)), (at(1, 2, 2), at(2, 1, 2)), (at(2, 2, 2), at(3, 1, 2))]
    # six rounds stop one step short of the minimum (3, 2, 2): 29 candidates screened
    assert len(rounds[-1].ranking) == 29 and at(3, 2, 2) not in [c for c, _ in rounds[-1].ranking]


def test_max_candidates_bounds_every_schedule():
    """TFG's three knobs: 4 in round 0, then at most 2 members × 3 knobs in each of 5 rounds = 34
    (the hand schedule above screens 29); σ alone: its 4-rung ladder; ρ × σ: 3 + 5 × 4 = 23 of 24."""
    assert max_candidates(BeamSpec()) == 34
    assert max_candidates(BeamSpec(knobs=(TFG_KNOBS[2],))) == 4
    assert max_candidates(BeamSpec(knobs=(TFG_KNOBS[0], TFG_KNOBS[2]))) == 23
    for score in (ladder_score, lambda c: 0.0, lambda c: -sum(c), lambda c: sum(c)):
        assert len(beam_rounds(BeamSpec(), score)[-1].ranking) <= 34


def test_a_knob_at_its_maximum_proposes_nothing_and_rounds_run_empty():
    """σ alone, larger is better: 0.001 and 0.01; then 0.1; then 1; then σ = 1 (capped) and 0.1
    propose only candidates already evaluated, so rounds 3–5 are empty."""
    spec = BeamSpec(knobs=(Knob("sigma", 0.001, 10.0, 1.0),))
    rounds = beam_rounds(spec, lambda c: -c[0])
    assert [list(r.candidates) for r in rounds] == [[(0.001,), (0.01,)], [(0.1,)], [(1.0,)], [], [], []]
    assert rounds[-1].beam(2) == ((1.0,), (0.1,))
    # a ladder whose last step overshoots is capped at the maximum: 0.25 × 2 × 2 × 2 = 2 > 1.5
    assert Knob("mu", 0.25, 2.0, 1.5).ladder() == [0.25, 0.5, 1.0, 1.5]


def test_ties_keep_the_earlier_evaluated_candidate_first():
    """TFG sorts earlier results + new ones with a stable sort: on a flat objective the beam stays
    on the first two candidates ever evaluated."""
    rounds = beam_rounds(BeamSpec(), lambda c: 0.0)
    assert rounds[0].beam(2) == (at(0, 0, 0), at(1, 0, 0))
    assert all(r.beam(2) == (at(0, 0, 0), at(1, 0, 0)) for r in rounds)
    # (0,0,0)'s neighbours are all evaluated; (1,0,0) steps ρ, μ, σ in that order
    assert rounds[1].candidates == (at(2, 0, 0), at(1, 1, 0), at(1, 0, 1))
    assert neighbours(BeamSpec(), [at(0, 0, 0)], []) == [at(1, 0, 0), at(0, 1, 0), at(0, 0, 1)]


def test_finalists_run_at_full_size_and_the_best_of_them_wins():
    calls = []

    def objective(candidate, n):
        calls.append((candidate, n))
        screened = ladder_score(candidate)
        # at full size the second-screened candidate turns out better: the finals decide
        return screened if n == 64 else (0.5 if candidate == at(3, 1, 2) else 0.9)

    result = run_beam_search(BeamSpec(finalists=2, full_samples=256), objective)
    assert [n for _, n in calls] == [64] * 29 + [256, 256]
    assert [c for c, _ in result.finals] == [at(2, 2, 2), at(3, 1, 2)]
    assert result.best == at(3, 1, 2) and result.value == 0.5


def test_a_non_finite_score_stops_the_search_naming_the_candidate():
    with pytest.raises(BeamSearchError, match=r"round 0: the objective at \{'rho': 0.5, 'mu': 0.25, 'sigma': 0.001\} "
                                              r"is nan"):
        beam_rounds(BeamSpec(), lambda c: math.nan if c == at(1, 0, 0) else 1.0)


@pytest.mark.parametrize("make, key", [
    (lambda: Knob("rho", 0.25, 1.0, 8.0), "factor must be a finite number > 1"),
    (lambda: Knob("rho", 0.0, 2.0, 8.0), "need 0 < initial <= maximum"),
    (lambda: Knob("rho", 16.0, 2.0, 8.0), "need 0 < initial <= maximum"),
    (lambda: BeamSpec(top_k=0), "beam.top_k"),
    (lambda: BeamSpec(samples_per_candidate=600, full_samples=500), "beam.samples_per_candidate"),
    (lambda: BeamSpec(knobs=()), "at least one knob"),
])
def test_bad_beam_input_names_the_key(make, key):
    with pytest.raises(BeamSearchError, match=key):
        make()


# ----------------------------------------------------------------------------
# on offshelf's knobs: `offshelf tune --method tfg-beam`

def test_tfg_beam_on_digits_maps_the_knobs_and_counts_its_samples(tmp_path):
    """run_tfg_beam on toy digits networks: the trace's rounds are the schedule beam_rounds gives
    for the FIDs it recorded, each candidate is the setting the knob map says (s from μ's ladder,
    β = 1/width from σ's, τ1 = τ2 = 1, γ = 0), and its cost is the samples it drew × steps."""
    import pandas as pd
    import yaml

    from conftest import train_tiny_digits
    from offshelf.backends.digits import DigitsBackend
    from offshelf.beam_search import BeamSpec
    from offshelf.tuning import TuneSpec, beam_knobs, run_tfg_beam

    files = train_tiny_digits(tmp_path, steps=5, batch_size=16)
    backend = DigitsBackend()
    guiding = {role: files[role] for role in ("denoiser", "offshelf", "finetuned")}
    sampling = {"respacing": "4", "variance": "fixed_large"}
    models = backend.load(guiding, sampling)
    spec = TuneSpec(regime="uncond", search={"full_fidelity": 12, "low_fidelity": 8})
    summary = run_tfg_beam(backend, models, spec, tmp_path / "beam", guiding, {"evaluator": files["evaluator"]},
                           sampling=sampling, batch_size=16, beam={"rounds": 2, "samples_per_candidate": 8})
    knobs, dropped = beam_knobs(backend, spec)
    assert [k.name for k in knobs] == ["scale", "softplus_width"] and dropped == {}
    assert [k.ladder() for k in knobs] == [[0.25, 0.5, 1.0, 2.0, 4.0, 8.0], [0.001, 0.01, 0.1, 1.0]]

    trace = pd.read_csv(tmp_path / "beam" / "beam_trace.csv")
    screened = trace[trace["round"] != "final"]
    fids = {(row.scale, row.softplus_width): row.fid for row in screened.itertuples()}
    replay = beam_rounds(BeamSpec(knobs=knobs, rounds=2), lambda c: fids[c])
    assert [list(r.candidates) for r in replay] == [
        [tuple(x) for x in screened[screened["round"].astype(str) == str(i)][["scale", "softplus_width"]].values]
        for i in range(2)]
    assert [list(r.candidates)[:3] for r in replay][0] == [(0.25, 0.001), (0.5, 0.001), (0.25, 0.01)]
    final = trace[trace["round"] == "final"]
    assert len(final) == 1 and int(final["num_samples"].iloc[0]) == 12
    assert tuple(final[["scale", "softplus_width"]].values[0]) == replay[-1].ranking[0][0]

    base = yaml.safe_load((tmp_path / "beam" / "tuned.yaml").read_text())["tfg_beam_offshelf_uncond"]
    scale, width = replay[-1].ranking[0][0]
    assert base == {"method": "guided", "classifier": "offshelf", "input": "x0", "softplus_beta": 1.0 / width,
                    "joint_temperature": 1.0, "marginal_temperature": 1.0, "sine_factor": 0.0, "scale": scale}
    # every candidate drew 8 samples once; the finalist 4 more seeds on top of its screen
    assert summary["samples"] == 8 * len(screened) + 4 and summary["denoiser_evaluations"] == summary["samples"] * 4
    assert summary["candidates_per_round"] == [3, len(replay[1].candidates)]


def test_tfg_beam_drops_the_softplus_width_of_a_family_without_relu():
    from offshelf.backends.digits import DigitsBackend
    from offshelf.tuning import TuneSpec, beam_knobs

    knobs, dropped = beam_knobs(DigitsBackend(), TuneSpec(regime="uncond", network="vit", softplus_betas=(math.inf,)))
    assert [k.name for k in knobs] == ["scale"] and list(dropped) == ["softplus_width"]


def test_unknown_beam_key_names_it():
    from offshelf.tuning import TuneError, TuneSpec, beam_spec

    with pytest.raises(TuneError, match=r"unknown beam key\(s\) \['beams'\]"):
        beam_spec(TuneSpec(), TFG_KNOBS, {"beams": 3})
    with pytest.raises(TuneError, match="beam.rounds must be an integer >= 1"):
        beam_spec(TuneSpec(), TFG_KNOBS, {"rounds": 0})


def test_beam_keys_without_the_beam_method_are_one_line(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "offshelf.cli", "tune", "--backend", "digits", "--beam", "rounds=2",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--beam" in proc.stderr and "only --method tfg-beam takes beam keys" in proc.stderr
    assert "Traceback" not in proc.stderr
