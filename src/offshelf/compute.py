"""Network work per sample, in one place: what a setting costs on a DDPM-family sampler (Algorithm 1
and :mod:`offshelf.samplers.particles`), counted from the setting and the number of steps alone,
and a runtime counter (:class:`CountingNetwork`) that measures the same quantities, so a test can
hold the two equal.

Per image (one output sample), with T spaced steps and r recurrent passes
(P = T + (r − 1)·(T − 1): the time-travel re-runs every step but the last):

================================  ================  ===================  ====================  ====================
method                            denoiser          classifier forwards  classifier backwards  denoiser backwards
================================  ================  ===================  ====================  ====================
unguided                          T                 0                    0                     0
CFG                               2T                0                    0                     0
guided (calibrated), recurrent r  P                 P                    P                     0
guided through the denoiser       P                 P                    P                     P
Best-of-N                         N·T               N                    0                     0
SMC, k particles, every m steps   k·T               k·(⌊(T−1)/m⌋ + 1)    0                     0
================================  ================  ===================  ====================  ====================

A denoiser *evaluation* is one image through the network: CFG's conditional and unconditional
halves are two (one batched call on 2B rows). SMC scores each particle at every resampling point
(after steps k > 0 with (T − k) mod m = 0) and once more on its final sample.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from offshelf.settings import Setting

#: the counts, in the order tables print them
WORK_KEYS = ("denoiser", "classifier_forward", "classifier_backward", "denoiser_backward")


@dataclass(frozen=True)
class Work:
    """Network work of one sample (or of a run, summed)."""

    denoiser: int = 0
    classifier_forward: int = 0
    classifier_backward: int = 0
    denoiser_backward: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def smc_potentials(num_steps: int, resample_every: int) -> int:
    """Potential evaluations per particle: one per resampling point (after spaced step k > 0 with
    ``(T − k) mod m = 0``: ⌊(T − 1)/m⌋ of them) and one on the final sample."""
    return (num_steps - 1) // resample_every + 1


def ddpm_work(setting: Setting, num_steps: int) -> Work:
    """The work of one sample of ``setting`` with ``num_steps`` spaced DDPM steps (module table)."""
    s, steps = setting.canonical(), num_steps
    if s.method == "unguided":
        return Work(denoiser=steps)
    if s.method == "cfg":
        return Work(denoiser=2 * steps)
    if s.method == "best_of_n":
        return Work(denoiser=s.num_candidates * steps, classifier_forward=s.num_candidates)
    if s.method == "smc":
        return Work(denoiser=s.num_particles * steps,
                    classifier_forward=s.num_particles * smc_potentials(steps, s.resample_every))
    passes = steps + (s.recurrent_steps - 1) * (steps - 1)
    return Work(denoiser=passes, classifier_forward=passes, classifier_backward=passes,
                denoiser_backward=passes if s.through_denoiser else 0)


def legacy_work(work: Work) -> dict[str, Any]:
    """A backend's ``work_per_sample`` answer: ``denoiser`` and ``classifier`` (forwards; cost plans
    and searches read these two) plus every count of :class:`Work`."""
    return {"classifier": work.classifier_forward, **work.to_dict()}


class CountingNetwork(torch.nn.Module):
    """Wraps a network ``f(x, *rest)`` and counts the rows (images) it is evaluated on and the rows
    a backward pass goes through it, in ``tally`` (``forward``, ``backward``). A backward is counted
    once per backward call reaching the output (a hook on it). A deep copy (Softplus surgery copies
    the classifier it guides with) counts into the same tally."""

    def __init__(self, network, tally: dict[str, int] | None = None):
        super().__init__()
        self.network = network
        self.tally = {"forward": 0, "backward": 0} if tally is None else tally

    def __deepcopy__(self, memo):
        import copy

        return CountingNetwork(copy.deepcopy(self.network, memo), self.tally)

    def forward(self, x, *args, **kwargs):
        out = self.network(x, *args, **kwargs)
        rows = x.shape[0]
        self.tally["forward"] += rows
        if out.requires_grad:
            def count(grad):
                self.tally["backward"] += rows
                return grad

            out.register_hook(count)
        return out


def measured_work(denoiser: CountingNetwork, classifier: CountingNetwork, images: int) -> Work:
    """Per-image work measured by the counters (their totals divided by ``images``, exactly)."""
    totals = (denoiser.tally["forward"], classifier.tally["forward"], classifier.tally["backward"],
              denoiser.tally["backward"])
    if any(t % images for t in totals):
        raise ValueError(f"counted work {totals} is not a whole multiple of {images} images")
    return Work(*(t // images for t in totals))


__all__ = ["CountingNetwork", "WORK_KEYS", "Work", "ddpm_work", "legacy_work", "measured_work", "smc_potentials"]
