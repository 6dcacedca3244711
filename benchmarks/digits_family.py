"""The digits networks of one classifier family and regime, loaded as the tuning benchmarks need
them (benchmarks/tune_digits.py, benchmarks/tune_vs_beam.py): the guiding networks, the judge's
feature extractor and the reference statistics it compares samples with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from offshelf.backends.digits import DigitsBackend
from offshelf.metrics import feature_statistics
from offshelf.settings import Setting


@dataclass
class DigitsFamily:
    backend: DigitsBackend
    family: Setting
    models: Any
    guiding: dict[str, str]
    judging: dict[str, str]
    sampling: dict[str, Any]
    extractor: Any
    reference: dict[str, np.ndarray]  # the judge's features of the reference images
    reference_statistics: Any  # their mean and covariance (offshelf.metrics.feature_statistics)


def load_digits_family(models_dir: str, regime: str, network: str, respacing: int | str) -> DigitsFamily:
    backend = DigitsBackend()
    family = Setting(regime=regime, network=network)
    guiding = {role: f"{models_dir}/{source.role}.pt" for role, source in backend.files(family).items()}
    judging = {"evaluator": f"{models_dir}/evaluator.pt"}
    sampling = {"respacing": respacing, "variance": "fixed_large"}
    models = backend.load(guiding, sampling, family)
    extractor = backend.feature_extractor(judging)
    reference = backend.reference_features(judging, extractor, {"reference_split": "train"})
    return DigitsFamily(backend, family, models, guiding, judging, sampling, extractor, reference,
                        feature_statistics(reference["features"]))
