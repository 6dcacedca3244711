"""ReLU → Softplus(β) surgery (paper Sec. 4.3): smoother gradients, lower calibration error."""

from __future__ import annotations

import copy
import math

from torch import nn


class NoReLUError(ValueError):
    """Softplus(β) surgery was asked of a network with no ``nn.ReLU`` module (a GELU ViT, CLIP's
    ViT): there is nothing to smooth, and a silent no-op would report ReLU numbers as Softplus ones."""


def softplus_surgery(model: nn.Module, beta: float, name: str | None = None) -> nn.Module:
    """Return a deep copy of ``model`` with every ``nn.ReLU`` module replaced by
    ``nn.Softplus(beta)``; the original is untouched.

    Replacing the *module* covers reuse: torchvision's Bottleneck calls its one ``relu``
    three times (after bn1, bn2 and the residual add), so all three become Softplus, exactly
    as the official code's attribute swap does. ``beta = inf`` returns an unmodified copy
    (the ReLU baseline). Functional ``F.relu`` calls cannot be swapped; a model that uses
    them is rejected by :func:`count_relus` checks in the tests, not silently half-converted.

    A finite ``beta`` on a network with no ``nn.ReLU`` module at all (GELU transformers such as
    the digits ViT or CLIP's ViT image towers) raises :class:`NoReLUError` naming the network
    (``name``, else its class) and its activations. Only ReLUs are replaced: in a network that
    mixes ReLU with other activations, those others stay as they are.
    """
    if not (beta > 0):
        raise ValueError(f"softplus beta must be > 0 (or inf for ReLU), got {beta}")
    if not math.isinf(beta) and count_relus(model) == 0:
        label = name or type(model).__name__
        raise NoReLUError(f"softplus_beta = {beta:g} asks for Softplus surgery, but network {label!r} has no nn.ReLU "
                          f"module to replace (its activations: {', '.join(activation_names(model)) or 'none found'}); "
                          f"Softplus(beta) smooths ReLU networks only: use softplus_beta: inf for this network")
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


_ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.Softplus, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Hardswish)


def activation_names(model: nn.Module) -> list[str]:
    """Distinct activation module classes in ``model`` (e.g. ``['GELU']``), in order of appearance;
    any module named ``*GELU*`` counts too (open_clip's ``QuickGELU``)."""
    names: list[str] = []
    for m in model.modules():
        cls = type(m).__name__
        if (isinstance(m, _ACTIVATIONS) or "GELU" in cls) and cls not in names:
            names.append(cls)
    return names
