"""What a backend can do beyond its required core, declared rather than discovered.

A backend class lists its optional capabilities in ``capabilities`` (a frozenset of
:class:`Capability` values). The planner, the config validation, the workflow's rules and the
``offshelf`` command read that declaration (``Capability.TUNING in backend_class.capabilities``):
no capability is found out by calling a method and catching an error. ``tests/unit/test_backends_capabilities.py``
checks every built-in backend (and the toy plug-in) declares exactly the capabilities it implements
(:data:`MEMBERS`: the members each capability brings).

An instance may *narrow* its class's declaration from its options, never widen it (ImageNet:
a reference batch without images, EDM's fid-refs, has no ``reference_features``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Capability(StrEnum):
    TRAINING = "training"                        # networks the workflow trains (Trained roles)
    CALIBRATION = "calibration"                  # per-step ECE profiles (ice columns, Figures 1-2)
    GRADIENTS = "gradient_trajectories"          # Figure 4's x̂0 / gradient panels
    TUNING = "tuning"                            # offshelf tune: held-out images + a pixel DDPM sampler
    COST = "cost"                                # network evaluations per sample (cost plans, searches)
    ANALYTIC_FIGURES = "analytic_figures"        # the family's analytic figures in the report
    REFERENCE_FEATURES = "reference_features"    # real-image features (precision/recall)
    PROVENANCE = "provenance"                    # extra facts in every metrics file
    RESPACING = "respacing"                      # a discrete schedule sampling.respacing respaces
    PAPER_COMPARABLE = "paper_comparable"        # numbers comparable with the paper's (a flag)
    STOCHASTIC = "stochastic_sampling"           # EDM's churn: settings with S_churn > 0 (a flag)
    PARTICLES = "particle_sampling"              # Best-of-N and SMC settings (offshelf.samplers.particles; a flag)
    THROUGH_DENOISER = "through_denoiser"        # guided settings with through_denoiser (a flag)
    GPU = "gpu"                                  # its networks run on a GPU: each job loading them asks for one (a flag)
    CHOSEN_CLASSES = "chosen_classes"            # sample(labels=...): a class per seed, chosen by the caller (a flag)


#: capability -> the members (methods, class attributes) a backend declaring it defines
MEMBERS: dict[Capability, tuple[str, ...]] = {
    Capability.TRAINING: ("training_from_config", "train"),
    Capability.CALIBRATION: ("calibration_profile",),
    Capability.GRADIENTS: ("gradient_trajectories",),
    Capability.TUNING: ("held_out_images",),
    Capability.COST: ("work_per_sample",),
    Capability.ANALYTIC_FIGURES: ("analytic_figures",),
    Capability.REFERENCE_FEATURES: ("reference_features",),
    Capability.PROVENANCE: ("provenance",),
    Capability.RESPACING: ("num_train_timesteps",),
    Capability.PAPER_COMPARABLE: (),
    Capability.STOCHASTIC: (),
    Capability.PARTICLES: (),
    Capability.THROUGH_DENOISER: (),
    Capability.GPU: (),
    Capability.CHOSEN_CLASSES: (),  # a parameter of the required ``sample``, not a member
}

#: capabilities that need others (tuning calibrates along the family's reverse process)
NEEDS: dict[Capability, frozenset[Capability]] = {
    Capability.TUNING: frozenset({Capability.CALIBRATION, Capability.COST}),
}


class UnsupportedError(ValueError):
    """A backend was asked for something it does not do (or not with these options); the message says why."""


def _name(backend: Any) -> str:
    return getattr(backend, "name", "") or type(backend).__name__


def has(backend: Any, capability: Capability | str) -> bool:
    """Whether a backend (class or instance) declares ``capability``."""
    return Capability(capability) in backend.capabilities


def require(backend: Any, capability: Capability | str, needed_by: str = "") -> None:
    """Raise :class:`UnsupportedError` (one line, naming the backend and the capability) unless
    ``backend`` declares ``capability``."""
    capability = Capability(capability)
    if capability not in backend.capabilities:
        members = ", ".join(MEMBERS[capability]) or "a declaration"
        why = f" ({needed_by} needs it)" if needed_by else ""
        raise UnsupportedError(f"backend {_name(backend)!r} does not declare capability {capability.value!r}"
                               f"{why}; a backend declaring it implements {members}")


def implemented(cls: type) -> frozenset[Capability]:
    """The capabilities whose members ``cls`` defines (flags without members are not detectable)."""
    return frozenset(c for c, names in MEMBERS.items()
                     if names and all(getattr(cls, n, None) not in (None, ()) for n in names))


#: The speed levers of ``sampling:`` (offshelf.levers) each built-in backend supports, declared here
#: so the config check knows them without loading a network. ``denoiser_fp16`` is the family's own
#: fp16 conversion (ADM's ``use_fp16``, EDM's ``use_fp16``); DiT's transformer has none. channels_last
#: converts the 4-D weights of every network (the ADM and EDM UNets, the ResNets, DiT's VAE decoder;
#: in DiT's transformer only the patch embedding has any). A backend not listed (a plug-in) supports none.
LEVERS: dict[str, frozenset[str]] = {
    "digits": frozenset({"denoiser_bf16", "classifier_bf16", "channels_last", "compile", "auto_batch"}),
    "adm128": frozenset({"denoiser_fp16", "denoiser_bf16", "classifier_bf16", "channels_last", "compile",
                         "auto_batch"}),
    "edm64": frozenset({"denoiser_fp16", "denoiser_bf16", "classifier_bf16", "channels_last", "compile",
                        "auto_batch"}),
    "dit256": frozenset({"denoiser_bf16", "classifier_bf16", "channels_last", "compile", "auto_batch"}),
}


def requested_levers(sampling: Any) -> dict[str, str]:
    """Config key -> lever name for each lever ``sampling`` turns on (fp32 and false are off; a
    denoiser precision of fp32 is always available: it turns a family's own fp16 off)."""
    sampling = sampling or {}
    precision = sampling.get("precision") or {}
    asked = {}
    if precision.get("denoiser") not in (None, "fp32"):
        asked["sampling.precision.denoiser"] = f"denoiser_{precision['denoiser']}"
    if precision.get("classifier") not in (None, "fp32"):
        asked["sampling.precision.classifier"] = f"classifier_{precision['classifier']}"
    if sampling.get("channels_last"):
        asked["sampling.channels_last"] = "channels_last"
    if sampling.get("compile"):
        asked["sampling.compile"] = "compile"
    if sampling.get("batch_size") == "auto":
        asked["sampling.batch_size"] = "auto_batch"
    return asked


def unsupported_lever(backend: Any, sampling: Any) -> str | None:
    """One line naming the first ``sampling`` key asking for a lever ``backend`` does not declare
    (:data:`LEVERS`), or None."""
    supported = LEVERS.get(_name(backend), frozenset())
    for key, lever in requested_levers(sampling).items():
        if lever not in supported:
            value = key.removeprefix("sampling.")
            return (f"config key {key!r}: backend {_name(backend)!r} does not support the speed lever {lever!r} "
                    f"(it supports: {', '.join(sorted(supported)) or 'none'}); remove {value!r} or change it")
    return None


def unavailable(backend: Any, setting: Any, chosen_classes: bool = False) -> str | None:
    """Why ``backend`` cannot run ``setting`` (the report prints it), or None: first what its
    declared capabilities rule out, then the family's own :meth:`~offshelf.backends.base.Backend.unsupported`.
    The planner, the sample job, the command line and the tuner all ask through this, so a row
    with churn on a deterministic sampler is reported, never run deterministic under a stochastic name.
    ``chosen_classes``: the caller gives each seed's class (``offshelf sample --classes``)."""
    if getattr(setting, "S_churn", 0) and Capability.STOCHASTIC not in backend.capabilities:
        return (f"S_churn > 0 is EDM's stochastic sampling; backend {_name(backend)!r} does not declare "
                f"capability {Capability.STOCHASTIC.value!r}")
    if getattr(setting, "method", None) in ("best_of_n", "smc") and Capability.PARTICLES not in backend.capabilities:
        return (f"{setting.method} samples candidates or particles (offshelf.samplers.particles); backend "
                f"{_name(backend)!r} does not declare capability {Capability.PARTICLES.value!r}")
    if getattr(setting, "through_denoiser", False) and Capability.THROUGH_DENOISER not in backend.capabilities:
        return (f"through_denoiser backpropagates through the denoiser; backend {_name(backend)!r} does not declare "
                f"capability {Capability.THROUGH_DENOISER.value!r}")
    if chosen_classes and Capability.CHOSEN_CLASSES not in backend.capabilities:
        return (f"backend {_name(backend)!r} draws each seed's class itself: it does not declare capability "
                f"{Capability.CHOSEN_CLASSES.value!r} (a sample() that takes labels=)")
    return backend.unsupported(setting)
