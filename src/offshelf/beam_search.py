"""TFG's hyper-parameter beam search, reimplemented from its published description and code.

TFG ("Training-Free Guidance: A Unified Framework", Ye et al., NeurIPS 2024) tunes its guidance
strengths by a beam search over multiplicative ladders. The facts below are read from the
authors' repository, YWolfeee/Training-Free-Guidance, ``searching.py`` (commit f8d17f3); this
module is written from them, not copied:

* every knob has a ladder ``initial, initial·factor, …`` capped at ``maximum`` (``min(value ·
  factor, max)``, ``BeamSearch.generate_candidates``, lines 105–113); the published ladders are
  ρ and μ: 0.25 ×2 up to 8, σ: 0.001 ×10 up to 1 (argparse defaults, lines 207–215);
* round 0 evaluates the initial candidate (every knob at its initial value) and its neighbours
  (``BeamSearch.run``, lines 146–147);
* a *neighbour* of a candidate multiplies exactly one knob by its factor (capped); the members
  propose in rank order, each knob in the order the knobs are listed, and a proposal already
  evaluated or already proposed this round is dropped (lines 105–113; a knob at its maximum
  proposes the member itself, which is already evaluated);
* every round evaluates its candidates on ``beam_sample_size`` = 64 samples, merges them with
  all earlier results and sorts the lot, best first (a stable sort of earlier + new, so ties keep
  the earlier-evaluated candidate first; lines 155–156 and 140); the next round's candidates are
  the neighbours of the top ``topk`` = 2 (line 164); ``max_sweep`` = 6 rounds (lines 149, 193–194);
* afterwards the ``num_large_scale`` best candidates are run at the full sample size (lines
  264–271; the published search scripts set it to 1, ``scripts/searching/gaussian_deblur.sh``).

TFG maximises a metric (``metrics_key``, lines 70–80, a leading ``_`` negates a smaller-is-better
one); here the objective is minimised (FID), which is the same order. Where TFG turns a failed run
into the worst score (line 62), a non-finite value stops the search here: offshelf never ranks a NaN.

Everything here is a pure function of a scoring callable, so the schedule is tested without a
network (tests/unit/test_beam_search.py); :func:`offshelf.tuning.run_tfg_beam` applies it to
offshelf's knobs (docs/tuning.md §8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence


class BeamSearchError(ValueError):
    """Bad beam-search input or a non-finite score; the message names the key or candidate."""


@dataclass(frozen=True)
class Knob:
    """One searched hyper-parameter: ``initial``, then ×``factor`` per step, never above ``maximum``."""

    name: str
    initial: float
    factor: float
    maximum: float

    def __post_init__(self):
        if not (math.isfinite(self.initial) and math.isfinite(self.maximum) and 0 < self.initial <= self.maximum):
            raise BeamSearchError(f"beam knob {self.name!r}: need 0 < initial <= maximum (finite), got "
                                  f"initial={self.initial!r}, maximum={self.maximum!r}")
        if not (math.isfinite(self.factor) and self.factor > 1):
            raise BeamSearchError(f"beam knob {self.name!r}: factor must be a finite number > 1, got {self.factor!r} "
                                  f"(TFG drops a knob whose factor is 1: leave it out instead)")

    def step(self, value: float) -> float:
        return min(value * self.factor, self.maximum)

    def ladder(self) -> list[float]:
        """Every value the knob can take: initial, initial·factor, …, maximum."""
        values = [self.initial]
        while values[-1] < self.maximum:
            values.append(self.step(values[-1]))
        return values


#: TFG's published ladders (searching.py lines 207–215): ρ (the gradient on x_t, through the
#: denoiser), μ (the gradient in x̂0 space) and σ (the implicit-dynamics noise)
TFG_KNOBS = (Knob("rho", 0.25, 2.0, 8.0), Knob("mu", 0.25, 2.0, 8.0), Knob("sigma", 0.001, 10.0, 1.0))

#: one value per knob, in the order of ``BeamSpec.knobs``
Candidate = tuple[float, ...]


@dataclass(frozen=True)
class BeamSpec:
    """TFG's search: ``top_k`` = 2, ``rounds`` = 6, ``samples_per_candidate`` = 64, then the best
    ``finalists`` (1, the published scripts' ``num_large_scale``) at ``full_samples``."""

    knobs: tuple[Knob, ...] = TFG_KNOBS
    top_k: int = 2
    rounds: int = 6
    samples_per_candidate: int = 64
    finalists: int = 1
    full_samples: int = 500

    def __post_init__(self):
        if not self.knobs:
            raise BeamSearchError("beam: at least one knob is needed")
        names = [k.name for k in self.knobs]
        if len(set(names)) != len(names):
            raise BeamSearchError(f"beam: knob names repeat: {names}")
        for key in ("top_k", "rounds", "samples_per_candidate", "finalists", "full_samples"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BeamSearchError(f"beam.{key} must be an integer >= 1, got {value!r}")
        if self.samples_per_candidate > self.full_samples:
            raise BeamSearchError(f"beam.samples_per_candidate = {self.samples_per_candidate} exceeds "
                                  f"beam.full_samples = {self.full_samples}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.knobs)

    def as_dict(self, candidate: Candidate) -> dict[str, float]:
        return dict(zip(self.names, candidate))


def max_candidates(spec: BeamSpec) -> int:
    """The most candidates the screening rounds can evaluate, whatever the scores: round 0's start
    and its one-knob neighbours, then at most ``top_k`` × (knobs) a round, never more than the
    ladders' grid holds. A budget for the rounds divided by this bounds the samples per candidate."""
    grid = math.prod(len(k.ladder()) for k in spec.knobs)
    knobs = len(spec.knobs)
    return min(1 + knobs + (spec.rounds - 1) * spec.top_k * knobs, grid)


def initial_candidate(spec: BeamSpec) -> Candidate:
    return tuple(k.initial for k in spec.knobs)


def neighbours(spec: BeamSpec, members: Sequence[Candidate], evaluated: Sequence[Candidate]) -> list[Candidate]:
    """TFG's ``generate_candidates``: for each member in rank order, for each knob in order, the
    member with that knob stepped once; proposals already ``evaluated`` or already proposed are dropped."""
    seen = set(evaluated)
    proposals: list[Candidate] = []
    for member in members:
        for i, knob in enumerate(spec.knobs):
            proposal = member[:i] + (knob.step(member[i]),) + member[i + 1:]
            if proposal not in seen:
                seen.add(proposal)
                proposals.append(proposal)
    return proposals


@dataclass(frozen=True)
class BeamRound:
    """One round: the candidates it evaluated, and every candidate evaluated so far, best first."""

    index: int
    candidates: tuple[Candidate, ...]
    ranking: tuple[tuple[Candidate, float], ...]

    def beam(self, top_k: int) -> tuple[Candidate, ...]:
        return tuple(c for c, _ in self.ranking[:top_k])


def beam_rounds(spec: BeamSpec, score: Callable[[Candidate], float]) -> list[BeamRound]:
    """The screening rounds: ``score(candidate)`` (lower is better) is called once per candidate,
    in the order the rounds propose them. A round may be empty once every neighbour of the beam has
    been evaluated (TFG runs it anyway, at no cost)."""
    start = initial_candidate(spec)
    candidates = [start] + neighbours(spec, [start], [start])
    ranking: list[tuple[Candidate, float]] = []
    rounds = []
    for index in range(spec.rounds):
        new = []
        for candidate in candidates:
            value = float(score(candidate))
            if not math.isfinite(value):
                raise BeamSearchError(f"beam round {index}: the objective at {spec.as_dict(candidate)} is {value} "
                                      f"(not finite); the search cannot rank it")
            new.append((candidate, value))
        ranking = sorted(ranking + new, key=lambda item: item[1])  # stable: ties keep the earlier-evaluated first
        rounds.append(BeamRound(index, tuple(candidates), tuple(ranking)))
        candidates = neighbours(spec, [c for c, _ in ranking[:spec.top_k]], [c for c, _ in ranking])
    return rounds


@dataclass(frozen=True)
class BeamResult:
    best: Candidate
    value: float  # its objective at full_samples
    rounds: tuple[BeamRound, ...]
    finals: tuple[tuple[Candidate, float], ...]  # the finalists at full_samples, in screening rank order


def run_beam_search(spec: BeamSpec, objective: Callable[[Candidate, int], float]) -> BeamResult:
    """The screening rounds at ``samples_per_candidate``, then the ``finalists`` best at
    ``full_samples``; the best of those wins (ties: the better-screened one)."""
    rounds = beam_rounds(spec, lambda candidate: objective(candidate, spec.samples_per_candidate))
    finals = []
    for candidate, _ in rounds[-1].ranking[:spec.finalists]:
        value = float(objective(candidate, spec.full_samples))
        if not math.isfinite(value):
            raise BeamSearchError(f"beam finalist {spec.as_dict(candidate)}: the objective on {spec.full_samples} "
                                  f"samples is {value} (not finite)")
        finals.append((candidate, value))
    best, value = min(finals, key=lambda item: item[1])
    return BeamResult(best, value, tuple(rounds), tuple(finals))


__all__ = ["BeamSearchError", "Knob", "TFG_KNOBS", "BeamSpec", "Candidate", "max_candidates", "initial_candidate",
           "neighbours",
           "BeamRound", "beam_rounds", "BeamResult", "run_beam_search"]
