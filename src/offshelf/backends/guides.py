"""The guidance a setting describes, for every backend (moved out of ``backends/base.py``)."""

from __future__ import annotations

import weakref

import torch

from offshelf.settings import Setting

#: classifier -> {β: its Softplus(β) copy}: one copy per job and β, not one per batch, so a
#: compiled classifier (sampling.compile) compiles once per job
_SMOOTHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def smoothed(classifier: torch.nn.Module, beta: float) -> torch.nn.Module:
    """``softplus_surgery(classifier, beta)``, made once per classifier object and β (the copy is
    only ever evaluated, never changed, so sharing it across batches changes no number)."""
    from offshelf.classifiers.softplus import softplus_surgery

    copies = _SMOOTHED.setdefault(classifier, {})
    if beta not in copies:
        copies[beta] = softplus_surgery(classifier, beta)
    return copies[beta]


def guidance_for(setting: Setting, offshelf: torch.nn.Module | None, finetuned: torch.nn.Module | None = None):
    """The guidance a setting describes, for every backend (None when unguided or CFG; for
    Best-of-N and SMC the classifier that scores, :mod:`offshelf.samplers.particles`).

    The off-the-shelf classifier gets Softplus(β) surgery (on a copy) and the calibrated
    temperatures, and sees the setting's input (x̂0 or x_t); the fine-tuned classifier is used as
    ADM's baseline did (x_t and t, plain log-softmax); ``combined`` switches at ``switch_step``."""
    from offshelf.guidance import ClassifierGuidance, SwitchedGuidance

    if not setting.uses_classifier:
        return None

    def off_the_shelf() -> ClassifierGuidance:
        if offshelf is None:
            raise ValueError(f"setting {setting.name}: no off-the-shelf classifier was loaded")
        return ClassifierGuidance(smoothed(offshelf, setting.softplus_beta), setting.joint_temperature,
                                  setting.marginal_temperature, setting.input)

    def fine_tuned() -> ClassifierGuidance:
        if finetuned is None:
            raise ValueError(f"setting {setting.name}: this backbone has no fine-tuned (noise-aware) classifier")
        return ClassifierGuidance(finetuned, 1.0, 1.0, "xt", time_conditioned=True)

    if setting.classifier == "offshelf":
        return off_the_shelf()
    if setting.classifier == "finetuned":
        return fine_tuned()
    return SwitchedGuidance(off_the_shelf(), fine_tuned(), setting.switch_step)
