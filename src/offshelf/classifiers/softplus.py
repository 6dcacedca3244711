"""ReLU → Softplus(β) surgery (paper Sec. 4.3): smoother gradients, lower calibration error."""

from __future__ import annotations

import copy
import math

from torch import nn


def softplus_surgery(model: nn.Module, beta: float) -> nn.Module:
    """Return a deep copy of ``model`` with every ``nn.ReLU`` module replaced by
    ``nn.Softplus(beta)``; the original is untouched.

    Replacing the *module* covers reuse: torchvision's Bottleneck calls its one ``relu``
    three times (after bn1, bn2 and the residual add), so all three become Softplus, exactly
    as the official code's attribute swap does. ``beta = inf`` returns an unmodified copy
    (the ReLU baseline). Functional ``F.relu`` calls cannot be swapped; a model that uses
    them is rejected by :func:`count_relus` checks in the tests, not silently half-converted.
    """
    if not (beta > 0):
        raise ValueError(f"softplus beta must be > 0 (or inf for ReLU), got {beta}")
    model = copy.deepcopy(model)
    if math.isinf(beta):
        return model
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, nn.Softplus(beta=float(beta)))
    return model


def count_relus(model: nn.Module) -> int:
    return sum(isinstance(m, nn.ReLU) for m in model.modules())
