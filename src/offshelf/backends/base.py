"""The one interface between the workflow (or the ``offshelf`` command) and a diffusion family.

A backend answers, for one family of pretrained (or workflow-trained) networks:

* **planning** (cheap, no file is read): which files a setting needs (:meth:`Backend.files`),
  which files evaluation needs, which settings it cannot run and why (:meth:`Backend.unsupported`);
* **loading** those files onto a device (:meth:`Backend.load`);
* **sampling** a batch for a setting and its per-sample seeds (:meth:`Backend.sample`);
* converting images to uint8 **exactly as its original implementation does** (:meth:`Backend.to_uint8`);
* the **feature extractor** it is evaluated with, and the reference it is compared against
  (:meth:`Backend.feature_extractor`, :meth:`Backend.reference`).

The **required core** is seven members: ``num_classes`` (a class attribute) and the six abstract
ones, ``image_shape``, ``files``, ``load``, ``sample``, ``to_uint8``, ``feature_extractor``
(:data:`REQUIRED`). Everything else either has a default (``name``, ``options_from_config``,
``evaluation_files``, ``guiding_files``, ``unsupported``, ``reference``) or is an optional
**capability** the class declares in ``capabilities`` (:mod:`offshelf.backends.capabilities`:
training, calibration, gradient trajectories, tuning, cost, analytic figures, reference features,
provenance, respacing, paper comparability). Nothing is found out by calling.

A file is either :class:`Pretrained` (a name in the verified checkpoint registry, downloaded by the
``fetch_checkpoint`` rule or given by ``checkpoints.local``) or :class:`Trained` (a network the
workflow trains itself (capability ``training``: ``train``), written to ``models/<role>.pt``).

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

from offshelf.backends.capabilities import Capability
from offshelf.settings import Setting


@dataclass(frozen=True)
class Pretrained:
    """A file from the verified checkpoint registry (:mod:`offshelf.checkpoints`)."""

    name: str


@dataclass(frozen=True)
class Trained:
    """A network the workflow trains itself (capability ``training``), stored as ``models/<role>.pt``."""

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


#: the required core: the class attribute and the abstract members every backend defines
REQUIRED = ("num_classes", "image_shape", "files", "load", "sample", "to_uint8", "feature_extractor")


class Backend(ABC):
    """One diffusion family: the required core (:data:`REQUIRED`), a few members with defaults,
    and the optional capabilities it declares in :attr:`capabilities`."""

    #: its name in messages and shards (default: the class name)
    name: ClassVar[str] = ""
    #: classes of the label space (ImageNet: 1000); required
    num_classes: ClassVar[int] = 0
    #: how its samples' labels follow from their seeds, checked on every shard read
    #: (:func:`offshelf.shards.load_shards`): ``"draw_labels"`` = :func:`offshelf.seeding.draw_labels`
    #: of the shard's seeds; None: not a function of the seeds offshelf knows (only their range is
    #: checked). Declare it where :meth:`sample` is defined, and only if that sample draws its labels so.
    seed_labels: ClassVar[str | None] = None
    #: the optional capabilities it implements (:class:`~offshelf.backends.capabilities.Capability`)
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    #: its part of the config schema: a mapping with ``properties`` (its config section) and
    #: ``$defs``, or the name of such a YAML file beside the module that sets it; merged into the
    #: main schema by :func:`offshelf.config.validate_config` (None: no section of its own)
    config_schema: ClassVar[str | Mapping[str, Any] | None] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.name:
            cls.name = cls.__name__
        cls.capabilities = frozenset(Capability(c) for c in cls.capabilities)

    def __init__(self, options: Mapping[str, Any] | None = None):
        if not (isinstance(self.num_classes, int) and self.num_classes > 0):
            raise TypeError(f"backend {self.name!r}: class attribute num_classes must be a positive int "
                            f"(the required core: {', '.join(REQUIRED)})")
        self.options: dict[str, Any] = dict(options or {})

    @classmethod
    def options_from_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """The config values this backend's load, sample and evaluation jobs depend on (a job param
        of each, so keep out what they do not use: it would rerun them). Default: none."""
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
        :func:`offshelf.judge.check_judge_is_not_a_guide`): the ``offshelf`` and/or ``finetuned``
        role its ``classifier`` names; none for an unguided or CFG setting."""
        if not setting.uses_classifier:
            return {}
        roles = {"offshelf": ("offshelf",), "finetuned": ("finetuned",), "combined": ("offshelf", "finetuned")}
        files = self.files(setting)
        return {role: files[role] for role in roles[setting.classifier] if role in files}

    def evaluation_files(self) -> dict[str, FileSource]:
        """Role -> file of the feature extractor and the reference (default: none). Never a file
        of :meth:`files`: the judge is not a guide (:mod:`offshelf.judge`)."""
        return {}

    def unsupported(self, setting: Setting) -> str | None:
        """Why this family cannot run ``setting`` beyond what its capabilities declare (the report
        prints it), or None. Callers ask :func:`offshelf.backends.capabilities.unavailable`."""
        return None

    # ------------------------------------------------------------------ jobs

    @abstractmethod
    def load(self, files: Mapping[str, str], sampling: Mapping[str, Any], setting: Setting | None = None) -> Any:
        """The networks of one job from role -> path (the roles of :meth:`files` for ``setting``),
        on the backend's device; ``sampling`` is the config's sampling section (respacing...)."""

    @abstractmethod
    def sample(self, models: Any, setting: Setting, seeds: list[int], progress: bool = False,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] (float, NCHW) and their target labels for ``seeds``; each sample
        depends on its own seed only, so any split into batches gives the same images. A backend
        declaring capability ``chosen_classes`` also takes ``labels=`` (a class per seed,
        ``offshelf sample --classes``); the workflow never passes it, so a backend need not."""

    @abstractmethod
    def to_uint8(self, images: torch.Tensor) -> np.ndarray:
        """uint8 NHWC, converted exactly as the family's original implementation writes its samples."""

    @abstractmethod
    def feature_extractor(self, files: Mapping[str, str]) -> FeatureExtractor:
        """The network that judges samples, from the roles of :meth:`evaluation_files`."""

    def reference(self, files: Mapping[str, str], reference_features: Mapping[str, np.ndarray] | None) -> Reference:
        """What an evaluation compares against (default: the reference features alone)."""
        features = None if reference_features is None else np.asarray(reference_features["features"])
        return Reference(features=features)
