"""``offshelf tune``: calibrate the off-the-shelf classifier, then choose the guidance scale
(docs/tuning.md).

Stage 1 (no sampling). Held-out real images x0 are noised to every respaced step k with
q(x_k | x0) and denoised once by the backbone to x̂0, exactly as Algorithm 1's step computes it
(:meth:`GaussianDiffusion.q_sample`, the sampler's own network call and
:meth:`GaussianDiffusion.p_mean_variance`). Every Softplus(β) variant of the classifier gives
logits f on the input guidance would see (x̂0 or x_k). For every marginal temperature τ2 the
predictive distribution ``softmax(τ2·f)`` is scored per step by ECE and NLL, and each β gets the
τ2 of smallest integral (mean over steps) of one of them. Why ``softmax(τ2·f)`` is the
distribution that Eq. 4's τ2 calibrates: docs/tuning.md §1. β is chosen by calibration along the
trajectories each β guides, against what the evaluation network sees in their x̂0
(:func:`guided_calibration`, docs/tuning.md §2), or by the held-out criterion too.

Stage 2 (little sampling). The scale of that setting is chosen by a multi-fidelity search
(:mod:`offshelf.search`) whose objective is the FID of a few samples, judged by the backend's
evaluation network, which must not be a guiding network.

Everything here is a function of a denoiser, a diffusion and classifiers, so it runs without
Snakemake; :func:`run_tune` is what ``offshelf tune`` and the workflow's ``tune`` rule call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from offshelf.extras import needs

needs(__name__, "pandas")  # offshelf[workflow]
import pandas as pd
import torch

from offshelf.calibration import expected_calibration_error
from offshelf.settings import Setting, fmt

CRITERIA = ("nll", "ece")
#: the integrals table's column each criterion minimises
CRITERION_COLUMNS = {"nll": "integral_nll", "ece": "integral_ece"}
#: who picks β: calibration along the trajectories each β guides, judged by the evaluation network
#: (docs/tuning.md §2), or Stage 1's held-out criterion alone
BETA_CHOICES = ("guided", "unguided")
#: the noise-aware baselines are not off-the-shelf classifiers: Softplus and τ2 are not theirs to tune
NOT_TUNABLE = ("finetuned", "combined")
#: per (β, step), fewer images than this give an ECE dominated by binning noise
MIN_HELD_OUT = 20
#: far from sampling (0…), calibration (10,000,000…) and every other stage's seeds
NOISE_SEED_OFFSET = 30_000_000
SEARCH_SEED_OFFSET = 40_000_000
GUIDED_SEED_OFFSET = 50_000_000


class TuneError(ValueError):
    """Bad tuning input; the message names the key or argument."""


# --------------------------------------------------------------------------- the spec

@dataclass(frozen=True)
class TuneSpec:
    """What to tune and how (the config's ``tune`` section; defaults in docs/tuning.md).

    ``softplus_betas`` (inf = ReLU) × ``marginal_temperatures``: Stage 1's grid; ``criterion``: the
    integral NLL or ECE picks τ2 (and β, with ``beta_choice: unguided``); ``num_images``: held-out
    real images (each seen at every step); ``beta_choice: guided`` picks β instead by the integral
    ECE of each β (at its own τ2) along ``guided_samples`` trajectories it guides at
    ``guided_scale``, judged by the evaluation network (docs/tuning.md §2); ``sine_factor``: γ, not
    derived from calibration (§3); ``search``: Stage 2's :class:`offshelf.search.SearchSpec` keys."""

    classifier: str = "offshelf"
    network: str = ""  # the classifier family (Setting.network; "" = the backend's default)
    regime: str = "uncond"
    input: str = "x0"
    softplus_betas: tuple[float, ...] = (math.inf, 8.0, 5.0, 4.0, 3.0, 2.0)
    marginal_temperatures: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0)
    criterion: str = "nll"
    beta_choice: str = "guided"
    guided_scale: float = 3.0
    guided_samples: int = 200
    num_images: int = 300
    num_bins: int = 15
    sine_factor: float = 0.3
    batch_size: int = 256
    search: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.classifier in NOT_TUNABLE:
            raise TuneError(f"tune.classifier = {self.classifier!r}: the noise-aware baselines ({', '.join(NOT_TUNABLE)}) "
                            f"have no Softplus or temperature to tune; name an off-the-shelf classifier")
        try:
            Setting(classifier=self.classifier, input=self.input, regime=self.regime, network=self.network)
        except ValueError as err:
            raise TuneError(f"tune: {err}") from None
        for key in ("softplus_betas", "marginal_temperatures"):
            values = getattr(self, key)
            if len(values) == 0:
                raise TuneError(f"tune.{key} is empty; give at least one value")
            bad = [v for v in values if not (isinstance(v, (int, float)) and float(v) > 0) or math.isnan(float(v))]
            if bad:
                raise TuneError(f"tune.{key} = {list(values)}: every value must be > 0 (inf for ReLU in softplus_betas); "
                                f"got {bad}")
        if any(math.isinf(float(t)) for t in self.marginal_temperatures):
            raise TuneError("tune.marginal_temperatures must be finite")
        if self.criterion not in CRITERIA:
            raise TuneError(f"tune.criterion = {self.criterion!r}; expected one of {', '.join(CRITERIA)}")
        if self.beta_choice not in BETA_CHOICES:
            raise TuneError(f"tune.beta_choice = {self.beta_choice!r}; expected one of {', '.join(BETA_CHOICES)}")
        if not (isinstance(self.guided_scale, (int, float)) and 0 < float(self.guided_scale) < math.inf):
            raise TuneError(f"tune.guided_scale must be a finite number > 0, got {self.guided_scale!r}")
        if not isinstance(self.guided_samples, int) or self.guided_samples < MIN_HELD_OUT:
            raise TuneError(f"tune.guided_samples = {self.guided_samples!r}: at least {MIN_HELD_OUT} guided "
                            f"trajectories are needed for a per-step ECE")
        if self.num_images < MIN_HELD_OUT:
            raise TuneError(f"tune.num_images = {self.num_images}: at least {MIN_HELD_OUT} held-out images are needed "
                            f"for a per-step ECE")
        if not self.sine_factor >= 0:
            raise TuneError(f"tune.sine_factor must be >= 0, got {self.sine_factor}")
        if self.batch_size < 1 or self.num_bins < 1:
            raise TuneError("tune.batch_size and tune.num_bins must be >= 1")

    def to_config(self) -> dict[str, Any]:
        """The spec as config values (inf as "inf"): a job param, so a changed key reruns the job."""
        values = {k: getattr(self, k) for k in self.__dataclass_fields__}
        values["softplus_betas"] = ["inf" if math.isinf(b) else float(b) for b in self.softplus_betas]
        values["marginal_temperatures"] = [float(t) for t in self.marginal_temperatures]
        values["search"] = dict(self.search)
        return values

    @property
    def folder(self) -> str:
        """Output folder name under ``<experiment>/tune``: the classifier and regime tuned."""
        return f"{self.classifier}{'_' + self.network if self.network else ''}_{self.regime}"

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None, **overrides) -> "TuneSpec":
        values = dict(section or {})
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise TuneError(f"unknown tune key(s) {unknown}; allowed: {', '.join(sorted(known))}")
        for key in ("softplus_betas", "marginal_temperatures"):
            if key in values:
                values[key] = tuple(math.inf if v in ("inf", "relu") else v for v in values[key])
        return cls(**values)


# --------------------------------------------------------------------------- Stage 1

@dataclass
class DenoisedStep:
    """One respaced step k of held-out images: x_k ~ q(x_k | x0), the denoiser's x̂0, its timestep."""

    step: int
    x_t: torch.Tensor
    pred_xstart: torch.Tensor
    t: torch.Tensor


def denoised_steps(denoiser, diffusion, images: torch.Tensor, seeds: Sequence[int], y: torch.Tensor | None = None,
                   clip_denoised: bool = True) -> Iterator[DenoisedStep]:
    """x_k = √ᾱ_k·x0 + √(1−ᾱ_k)·ε for every spaced step k = T−1 … 0 (one ε per image and step, from
    the image's seed), and x̂0 as Algorithm 1's step computes it: the sampler's network call
    (``y``: the class condition, None for the unconditional regime) and
    :meth:`~offshelf.diffusion.GaussianDiffusion.p_mean_variance` (clamped x̂0)."""
    from offshelf.samplers.ddpm import model_output
    from offshelf.seeding import StackedRandomGenerator

    rng = StackedRandomGenerator(seeds, images.device)
    for k in range(diffusion.num_steps - 1, -1, -1):
        noise = rng.randn_like(images)
        x_t = diffusion.q_sample(images, torch.full((len(images),), k, dtype=torch.long, device=images.device), noise)
        with torch.no_grad():
            output = model_output(denoiser, diffusion, x_t, k, y)
            out = diffusion.p_mean_variance(output, x_t, k, clip_denoised)
        yield DenoisedStep(k, x_t, out.pred_xstart, diffusion.model_timesteps(k, len(images), images.device))


@torch.no_grad()
def step_logits(steps: Iterator[DenoisedStep], classifiers: Mapping[Any, Any]) -> dict[Any, dict[int, np.ndarray]]:
    """classifier key -> step -> logits [n, K] (float64) on the input each guidance object selects
    (``select_input``: x̂0 or x_k; ``logits``: its adapter and network), as the sampler would feed it."""
    out: dict[Any, dict[int, np.ndarray]] = {key: {} for key in classifiers}
    for s in steps:
        for key, g in classifiers.items():
            logits = g.logits(g.select_input(s.x_t, s.pred_xstart), s.t)
            out[key][s.step] = logits.double().cpu().numpy()
    return out


def temperature_scores(logits: np.ndarray, labels: np.ndarray, temperature: float, num_bins: int = 15) -> dict:
    """ECE and NLL of ``softmax(τ·f)`` against the true labels (accuracy does not depend on τ > 0)."""
    z = temperature * np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    labels = np.asarray(labels, np.int64)
    confidence = np.exp(log_probs.max(axis=1))
    correct = log_probs.argmax(axis=1) == labels
    return {"ece": expected_calibration_error(confidence, correct, num_bins),
            "nll": float(-log_probs[np.arange(len(labels)), labels].mean()),
            "accuracy": float(correct.mean()), "confidence": float(confidence.mean())}


def nll_optimal_temperature(logits: np.ndarray, labels: np.ndarray, low: float = 1e-3, high: float = 100.0) -> float:
    """argmin_τ NLL of softmax(τ·f): the NLL is convex in τ, so a bounded scalar search finds it.
    When every prediction is right the NLL falls all the way to τ → ∞: inf (no finite optimum)."""
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels, np.int64)
    logits = np.asarray(logits, np.float64)
    if (logits.argmax(axis=1) == labels).all():
        return math.inf

    def nll(log_tau):
        z = math.exp(log_tau) * logits
        z = z - z.max(axis=1, keepdims=True)
        return float((np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(labels)), labels]).mean())

    res = minimize_scalar(nll, bounds=(math.log(low), math.log(high)), method="bounded", options={"xatol": 1e-6})
    return float(math.exp(res.x))


def calibration_curves(logits: Mapping[float, Mapping[int, np.ndarray]], labels: np.ndarray,
                       temperatures: Sequence[float], num_steps: int, num_bins: int = 15) -> pd.DataFrame:
    """One row per (β, τ2, step): ece, nll, accuracy, confidence, and t = step/T (1 = pure noise)."""
    rows = []
    for beta, per_step in logits.items():
        for step in sorted(per_step, reverse=True):
            for tau in temperatures:
                scores = temperature_scores(per_step[step], labels, float(tau), num_bins)
                rows.append(dict(softplus_beta=float(beta), marginal_temperature=float(tau), step=step,
                                 t=step / num_steps, **scores))
    return pd.DataFrame(rows)


def integral_scores(curves: pd.DataFrame) -> pd.DataFrame:
    """Per (β, τ2): the integral calibration error (Eq. 1, mean ECE over steps) and the mean NLL."""
    table = (curves.groupby(["softplus_beta", "marginal_temperature"], sort=True)
             .agg(integral_ece=("ece", "mean"), integral_nll=("nll", "mean"), accuracy=("accuracy", "mean"))
             .reset_index())
    return table


def choose(integrals: pd.DataFrame, criterion: str) -> dict[str, float]:
    """The grid point with the smallest integral ``criterion``; ties go to the first in grid order."""
    column = CRITERION_COLUMNS[criterion]
    best = integrals.loc[integrals[column].idxmin()]
    edges = {key: ("low" if best[key] == integrals[key].min() else "high" if best[key] == integrals[key].max() else None)
             for key in ("softplus_beta", "marginal_temperature")}
    return {"softplus_beta": float(best["softplus_beta"]), "marginal_temperature": float(best["marginal_temperature"]),
            "integral_ece": float(best["integral_ece"]), "integral_nll": float(best["integral_nll"]),
            # a choice on the grid's edge may lie beyond it: widen the grid (a single-value axis is always "on edge")
            "softplus_beta_on_edge": edges["softplus_beta"] if integrals["softplus_beta"].nunique() > 1 else None,
            "marginal_temperature_on_edge": (edges["marginal_temperature"]
                                             if integrals["marginal_temperature"].nunique() > 1 else None)}


def sine_factor_from_calibration(curves: pd.DataFrame, beta: float, tau: float, amplitude: float) -> dict[str, Any]:
    """γ of Eq. 5 from where the chosen predictor is worst calibrated (docs/tuning.md §3).

    The sine bump adds ``γ·sin(πk/T)·Σ_max`` to the guidance weight: most mid-process, nothing at
    the ends. The paper adds it because its classifier's ECE is low and stable there (its Figure 1).
    Calibration decides the sign of that premise: the bump-weighted mean ECE (weights sin(πt))
    against the plain mean over steps. Where the bump amplifies a *better*-calibrated stretch
    (ratio <= 1) γ = ``amplitude``; where it would amplify the worst-calibrated stretch, γ = 0.
    The amplitude itself is not a calibration quantity: it is a step size, traded against the
    scale that Stage 2 searches, so it is given (``tune.sine_factor``)."""
    mine = curves[(curves.softplus_beta == beta) & (curves.marginal_temperature == tau)]
    weights = np.sin(np.pi * mine["t"].to_numpy())
    ece = mine["ece"].to_numpy()
    plain = float(ece.mean())
    bumped = float((weights * ece).sum() / weights.sum()) if weights.sum() > 0 else plain
    ratio = bumped / plain if plain > 0 else 1.0
    worst = mine.loc[mine["ece"].idxmax()]
    return {"sine_factor": float(amplitude) if ratio <= 1.0 else 0.0, "bump_weighted_ece": bumped,
            "mean_ece": plain, "ratio": ratio, "worst_step": int(worst["step"]), "worst_t": float(worst["t"]),
            "worst_ece": float(worst["ece"])}


@dataclass
class CalibrationResult:
    curves: pd.DataFrame
    integrals: pd.DataFrame
    chosen: dict[str, float]
    by_criterion: dict[str, dict[str, float]]
    sine: dict[str, Any]  # γ and the evidence behind it (sine_factor_from_calibration)
    optimal_temperatures: pd.DataFrame  # per (β, step): the NLL-optimal τ (continuous)
    denoiser_evaluations: int
    guided_integrals: pd.DataFrame | None = None  # per β: integral ECE along its guided trajectories


def calibrate(denoiser, diffusion, images: torch.Tensor, labels: torch.Tensor, classifiers: Mapping[float, Any],
              spec: TuneSpec, conditional: bool) -> CalibrationResult:
    """Stage 1 over held-out ``images``: ``classifiers`` maps each β to its guidance object
    (:class:`~offshelf.guidance.ClassifierGuidance`, used for ``select_input`` and ``logits`` only)."""
    if len(images) < MIN_HELD_OUT:
        raise TuneError(f"{len(images)} held-out images: at least {MIN_HELD_OUT} are needed for a per-step ECE")
    merged: dict[float, dict[int, list[np.ndarray]]] = {beta: {} for beta in classifiers}
    for i in range(0, len(images), spec.batch_size):
        x0, y = images[i:i + spec.batch_size], labels[i:i + spec.batch_size]
        seeds = range(NOISE_SEED_OFFSET + i, NOISE_SEED_OFFSET + i + len(x0))
        views = denoised_steps(denoiser, diffusion, x0, seeds, y if conditional else None)
        for beta, per_step in step_logits(views, classifiers).items():
            for step, value in per_step.items():
                merged[beta].setdefault(step, []).append(value)
    logits = {beta: {step: np.concatenate(v) for step, v in per_step.items()} for beta, per_step in merged.items()}
    y_np = labels.cpu().numpy()
    curves = calibration_curves(logits, y_np, spec.marginal_temperatures, diffusion.num_steps, spec.num_bins)
    for column in ("ece", "nll"):
        if not np.isfinite(curves[column]).all():
            raise TuneError(f"non-finite {column} in the calibration grid (the classifier's logits hold NaN or inf)")
    integrals = integral_scores(curves)
    by_criterion = {c: choose(integrals, c) for c in CRITERIA}
    chosen = by_criterion[spec.criterion]
    optimal = pd.DataFrame([dict(softplus_beta=float(beta), step=step, t=step / diffusion.num_steps,
                                 nll_optimal_temperature=nll_optimal_temperature(value, y_np))
                            for beta, per_step in logits.items() for step, value in sorted(per_step.items(), reverse=True)])
    sine = sine_factor_from_calibration(curves, chosen["softplus_beta"], chosen["marginal_temperature"],
                                        spec.sine_factor)
    return CalibrationResult(curves, integrals, chosen, by_criterion, sine, optimal, len(images) * diffusion.num_steps)


# --------------------------------------------------------------------------- Stage 1, β along guided trajectories

GUIDED_COLUMNS = ["softplus_beta", "marginal_temperature", "step", "t", "ece", "accuracy", "confidence", "n"]


def guided_calibration(backend, models, spec: TuneSpec, temperatures: Mapping[float, float],
                       judge: Callable[[torch.Tensor], torch.Tensor], batch_size: int | str) -> pd.DataFrame:
    """Per (β, step): the ECE of the guide's confidence (softmax f, τ = 1, as every calibration
    profile) along ``spec.guided_samples`` trajectories that β itself guides (its τ2 from
    ``temperatures``, γ = ``spec.sine_factor``, s = ``spec.guided_scale``), where a prediction is
    correct when the judge sees the same class in that step's x̂0: the backend's guided
    calibration profile, judged. A guide whose confidence runs ahead of what an independent
    network sees is being fooled by its own gradient: the failure Softplus is meant to fix, which
    held-out real images never show (docs/tuning.md §2)."""
    seeds = list(range(GUIDED_SEED_OFFSET, GUIDED_SEED_OFFSET + spec.guided_samples))
    tables = []
    for beta, tau in temperatures.items():
        setting = replace(variant_setting(spec, beta), method="guided", marginal_temperature=float(tau),
                          sine_factor=spec.sine_factor, scale=spec.guided_scale)
        from offshelf import stages

        batch = stages.resolve_batch_size(backend, models, setting, batch_size, len(seeds))
        table = backend.calibration_profile(models, setting, seeds, batch, spec.num_bins, guided=True,
                                            judge=judge)
        if not np.isfinite(table["ece"]).all():
            raise TuneError(f"non-finite ECE along the trajectories {setting.name} guides")
        tables.append(table.assign(softplus_beta=float(beta), marginal_temperature=float(tau)))
    return pd.concat(tables, ignore_index=True)[GUIDED_COLUMNS]


def temperature_per_beta(integrals: pd.DataFrame, criterion: str) -> dict[float, float]:
    """β -> the τ2 whose integral ``criterion`` is smallest for that β (Stage 1's held-out grid)."""
    column = CRITERION_COLUMNS[criterion]
    best = integrals.loc[integrals.groupby("softplus_beta")[column].idxmin()]
    return {float(b): float(t) for b, t in zip(best["softplus_beta"], best["marginal_temperature"])}


def choose_beta_along_guided(stage1: "CalibrationResult", guided: pd.DataFrame, spec: TuneSpec) -> "CalibrationResult":
    """Stage 1 with β replaced by the one of smallest integral ECE along its own guided trajectories
    (ties: the smaller β); τ2 stays that β's held-out choice, γ is re-derived for it."""
    integrals = (guided.groupby(["softplus_beta", "marginal_temperature"], sort=False)
                 .agg(integral_ece=("ece", "mean"), agreement=("accuracy", "mean")).reset_index())
    best = integrals.loc[integrals["integral_ece"].idxmin()]
    beta = float(best["softplus_beta"])
    chosen = choose(stage1.integrals[stage1.integrals.softplus_beta == beta], spec.criterion)
    betas = integrals["softplus_beta"]
    chosen["softplus_beta_on_edge"] = ("low" if beta == betas.min() else "high" if beta == betas.max() else None)
    chosen["guided_integral_ece"] = float(best["integral_ece"])
    sine = sine_factor_from_calibration(stage1.curves, beta, chosen["marginal_temperature"], spec.sine_factor)
    return replace(stage1, chosen=chosen, sine=sine, guided_integrals=integrals)


# --------------------------------------------------------------------------- Stage 2

def setting_fid_objective(sample: Callable[[Setting, list[int]], np.ndarray],
                          features: Callable[[np.ndarray], np.ndarray], reference_mu: np.ndarray,
                          reference_sigma: np.ndarray,
                          seed_offset: int = SEARCH_SEED_OFFSET) -> Callable[[Setting, int], float]:
    """``evaluate(setting, n)``: the FID of ``n`` samples of ``setting``, judged by ``features``
    against the reference statistics. Seeds are ``seed_offset + 0 … n−1`` for every setting (common
    random numbers: a low-fidelity batch is the prefix of a high-fidelity one, and two settings
    differ only by their guidance), and the images of each setting are kept in memory so a longer
    evaluation samples only the seeds it adds."""
    from offshelf.metrics import extract_features, frechet_distance_few_samples

    drawn: dict[str, np.ndarray] = {}

    def evaluate(setting: Setting, n: int) -> float:
        have = drawn.get(setting.name, np.zeros((0,), np.uint8))
        if len(have) < n:
            extra = sample(setting, list(range(seed_offset + len(have), seed_offset + n)))
            have = extra if len(have) == 0 else np.concatenate([have, extra])
            drawn[setting.name] = have
        feats = extract_features(have[:n], features, 512)
        value = frechet_distance_few_samples(feats, reference_mu, reference_sigma)
        if not math.isfinite(value):
            raise TuneError(f"FID of {n} samples of {setting.name} is {value}")
        return value

    evaluate.samples_drawn = lambda: sum(len(v) for v in drawn.values())  # type: ignore[attr-defined]
    return evaluate


def fid_objective(sample: Callable[[Setting, list[int]], np.ndarray], features: Callable[[np.ndarray], np.ndarray],
                  reference_mu: np.ndarray, reference_sigma: np.ndarray, base: Setting,
                  seed_offset: int = SEARCH_SEED_OFFSET) -> Callable[[float, int], float]:
    """``evaluate(scale, n)``: :func:`setting_fid_objective` of ``base`` at ``scale``."""
    by_setting = setting_fid_objective(sample, features, reference_mu, reference_sigma, seed_offset)

    def evaluate(scale: float, n: int) -> float:
        return by_setting(replace(base, scale=float(scale)), n)

    evaluate.samples_drawn = by_setting.samples_drawn  # type: ignore[attr-defined]
    return evaluate


#: Stage 2's defaults: scales a decade apart, 100-sample screening, 500-sample finalists
SEARCH_DEFAULTS = {"initial": (1.0, 3.0, 10.0), "low_fidelity": 100, "full_fidelity": 500}


def search_spec(spec: TuneSpec):
    """Stage 2's :class:`offshelf.search.SearchSpec` from ``tune.search`` (its keys) over the defaults."""
    from offshelf.search import SearchSpec

    values = dict(SEARCH_DEFAULTS, **dict(spec.search))
    for key in ("initial", "bounds"):
        if key in values:
            if not isinstance(values[key], (list, tuple)):
                raise TuneError(f"tune.search.{key} = {values[key]!r}: expected a list of scales "
                                f"(on the command line: --search '{key}=[1, 3]')")
            values[key] = tuple(values[key])
    try:
        return SearchSpec(**values)
    except (TypeError, ValueError) as err:
        raise TuneError(f"tune.search: {str(err).replace('search.', 'tune.search.')}") from None


# --------------------------------------------------------------------------- outputs

def tuned_setting(spec: TuneSpec, stage1: "CalibrationResult", scale: float) -> Setting:
    return Setting(regime=spec.regime, method="guided", classifier=spec.classifier, input=spec.input,
                   network=spec.network, softplus_beta=stage1.chosen["softplus_beta"], joint_temperature=1.0,
                   marginal_temperature=stage1.chosen["marginal_temperature"],
                   sine_factor=stage1.sine["sine_factor"], scale=scale)


def tuned_base(name: str, setting: Setting) -> dict[str, dict[str, Any]]:
    """``{name: {...}}``: a ``bases:`` entry (regime is a table's, not a base's)."""
    beta = "inf" if math.isinf(setting.softplus_beta) else float(setting.softplus_beta)
    network = {"network": setting.network} if setting.network else {}
    return {name: {"method": "guided", "classifier": setting.classifier, **network, "input": setting.input,
                   "softplus_beta": beta, "joint_temperature": float(setting.joint_temperature),
                   "marginal_temperature": float(setting.marginal_temperature),
                   "sine_factor": float(setting.sine_factor), "scale": float(setting.scale)}}


def base_name(spec: TuneSpec) -> str:
    return f"tuned_{spec.folder}".replace("-", "_").replace(".", "_")


def plot_curves(curves: pd.DataFrame, chosen: Mapping[str, float], path: Path,
                guided: pd.DataFrame | None = None) -> None:
    """Per-step ECE and NLL of every β at the chosen τ2, and of every τ2 at the chosen β; with
    ``guided``, a third column: each β's ECE and judge agreement along its own guided trajectories."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3 if guided is not None else 2, figsize=(15 if guided is not None else 10, 7),
                             sharex=True)
    beta, tau = chosen["softplus_beta"], chosen["marginal_temperature"]
    panels = ((curves[curves.marginal_temperature == tau], "softplus_beta", f"τ2 = {fmt(tau)}, by β"),
              (curves[curves.softplus_beta == beta], "marginal_temperature", f"β = {fmt(beta)}, by τ2"))
    for col, (frame, key, title) in enumerate(panels):
        for value, group in frame.groupby(key):
            chosen_line = value == (beta if key == "softplus_beta" else tau)
            for row, metric in enumerate(("ece", "nll")):
                axes[row, col].plot(group["t"], group[metric], lw=2.5 if chosen_line else 1,
                                    label=f"{'β' if key == 'softplus_beta' else 'τ2'}={fmt(value)}")
        axes[0, col].set_title(title)
        for row, metric in enumerate(("ECE", "NLL")):
            axes[row, col].set_ylabel(metric)
            axes[1, col].set_xlabel("t = k/T (1: pure noise)")
        axes[0, col].legend(fontsize=7, ncol=2)
    if guided is not None:
        for value, group in guided.groupby("softplus_beta"):
            width = 2.5 if value == chosen["softplus_beta"] else 1
            tau = group["marginal_temperature"].iloc[0]
            axes[0, 2].plot(group["t"], group["ece"], lw=width, label=f"β={fmt(value)} (τ2={fmt(tau)})")
            axes[1, 2].plot(group["t"], group["accuracy"], lw=width)
        axes[0, 2].set_title("along each β's guided trajectories (judge)")
        axes[0, 2].set_ylabel("ECE vs judge")
        axes[1, 2].set_ylabel("guide = judge (fraction)")
        axes[1, 2].set_xlabel("t = k/T (1: pure noise)")
        axes[0, 2].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


# --------------------------------------------------------------------------- both stages

def guidance_variants(spec: TuneSpec, offshelf_classifier, finetuned=None) -> dict[float, Any]:
    """β -> the guidance object of the tuned classifier with Softplus(β) (τ is applied to logits later)."""
    from offshelf.backends.guides import guidance_for

    return {float(beta): guidance_for(variant_setting(spec, beta), offshelf_classifier, finetuned)
            for beta in spec.softplus_betas}


def variant_setting(spec: TuneSpec, beta: float) -> Setting:
    return Setting(regime=spec.regime, classifier=spec.classifier, input=spec.input, network=spec.network,
                   softplus_beta=float(beta))


def refuse_what_cannot_be_tuned(backend, models, spec: TuneSpec, guiding_files: Mapping[str, str],
                                judging_files: Mapping[str, str]):
    """Every refusal :func:`run_tune` makes before any work (one line each, as a TuneError): the
    backend's declared capability, the search keys, each β's setting, judge ≠ guide, and a
    pixel-space DDPM family. Returns the search spec."""
    from offshelf.backends.capabilities import Capability, UnsupportedError, require, unavailable
    from offshelf.backends.ddpm import DDPMModels
    from offshelf.judge import JudgeIsGuideError, check_judge_is_not_a_guide, paths_by_source

    try:
        require(backend, Capability.TUNING, "offshelf tune")
    except UnsupportedError as err:
        raise TuneError(str(err)) from None
    search = search_spec(spec)  # a bad search key stops here, before Stage 1's work
    for beta in spec.softplus_betas:  # e.g. Softplus on a family without ReLU: refused, naming the setting
        reason = unavailable(backend, variant_setting(spec, beta))
        if reason:
            raise TuneError(f"tune.softplus_betas: backend {backend.name!r} cannot run "
                            f"{variant_setting(spec, beta).name}: {reason}")
    variants = [variant_setting(spec, beta) for beta in spec.softplus_betas]
    try:  # judge ≠ guide: the one check config validation runs too (offshelf.judge)
        check_judge_is_not_a_guide(backend, variants, paths_by_source(backend, variants, dict(guiding_files),
                                                                       dict(judging_files)))
    except JudgeIsGuideError as err:
        raise TuneError(f"{err}; a tuner judged by its own guide would reward adversarial samples") from None
    if not isinstance(models, DDPMModels):  # EDM (σ, not respaced steps), DiT (latent: x̂0 is the VAE's)
        raise TuneError(f"backend {backend.name!r}: tuning needs a pixel-space DDPM-family backend (a denoiser and "
                        f"its respaced diffusion); this one loads {type(models).__name__}")
    return search


def reference_statistics(backend, judging_files: Mapping[str, str], evaluation: Mapping[str, Any] | None,
                         reference_features: Mapping[str, np.ndarray] | None = None):
    """The judge's reference statistics (mu, sigma): the backend's own, else those of the
    reference features (computed here when the workflow's are not given)."""
    from offshelf import stages
    from offshelf.metrics import feature_statistics

    if reference_features is None:
        reference_features = stages.reference_features(backend, judging_files, evaluation or {})
    ref = backend.reference(judging_files, reference_features).stats
    return ref if ref is not None else feature_statistics(reference_features["features"])


def sampler(backend, models, batch_size: int, progress: bool = False) -> Callable[[Setting, list[int]], np.ndarray]:
    """``sample(setting, seeds)``: uint8 images through ``stages.sample_shard``, the workflow's own sampling path."""
    from offshelf import stages

    probed: dict = {}  # the scale search samples one setting at many scales: `auto` probes once

    def sample(setting: Setting, seeds: list[int]) -> np.ndarray:
        images_u8, _, _ = stages.sample_shard(backend, models, setting, seeds, batch_size, progress=progress,
                                              probed=probed)
        return images_u8

    return sample


def run_tune(backend, models, spec: TuneSpec, out_dir, guiding_files: Mapping[str, str],
             judging_files: Mapping[str, str], evaluation: Mapping[str, Any] | None = None,
             sampling: Mapping[str, Any] | None = None, batch_size: int | str = 256, progress: bool = False,
             reference_features: Mapping[str, np.ndarray] | None = None) -> dict:
    """Both stages for a DDPM-family backend; writes into ``out_dir``:

    * ``tuned.yaml`` -- ``{tuned_<classifier>_<regime>: {...}}``, a ``bases:`` entry;
    * ``calibration_curves.csv`` (every β, τ2, step), ``calibration_integrals.csv``,
      ``optimal_temperatures.csv`` and ``calibration_curves.png``;
    * ``search_trace.csv`` and ``summary.json`` (choices, both criteria, the judge, the cost in
      denoiser evaluations).

    ``reference_features``: the workflow's reference features (default: computed here)."""
    from offshelf.atomic import save_csv, save_json
    from offshelf.search import evaluation_to_dict, run_search

    search = refuse_what_cannot_be_tuned(backend, models, spec, guiding_files, judging_files)
    images, labels = backend.held_out_images(spec.num_images)
    if len(images) < spec.num_images:
        raise TuneError(f"backend {backend.name!r} has {len(images)} held-out images; tune.num_images = "
                        f"{spec.num_images} asks for more")
    device = getattr(models, "device", "cpu")
    classifiers = guidance_variants(spec, models.offshelf, models.finetuned)
    stage1 = calibrate(models.denoiser, models.diffusion, images.to(device), labels.to(device), classifiers, spec,
                       conditional=spec.regime == "cond")

    extractor = backend.feature_extractor(judging_files)
    guided = None
    if spec.beta_choice == "guided" and len(spec.softplus_betas) > 1:
        if extractor.logits is None:
            raise TuneError(f"tune.beta_choice = guided needs the evaluation network's class logits; backend "
                            f"{backend.name!r}'s judge has none: set tune.beta_choice: unguided")

        def judge(pred_xstart: torch.Tensor) -> torch.Tensor:
            return torch.as_tensor(extractor.logits(backend.to_uint8(pred_xstart))).argmax(dim=1)

        guided = guided_calibration(backend, models, spec, temperature_per_beta(stage1.integrals, spec.criterion),
                                    judge, batch_size)
        stage1 = choose_beta_along_guided(stage1, guided, spec)
    ref = reference_statistics(backend, judging_files, evaluation, reference_features)
    base = tuned_setting(spec, stage1, 1.0)
    objective = fid_objective(sampler(backend, models, batch_size, progress), extractor.features, ref.mu, ref.sigma,
                              base)
    result = run_search(search, objective)
    setting = tuned_setting(spec, stage1, result.scale)

    # the backend counts its own network evaluations where it knows the sampling section
    per_sample = (backend.work_per_sample(setting, sampling)["denoiser"] if sampling and "respacing" in sampling
                  else models.diffusion.num_steps)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = base_name(spec)
    _save_yaml(out / "tuned.yaml", tuned_base(name, setting))
    save_csv(out / "calibration_curves.csv", stage1.curves)
    save_csv(out / "calibration_integrals.csv", stage1.integrals)
    save_csv(out / "optimal_temperatures.csv", stage1.optimal_temperatures)
    save_csv(out / "guided_calibration.csv", guided if guided is not None else pd.DataFrame(columns=GUIDED_COLUMNS))
    save_csv(out / "search_trace.csv", pd.DataFrame([evaluation_to_dict(e) for e in result.trace]))
    plot_curves(stage1.curves, stage1.chosen, out / "calibration_curves.png", guided)
    summary = tune_summary(spec, name, setting, stage1, guided, result, extractor.name, judging_files,
                           held_out=len(images), per_sample=per_sample,
                           stage2_samples=int(objective.samples_drawn()))
    save_json(out / "summary.json", _finite_json(summary))
    return summary


def tune_summary(spec: TuneSpec, name: str, setting: Setting, stage1, guided, result, judge: str,
                 judging_files: Mapping[str, str], held_out: int, per_sample: int, stage2_samples: int) -> dict:
    """``summary.json``: the choices, both criteria, the judge, and the cost of each stage in
    denoiser evaluations (``per_sample`` of them per sample)."""
    from offshelf.search import format_trace

    guided_samples = 0 if guided is None else len(spec.softplus_betas) * spec.guided_samples
    return {
        "base": name, "setting": setting.name, "regime": spec.regime, "classifier": spec.classifier,
        "criterion": spec.criterion, "chosen": stage1.chosen, "by_criterion": stage1.by_criterion,
        "beta_choice": spec.beta_choice if guided is not None else "unguided",
        "guided_integrals": ([] if stage1.guided_integrals is None
                             else stage1.guided_integrals.to_dict(orient="records")),
        "sine_factor": setting.sine_factor, "sine_evidence": stage1.sine, "held_out_images": held_out,
        "scale": result.scale, "search_fid": result.value, "scale_on_edge": result.on_edge,
        "judge": judge, "judge_files": dict(judging_files),
        "stage1_denoiser_evaluations": stage1.denoiser_evaluations,
        "stage1_classifier_forwards": stage1.denoiser_evaluations * len(spec.softplus_betas),
        # β along guided trajectories: sampling, counted as Stage 2's samples are
        "stage1_guided_samples": guided_samples,
        "stage1_guided_denoiser_evaluations": guided_samples * per_sample,
        # what the objective drew: a finalist's full evaluation only adds seeds to its screen
        "stage2_samples": stage2_samples,
        "stage2_denoiser_evaluations": stage2_samples * per_sample,
        "trace": format_trace(result.trace),
    }


# --------------------------------------------------------------------------- TFG's beam search on offshelf's knobs

#: ``offshelf tune --method``: the calibrated tuner (both stages above) or TFG's beam search
METHODS = ("calibrated", "tfg-beam")

#: TFG's ladders on offshelf's knobs (docs/tuning.md §8). μ's ladder (0.25 ×2 up to 8) drives the
#: scale s: both weight ∇ log p(y | x̂0) taken at x̂0, without backprop through the denoiser. σ's
#: ladder (0.001 ×10 up to 1) drives the Softplus width 1/β: both smooth the classifier TFG and
#: offshelf differentiate, TFG by averaging it over Gaussian noise on its input, Softplus by
#: smoothing each ReLU over a width 1/β; a role analogue, not the same operation. ρ (the gradient
#: through the denoiser) has no Setting knob: not searched, as TFG drops a knob of factor 1.
OFFSHELF_BEAM_KNOBS = {"scale": "mu", "softplus_width": "sigma"}


def beam_knobs(backend, spec: TuneSpec):
    """The knobs the beam searches for ``spec``'s classifier, and those it drops with the reason:
    a family without ReLU (digits' ViT: GELU) has no Softplus width to search."""
    from offshelf.backends.capabilities import unavailable
    from offshelf.beam_search import TFG_KNOBS, Knob

    published = {k.name: k for k in TFG_KNOBS}
    knobs, dropped = [], {}
    for name, tfg_name in OFFSHELF_BEAM_KNOBS.items():
        ladder = published[tfg_name]
        knob = Knob(name, ladder.initial, ladder.factor, ladder.maximum)
        if name == "softplus_width":
            reason = None
            for width in knob.ladder():
                try:  # a backend answers with a reason, or refuses the setting outright (digits' ViT)
                    reason = reason or unavailable(backend, beam_setting(spec, {"scale": 1.0, name: width}))
                except ValueError as err:
                    reason = str(err)
            if reason:
                dropped[name] = reason
                continue
        knobs.append(knob)
    return tuple(knobs), dropped


def beam_setting(spec: TuneSpec, knobs: Mapping[str, float]) -> Setting:
    """A beam candidate as an offshelf setting: the classifier's plain log-probability (τ1 = τ2 = 1,
    as TFG differentiates it), no sine bump (TFG has none), β = 1 / width (ReLU without the knob)."""
    width = knobs.get("softplus_width")
    return Setting(regime=spec.regime, method="guided", classifier=spec.classifier, input=spec.input,
                   network=spec.network, softplus_beta=math.inf if width is None else 1.0 / float(width),
                   joint_temperature=1.0, marginal_temperature=1.0, sine_factor=0.0, scale=float(knobs["scale"]))


def beam_spec(spec: TuneSpec, knobs, overrides: Mapping[str, Any] | None = None):
    """TFG's published search on ``knobs``; its finalists are drawn at the calibrated tuner's full
    fidelity (``tune.search.full_fidelity``, 500), so both methods' winners are judged on as many
    samples. ``overrides``: BeamSpec keys (``offshelf tune --beam KEY=VALUE``)."""
    from offshelf.beam_search import BeamSearchError, BeamSpec

    values = {"full_samples": search_spec(spec).full_fidelity, **dict(overrides or {})}
    known = set(BeamSpec.__dataclass_fields__) - {"knobs"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TuneError(f"unknown beam key(s) {unknown}; allowed: {', '.join(sorted(known))}")
    try:
        return BeamSpec(knobs=tuple(knobs), **values)
    except (BeamSearchError, TypeError) as err:
        raise TuneError(str(err)) from None


def run_tfg_beam(backend, models, spec: TuneSpec, out_dir, guiding_files: Mapping[str, str],
                 judging_files: Mapping[str, str], evaluation: Mapping[str, Any] | None = None,
                 sampling: Mapping[str, Any] | None = None, batch_size: int = 256, progress: bool = False,
                 reference_features: Mapping[str, np.ndarray] | None = None,
                 beam: Mapping[str, Any] | None = None) -> dict:
    """TFG's beam search (:mod:`offshelf.beam_search`) over :data:`OFFSHELF_BEAM_KNOBS`, each
    candidate scored by the FID of its samples (the same judge, reference and seeds as Stage 2 of
    :func:`run_tune`). Writes ``tuned.yaml`` (a ``bases:`` entry ``tfg_beam_<classifier>_<regime>``),
    ``beam_trace.csv`` (every candidate: round, knobs, setting, samples, FID, screening rank) and
    ``summary.json`` (the choice, the schedule, the dropped knobs, the cost in denoiser evaluations)."""
    from offshelf.atomic import save_csv, save_json
    from offshelf.backends.capabilities import Capability, UnsupportedError, require
    from offshelf.beam_search import BeamSearchError, run_beam_search
    from offshelf.judge import JudgeIsGuideError, check_judge_is_not_a_guide, paths_by_source

    try:
        require(backend, Capability.TUNING, "offshelf tune")
    except UnsupportedError as err:
        raise TuneError(str(err)) from None
    knobs, dropped = beam_knobs(backend, spec)
    search = beam_spec(spec, knobs, beam)
    candidates = [beam_setting(spec, {k.name: k.initial for k in knobs})]
    try:
        check_judge_is_not_a_guide(backend, candidates, paths_by_source(backend, candidates, dict(guiding_files),
                                                                         dict(judging_files)))
    except JudgeIsGuideError as err:
        raise TuneError(f"{err}; a search judged by its own guide would reward adversarial samples") from None

    extractor = backend.feature_extractor(judging_files)
    ref = reference_statistics(backend, judging_files, evaluation, reference_features)
    by_setting = setting_fid_objective(sampler(backend, models, batch_size, progress), extractor.features,
                                       ref.mu, ref.sigma)
    try:
        result = run_beam_search(search, lambda c, n: by_setting(beam_setting(spec, search.as_dict(c)), n))
    except BeamSearchError as err:
        raise TuneError(str(err)) from None
    setting = beam_setting(spec, search.as_dict(result.best))

    per_sample = (backend.work_per_sample(setting, sampling)["denoiser"] if sampling and "respacing" in sampling
                  else models.diffusion.num_steps)
    rows = []
    for r in result.rounds:
        rank = {c: i for i, (c, _) in enumerate(r.ranking)}
        for c in r.candidates:
            rows.append(dict(round=r.index, **search.as_dict(c), setting=beam_setting(spec, search.as_dict(c)).name,
                             num_samples=search.samples_per_candidate, fid=dict(r.ranking)[c],
                             rank_after_round=rank[c]))
    for c, value in result.finals:
        rows.append(dict(round="final", **search.as_dict(c), setting=beam_setting(spec, search.as_dict(c)).name,
                         num_samples=search.full_samples, fid=value, rank_after_round=None))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = f"tfg_beam_{spec.folder}".replace("-", "_").replace(".", "_")
    _save_yaml(out / "tuned.yaml", tuned_base(name, setting))
    save_csv(out / "beam_trace.csv", pd.DataFrame(rows))
    samples = int(by_setting.samples_drawn())
    summary = {
        "method": "tfg-beam", "base": name, "setting": setting.name, "regime": spec.regime,
        "classifier": spec.classifier, "network": spec.network, "knobs": search.as_dict(result.best),
        "scale": setting.scale, "softplus_beta": setting.softplus_beta, "search_fid": result.value,
        "searched_knobs": {k.name: {"maps": OFFSHELF_BEAM_KNOBS[k.name], "ladder": k.ladder()} for k in knobs},
        "dropped_knobs": dropped, "top_k": search.top_k, "rounds": search.rounds,
        "samples_per_candidate": search.samples_per_candidate, "finalists": search.finalists,
        "full_samples": search.full_samples,
        "candidates_per_round": [len(r.candidates) for r in result.rounds],
        "judge": extractor.name, "judge_files": dict(judging_files),
        # what the objective drew: a finalist's full evaluation only adds seeds to its screen
        "samples": samples, "denoiser_evaluations": samples * per_sample,
    }
    save_json(out / "summary.json", _finite_json(summary))
    return summary


def _finite_json(value):
    """inf (ReLU's β) as the string "inf", as configs write it: JSON has no infinity."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, Mapping):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def _save_yaml(path: Path, data) -> None:
    import yaml

    from offshelf.atomic import save_text

    save_text(path, yaml.safe_dump(data, sort_keys=False))


__all__ = ["TuneSpec", "TuneError", "denoised_steps", "step_logits", "temperature_scores", "nll_optimal_temperature",
           "calibration_curves", "integral_scores", "choose", "calibrate", "fid_objective", "setting_fid_objective",
           "tuned_base", "run_tune", "run_tfg_beam"]
