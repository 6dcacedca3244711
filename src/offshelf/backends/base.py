"""The one interface between the workflow (or the ``offshelf`` command) and a diffusion family.

A backend answers, for one family of pretrained (or workflow-trained) networks:

* **planning** (cheap, no file is read): which files a setting needs (:meth:`Backend.files`),
  which files evaluation needs, which settings it cannot run and why (:meth:`Backend.unsupported`);
* **loading** those files onto a device (:meth:`Backend.load`);
* **sampling** a batch for a setting and its per-sample seeds (:meth:`Backend.sample`);
* converting images to uint8 **exactly as its original implementation does** (:meth:`Backend.to_uint8`);
* the **feature extractor** it is evaluated with, and the reference it is compared against
  (:meth:`Backend.feature_extractor`, :meth:`Backend.reference`).

A file is either :class:`Pretrained` (a name in the verified checkpoint registry, downloaded by the
``fetch_checkpoint`` rule or given by ``checkpoints.local``) or :class:`Trained` (a network the
workflow trains itself with :meth:`Backend.train`, written to ``models/<role>.pt``).

Backends are constructed from their *options*: the part of the workflow config their jobs depend
on (:meth:`Backend.options_from_config`). Options travel to every job as a param, so a changed
option reruns exactly the jobs that use it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

import numpy as np
import torch

from offshelf.settings import Setting


@dataclass(frozen=True)
class Pretrained:
    """A file from the verified checkpoint registry (:mod:`offshelf.checkpoints`)."""

    name: str


@dataclass(frozen=True)
class Trained:
    """A network the workflow trains itself (:meth:`Backend.train`), stored as ``models/<role>.pt``."""

    role: str


FileSource = Pretrained | Trained


@dataclass
class FeatureExtractor:
    """How samples are judged: ``features(uint8 NHWC) -> [n, d]`` for FID and precision/recall,
    and optionally ``logits`` for class accuracy. It must never be one of the guiding networks."""

    features: Callable[[np.ndarray], np.ndarray]
    logits: Callable[[np.ndarray], np.ndarray] | None = None
    batch_size: int = 200
    name: str = ""
    device: Any = None  # where precision/recall compute their distances (None: the CPU)


@dataclass
class Reference:
    """What samples are compared against: feature statistics for FID (``stats``: ``mu``/``sigma``;
    None means: computed from ``features``) and real-image features for precision/recall."""

    features: np.ndarray | None = None
    stats: Any = None


def guidance_for(setting: Setting, offshelf: torch.nn.Module | None, finetuned: torch.nn.Module | None = None):
    """The guidance a setting describes, for every backend (None when unguided or CFG).

    The off-the-shelf classifier gets Softplus(β) surgery (on a copy) and the calibrated
    temperatures, and sees the setting's input (x̂0 or x_t); the fine-tuned classifier is used as
    ADM's baseline did (x_t and t, plain log-softmax); ``combined`` switches at ``switch_step``."""
    from offshelf.classifiers.softplus import softplus_surgery
    from offshelf.guidance import ClassifierGuidance, SwitchedGuidance

    if setting.method != "guided":
        return None

    def off_the_shelf() -> ClassifierGuidance:
        if offshelf is None:
            raise ValueError(f"setting {setting.name}: no off-the-shelf classifier was loaded")
        return ClassifierGuidance(softplus_surgery(offshelf, setting.softplus_beta), setting.joint_temperature,
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


class JudgeIsGuideError(ValueError):
    """The evaluation network is one of the classifiers that guide: FID and accuracy would reward
    samples for fooling their own judge. The message names both files."""


def _describe(source: FileSource) -> str:
    return f"trained role {source.role!r}" if isinstance(source, Trained) else f"registry file {source.name!r}"


def _same_network(guide: FileSource, judge: FileSource, path_of: Callable[[FileSource], str] | None,
                  registry_file: Any) -> str | None:
    """Why ``guide`` and ``judge`` are one file (the reason, for the error), or None.

    Identical sources, then identical paths (``path_of``: where the workflow finds a source),
    then identical content: the registry's sha256 pins of two pretrained files, else, when both
    files exist with the same size (a cheap stat first: different networks differ in size), their
    sha256 (offshelf.checkpoints.file_sha256, cached by file identity)."""
    import os

    if guide == judge:
        return "the same source"
    if path_of is None:
        return None
    guide_path, judge_path = path_of(guide), path_of(judge)
    if os.path.realpath(guide_path) == os.path.realpath(judge_path):
        return f"the same file {guide_path}"
    from offshelf.checkpoints import file_sha256, get

    if isinstance(guide, Pretrained) and isinstance(judge, Pretrained):
        pins = [get(source.name, registry_file).sha256 for source in (guide, judge)]
        if pins[0] is not None and pins[0] == pins[1]:
            return f"files pinned to the same sha256 {pins[0]} in the checkpoint registry"
    if (os.path.isfile(guide_path) and os.path.isfile(judge_path)
            and os.path.getsize(guide_path) == os.path.getsize(judge_path)):
        digest = file_sha256(guide_path)
        if digest == file_sha256(judge_path):
            return f"identical files {guide_path} and {judge_path} (sha256 {digest})"
    return None


def check_judge_is_not_a_guide(backend: "Backend", settings, path_of: Callable[[FileSource], str] | None = None,
                               registry_file: Any = None) -> None:
    """Refuse a plan in which the network that judges samples (:meth:`Backend.evaluation_files`)
    is a classifier that guides one of ``settings`` (:meth:`Backend.guiding_files`): same source,
    same file, or same content (see :func:`_same_network`).
    Raises :class:`JudgeIsGuideError` naming the setting and both files."""
    judges = backend.evaluation_files()
    seen: set[tuple[FileSource, FileSource]] = set()
    for setting in settings:
        for role, guide in backend.guiding_files(setting).items():
            for judge_role, judge in judges.items():
                if (guide, judge) in seen:
                    continue
                seen.add((guide, judge))
                reason = _same_network(guide, judge, path_of, registry_file)
                if reason:
                    raise JudgeIsGuideError(
                        f"setting {setting.name}: its guiding classifier {role!r} ({_describe(guide)}) and the "
                        f"evaluation network {judge_role!r} ({_describe(judge)}) are {reason}; the network that "
                        f"judges samples must never guide them: give the judge or the guide another file")


class UnsupportedError(ValueError):
    """A backend was asked for something it does not do; the message says why."""


class Backend(ABC):
    """One diffusion family. Subclasses set :attr:`name`, :attr:`num_classes` and implement the
    abstract methods; everything else has a default that suits most families."""

    name: ClassVar[str] = ""
    #: classes of the label space (ImageNet: 1000)
    num_classes: ClassVar[int] = 0
    #: analytic figures of the DDPM guidance schedule the report can show for this family
    analytic_figures: ClassVar[tuple[str, ...]] = ()
    #: whether its numbers are comparable with the paper's (the report adds measured − paper)
    paper_comparable: ClassVar[bool] = False
    #: length of the discrete schedule ``sampling.respacing`` respaces (None: the family takes none)
    num_train_timesteps: ClassVar[int | None] = None
    #: whether its sampler takes EDM's stochastic churn (``Setting.S_churn`` > 0)
    takes_churn: ClassVar[bool] = False

    def __init__(self, options: Mapping[str, Any] | None = None):
        self.options: dict[str, Any] = dict(options or {})

    @classmethod
    def options_from_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """The config values this backend's load, sample and evaluation jobs depend on (a job param
        of each, so keep out what they do not use: it would rerun them). Default: none."""
        return {}

    @classmethod
    def training_from_config(cls, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Role -> parameters of the training job of each :class:`Trained` role (default: none)."""
        return {}

    # ------------------------------------------------------------------ planning (no I/O)

    @property
    @abstractmethod
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images a sample job writes (before uint8 NHWC conversion)."""

    @abstractmethod
    def files(self, setting: Setting) -> dict[str, FileSource]:
        """Role -> file the networks of ``setting`` are loaded from."""

    def guiding_files(self, setting: Setting) -> dict[str, FileSource]:
        """The files of :meth:`files` whose networks guide ``setting`` (checked against the judge:
        :func:`check_judge_is_not_a_guide`): the ``offshelf`` and/or ``finetuned`` role its
        ``classifier`` names; none for an unguided or CFG setting."""
        if setting.method != "guided":
            return {}
        roles = {"offshelf": ("offshelf",), "finetuned": ("finetuned",), "combined": ("offshelf", "finetuned")}
        files = self.files(setting)
        return {role: files[role] for role in roles[setting.classifier] if role in files}

    def evaluation_files(self) -> dict[str, FileSource]:
        """Role -> file of the feature extractor and the reference (default: none)."""
        return {}

    def unsupported(self, setting: Setting) -> str | None:
        """Why this family cannot run ``setting`` (the report prints it), or None."""
        return self.churn_unsupported(setting)

    def churn_unsupported(self, setting: Setting) -> str | None:
        """A row with S_churn > 0 on a sampler without churn is reported, not silently run
        deterministic under a stochastic name (every ``unsupported`` override returns this)."""
        if setting.S_churn and not self.takes_churn:
            return "S_churn is EDM's stochastic sampler (edm64); this backbone's sampler has no churn"
        return None

    def has_reference_features(self) -> bool:
        """Whether real-image features exist for precision/recall (a ``reference_features`` job)."""
        return True

    def train(self, role: str, params: Mapping[str, Any], out_path: str, progress: bool = False) -> dict:
        """Train a :class:`Trained` role from ``params`` alone (its job's only knob) and write its
        checkpoint to ``out_path``; returns metrics."""
        raise UnsupportedError(f"backend {self.name!r} trains no networks (role {role!r})")

    # ------------------------------------------------------------------ jobs

    @abstractmethod
    def load(self, files: Mapping[str, str], sampling: Mapping[str, Any], setting: Setting | None = None) -> Any:
        """The networks of one job from role -> path (the roles of :meth:`files` for ``setting``),
        on the backend's device; ``sampling`` is the config's sampling section (respacing...)."""

    @abstractmethod
    def sample(self, models: Any, setting: Setting, seeds: list[int], progress: bool = False,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] (float, NCHW) and their target labels for ``seeds``; each sample
        depends on its own seed only, so any split into batches gives the same images."""

    @abstractmethod
    def to_uint8(self, images: torch.Tensor) -> np.ndarray:
        """uint8 NHWC, converted exactly as the family's original implementation writes its samples."""

    def work_per_sample(self, setting: Setting, sampling: Mapping[str, Any]) -> dict[str, int]:
        """Network evaluations one sample of ``setting`` costs: ``denoiser`` forward passes (per
        sample: a CFG pair counts 2) and ``classifier`` forward+backward passes. For cost plans."""
        raise UnsupportedError(f"backend {self.name!r} does not count its network evaluations")

    def calibration_profile(self, models: Any, probe: Setting, seeds: list[int], batch_size: int,
                            num_bins: int = 15, guided: bool = False, judge=None):
        """Per-step ECE of a classifier variant along the reverse process (a pandas table): along
        unguided conditional trajectories, or with ``guided`` along those ``probe`` itself samples
        (its classifier guiding with its design and scale), measured by the guidance that guides.
        A prediction is correct when it is the trajectory's label or, given ``judge`` (x̂0 ->
        classes), the class that network sees in the step's x̂0 (``CalibrationRecorder``)."""
        raise UnsupportedError(f"backend {self.name!r} does not profile calibration")

    def gradient_trajectories(self, models: Any, base: Setting, marginal_temperatures: dict[str, float],
                              label: int, steps: list[int], seed: int = 0) -> dict[str, list[np.ndarray]]:
        """Figure 4's panels: x̂0 and the guidance gradient of one sample at chosen steps."""
        raise UnsupportedError(f"backend {self.name!r} does not record gradient trajectories")

    @abstractmethod
    def feature_extractor(self, files: Mapping[str, str]) -> FeatureExtractor:
        """The network that judges samples, from the roles of :meth:`evaluation_files`."""

    def reference_features(self, files: Mapping[str, str], extractor: FeatureExtractor,
                           evaluation: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Arrays of the ``reference_features`` job (at least ``features``: real images' features);
        ``evaluation`` is the config's evaluation section."""
        raise UnsupportedError(f"backend {self.name!r} has no reference images")

    def held_out_images(self, count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Real images in [-1, 1] (float NCHW) and their labels that no network of this backend was
        trained on (``offshelf tune``'s Stage 1 noises and denoises them); the first ``count``."""
        raise UnsupportedError(f"backend {self.name!r} has no held-out images (offshelf tune's calibration "
                               f"stage needs labelled real images no network was trained on)")

    def reference(self, files: Mapping[str, str], reference_features: Mapping[str, np.ndarray] | None) -> Reference:
        """What an evaluation compares against (default: the reference features alone)."""
        features = None if reference_features is None else np.asarray(reference_features["features"])
        return Reference(features=features)

    def provenance(self, files: Mapping[str, str]) -> dict[str, Any]:
        """Extra facts an evaluation records in its metrics file (protocol, file hashes)."""
        return {}
