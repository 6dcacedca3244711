"""Calibration along the reverse process (paper Sec. 4.1, Eq. 1).

At every sampling step the classifier sees its guidance input (x̂0 or x_t); its confidence is the
max of ``softmax(τ·f)`` (τ = 1 by default: the classifier as it is, after any Softplus surgery) and it is correct when the argmax equals the
conditioning label. ECE uses equal-width confidence bins (15 by default, Naeini et al. 2015);
the integral calibration error is the mean of the per-step ECE over all steps.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from offshelf.extras import needs

needs(__name__, "pandas")  # offshelf[workflow]
import pandas as pd
import torch

from offshelf.guidance import calibrated_probs, guidance_at


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, num_bins: int = 15) -> float:
    """``Σ_b (|B_b|/n)·|acc(B_b) − conf(B_b)|`` over equal-width bins of (0, 1]."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidence.shape != correct.shape or confidence.ndim != 1:
        raise ValueError(f"confidence and correct must be equal-length vectors, got {confidence.shape} and {correct.shape}")
    if len(confidence) == 0:
        raise ValueError("ECE of an empty set is undefined")
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    # Bin b holds confidences in (b/n, (b+1)/n]; a confidence of exactly 0 goes to bin 0.
    bins = np.clip(np.ceil(confidence * num_bins).astype(int) - 1, 0, num_bins - 1)
    ece = 0.0
    for b in range(num_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


class CalibrationRecorder:
    """A sampler callback that evaluates one classifier (any guidance object, used only for
    its ``logits``) at every step and keeps (confidence, correct) per step.

    ``evaluate_with`` (required) is the classifier measured: a guidance object, or a
    ``SwitchedGuidance`` (Table 2's combined classifier) that :func:`guidance_at` resolves per step.
    It need not be the guidance that drives the sampler: pass another ``ClassifierGuidance`` to
    measure a classifier along someone else's trajectories.

    A prediction is correct when it equals ``labels`` (the class each trajectory was drawn or
    guided towards) or, given ``judge`` (x̂0 -> class tensor), the class an independent network
    sees in that very step's x̂0 (``offshelf tune``'s guided β choice, docs/tuning.md §2).
    """

    def __init__(self, evaluate_with, labels: torch.Tensor | None, model_timesteps=None, temperature: float = 1.0,
                 judge=None):
        if (labels is None) == (judge is None):
            raise ValueError("CalibrationRecorder needs either fixed labels or a judge of each step's x̂0, not both")
        self.guidance = evaluate_with
        self.temperature = temperature
        self.labels = labels
        self.judge = judge
        self.model_timesteps = model_timesteps
        self.confidence: dict[int, list[np.ndarray]] = defaultdict(list)
        self.correct: dict[int, list[np.ndarray]] = defaultdict(list)

    @torch.no_grad()
    def __call__(self, step: int, x_t: torch.Tensor, pred_xstart: torch.Tensor, **_):
        g = guidance_at(self.guidance, step)
        t = self.model_timesteps(step, x_t.shape[0], x_t.device) if self.model_timesteps else None
        logits = g.logits(g.select_input(x_t, pred_xstart), t)
        probs = calibrated_probs(logits, self.temperature)
        conf, pred = probs.max(dim=1)
        self.confidence[step].append(conf.cpu().numpy())
        truth = self.labels if self.judge is None else self.judge(pred_xstart)
        self.correct[step].append((pred.cpu() == truth.cpu()).numpy())

    def table(self, num_bins: int = 15, num_steps: int | None = None) -> pd.DataFrame:
        """Tidy per-step table: step, t (= step/T, 1 is pure noise), ece, accuracy, confidence, n."""
        rows = []
        for step in sorted(self.confidence, reverse=True):
            conf = np.concatenate(self.confidence[step])
            corr = np.concatenate(self.correct[step])
            rows.append(dict(step=step, t=step / num_steps if num_steps else np.nan,
                             ece=expected_calibration_error(conf, corr, num_bins),
                             accuracy=float(corr.mean()), confidence=float(conf.mean()), n=len(conf)))
        return pd.DataFrame(rows)


def integral_calibration_error(table: pd.DataFrame) -> float:
    """Eq. 1: the mean of the per-step ECE over the reverse process."""
    if table.empty:
        raise ValueError("no calibration steps recorded")
    return float(table["ece"].mean())
