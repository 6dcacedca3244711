"""Sample shards on disk, with numpy alone: write one, read one, read a run's shards checked against
the plan. Kept apart from offshelf.metrics and offshelf.stages (both import torch) so a job that only
reads shards, such as a sample grid, does not pay torch's import (seconds, more than the job itself).

A shard is in the ADM evaluator's layout (guided-diffusion ``classifier_sample.py``): ``arr_0``
uint8 NHWC images in [0, 255] and ``arr_1`` integer labels; the workflow's shards add their
``seeds`` and sampling ``seconds``.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from offshelf.atomic import save_npz


class HasShardFormat(Protocol):
    """What a shard check needs to know of a backend: a backend itself, or its :class:`ShardFormat`."""

    @property
    def name(self) -> str: ...

    @property
    def image_shape(self) -> tuple[int, int, int]: ...  # C, H, W

    @property
    def num_classes(self) -> int: ...

    # optional: ``seed_labels`` (offshelf.backends.base.Backend.seed_labels), read with getattr. A
    # ShardFormat has none, so a grid job (which must not import torch) checks the labels' range
    # only; the evaluation of the same setting reads the same shards with the backend and checks
    # them against the seeds.


#: The label rules :func:`load_shards` can check (``Backend.seed_labels``).
SEED_LABEL_RULES = ("draw_labels",)


@dataclass(frozen=True)
class ShardFormat:
    """A backend's name, image shape (C, H, W) and number of classes: what its shards must hold,
    passed to a job as a plain param so the job need not create the backend (and import torch)."""

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int

    @classmethod
    def of(cls, backend: HasShardFormat) -> ShardFormat:
        return cls(backend.name, tuple(backend.image_shape), backend.num_classes)

    @classmethod
    def from_param(cls, param: Mapping[str, Any]) -> ShardFormat:
        """Back from :meth:`param` (a job's params hold lists, not tuples)."""
        return cls(param["name"], tuple(param["image_shape"]), param["num_classes"])

    def param(self) -> dict[str, Any]:
        """A job param of plain values, so the job reads it without creating the backend."""
        return {"name": self.name, "image_shape": list(self.image_shape), "num_classes": self.num_classes}


def check_images(images, where: str, key: str = "arr_0") -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        dtype = getattr(images, "dtype", type(images).__name__)
        hint = ""
        if isinstance(images, np.ndarray) and images.dtype.kind == "f" and images.size:
            low, high = float(np.nanmin(images)), float(np.nanmax(images))
            hint = f" (values lie in [{low:.3g}, {high:.3g}]"
            hint += "; looks like [0, 1] floats: store (x * 255).round().clip(0, 255).astype(np.uint8))" if high <= 1.0 else ")"
        raise ValueError(f"{where}: {key} has dtype {dtype}, expected uint8 NHWC images in [0,255]{hint}")
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"{where}: {key} has shape {tuple(images.shape)}, expected uint8 NHWC images with C in {{1, 3}}")


def open_npz(path: Path, what: str):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a readable .npz file (expected a zip archive of .npy arrays)")
    return np.load(path, allow_pickle=False)


def load_samples(path, require_labels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Read one sample shard: ``arr_0`` uint8 [N, H, W, C] (C in {1, 3}) and ``arr_1`` int [N].

    With ``require_labels=False`` a missing ``arr_1`` returns ``None`` labels (ADM reference
    batches and unconditional samples carry images only).
    """
    path = Path(path)
    data = open_npz(path, "sample shard")
    try:
        with data:
            keys = list(data.keys())
            if "arr_0" not in keys:
                raise ValueError(f"{path}: missing key arr_0 (uint8 NHWC images); found keys {keys}")
            images = data["arr_0"]
            labels = data["arr_1"] if "arr_1" in keys else None
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ValueError(f"{path}: not a readable .npz file ({error})") from error
    check_images(images, str(path))
    if labels is None:
        if require_labels:
            raise ValueError(f"{path}: missing key arr_1 (integer class labels, one per image); found keys {keys}")
        return images, None
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: arr_1 has dtype {labels.dtype} and shape {labels.shape}, expected 1-D integer labels")
    if len(labels) != len(images):
        raise ValueError(f"{path}: arr_1 has {len(labels)} labels but arr_0 has {len(images)} images; expected equal lengths")
    return images, labels.astype(np.int64)


def load_sample_dir(folder, pattern: str = "*.npz", require_labels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Concatenate all shards in ``folder`` in sorted file-name order (shards are seed ranges)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: sample folder not found")
    paths = sorted(folder.glob(pattern))
    if not paths:
        raise ValueError(f"{folder}: no sample shards matching {pattern!r}; expected ADM-layout .npz files (arr_0, arr_1)")
    images, labels = [], []
    for path in paths:
        shard_images, shard_labels = load_samples(path, require_labels=require_labels)
        if images and shard_images.shape[1:] != images[0].shape[1:]:
            raise ValueError(f"{path}: images have shape {shard_images.shape[1:]} (HWC), expected {images[0].shape[1:]} like {paths[0].name}")
        if labels and (shard_labels is None) != (labels[0] is None):
            raise ValueError(f"{path}: arr_1 present in some shards and missing in others")
        images.append(shard_images)
        labels.append(shard_labels)
    return np.concatenate(images), (None if labels[0] is None else np.concatenate(labels))


def save_shard(path, images: np.ndarray, labels: np.ndarray, seeds: Sequence[int], seconds: float,
               facts: Mapping[str, Any] | None = None, classes: Sequence[int] | None = None) -> None:
    """ADM evaluator layout (``arr_0`` uint8 NHWC, ``arr_1`` labels) plus provenance (seeds, seconds),
    ``facts`` of the job that drew it (:data:`SHARD_FACTS`: the batch size it used, e.g. the one
    ``batch_size: auto`` found, its speed levers and their compile seconds) and, for samples of
    chosen classes (``offshelf sample --classes``), the ``classes`` cycled over the shard's samples
    (sample i: ``classes[i mod len]``), so its labels can be checked against them."""
    extra = {} if classes is None else {"classes": np.asarray(classes, dtype=np.int64)}
    for key, value in (facts or {}).items():
        if key not in SHARD_FACTS:
            raise ValueError(f"save_shard: fact {key!r}; expected one of {', '.join(SHARD_FACTS)}")
        extra[key] = np.asarray(value, dtype=SHARD_FACTS[key])
    save_npz(path, arr_0=images, arr_1=labels, seeds=np.asarray(seeds, dtype=np.int64), seconds=np.float64(seconds),
             **extra)


#: what a shard may record of the job that drew it, and as which dtype (none changes its images)
SHARD_FACTS = {"batch_size": np.int64, "compile_seconds": np.float64, "levers": np.str_}


def load_shards(backend: HasShardFormat, shard_paths: Sequence[str], expected_seeds: Sequence[Sequence[int]] | None = None,
                num_samples: int | None = None, chosen_classes: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Images and labels of the shards in order, cut to the first ``num_samples``, and the sampling
    time of the samples kept (a partly used shard counts pro rata).

    Every shard is checked against what the plan says it holds, naming the file on a mismatch: the
    backend's image shape, the planned seeds (``expected_seeds[i]``: first seed and count, or the
    full list), labels within the backend's classes and, for a backend whose labels are a function
    of the seeds (``seed_labels``), equal to the labels the shard's seeds draw. ``backend``: the
    backend or its :class:`ShardFormat`. A shard of chosen classes (``offshelf sample --classes``:
    it records them) is read only with ``chosen_classes`` (``offshelf evaluate``; the workflow's
    samples draw their classes from their seeds), its labels checked against the classes it records.
    Each error ends with how to recover (:data:`RECOVER`)."""
    c, h, w = backend.image_shape
    images, labels, seconds = [], [], 0.0
    for i, path in enumerate(shard_paths):
        try:
            x, y = load_samples(path)
        except ValueError as err:  # not a shard at all: the same way back
            raise ValueError(f"{err}{RECOVER}") from None
        if x.shape[1:] != (h, w, c):
            raise ValueError(f"{path}: images are {x.shape[1]}x{x.shape[2]} with {x.shape[3]} channel(s) (HWC "
                             f"{tuple(x.shape[1:])}); backend {backend.name!r} writes HWC {(h, w, c)}{RECOVER}")
        if len(y) and (y.min() < 0 or y.max() >= backend.num_classes):
            raise ValueError(f"{path}: labels span {y.min()}..{y.max()}; backend {backend.name!r} has classes "
                             f"0..{backend.num_classes - 1}{RECOVER}")
        with np.load(path) as shard:
            seeds = shard["seeds"] if "seeds" in shard.files else None
            shard_seconds = float(shard["seconds"]) if "seconds" in shard.files else float("nan")
            classes = shard["classes"] if "classes" in shard.files else None
        if expected_seeds is not None:
            expected = seed_list(expected_seeds[i])
            if seeds is None or len(seeds) != len(x) or list(map(int, seeds)) != expected:
                held = "no seeds" if seeds is None else f"{len(x)} samples with seeds {_describe(seeds)}"
                raise ValueError(f"{path}: holds {held}; the plan puts {len(expected)} samples with seeds "
                                 f"{_describe(expected)} in this shard (a shard of another run or config?){RECOVER}")
        if classes is not None:
            if not chosen_classes:
                raise ValueError(f"{path}: holds samples of chosen classes {classes.tolist()} (offshelf sample "
                                 f"--classes); the plan's samples draw their class from their seed{RECOVER}")
            check_chosen_labels(path, classes, y)
        elif seeds is not None and len(seeds) == len(y):
            check_seed_labels(backend, path, seeds, y)
        kept = len(x) if num_samples is None else max(0, min(len(x), num_samples - sum(map(len, images))))
        images.append(x[:kept])
        labels.append(y[:kept])
        seconds += shard_seconds * kept / max(len(x), 1)
    images, labels = np.concatenate(images), np.concatenate(labels)
    if num_samples is not None and len(images) < num_samples:
        raise ValueError(f"shards {shard_paths[0]} .. hold {len(images)} samples, {num_samples} requested{RECOVER}")
    return images, labels, seconds


#: How to recover from a shard that fails its check, appended to every such error.
RECOVER = ("; to recover, delete this shard and rerun: the workflow samples it again (or, for "
           "`offshelf evaluate`, pass the shards `offshelf sample` wrote for these seeds)")


def check_seed_labels(backend: HasShardFormat, path, seeds, labels) -> None:
    """A backend whose labels are a function of the seeds (``seed_labels``): the shard's labels
    must be the ones its seeds draw; one line naming the file and the first sample that differs."""
    rule = getattr(backend, "seed_labels", None)
    if rule is None or not len(seeds):
        return
    if rule not in SEED_LABEL_RULES:
        raise ValueError(f"backend {backend.name!r}: seed_labels = {rule!r}; expected one of {SEED_LABEL_RULES} or None")
    from offshelf.seeding import draw_labels  # torch: paid only by a backend that declares its labels

    expected = draw_labels([int(s) for s in seeds], backend.num_classes).numpy()
    _refuse_other_labels(path, labels, expected, "the ones their seeds draw (offshelf.seeding.draw_labels)",
                         lambda i, got, want: f"seed {int(seeds[i])} has label {got}, its seed draws {want}")


def check_chosen_labels(path, classes: np.ndarray, labels: np.ndarray) -> None:
    """A shard of chosen classes: sample i's label must be ``classes[i mod len(classes)]``, the cycle
    ``offshelf sample --classes`` gives its seeds; one line naming the file and the first that differs."""
    if classes.ndim != 1 or classes.dtype.kind not in "iu" or not len(classes):
        raise ValueError(f"{path}: 'classes' is {classes.dtype} of shape {classes.shape}, expected the 1-D "
                         f"integer classes offshelf sample --classes chose{RECOVER}")
    expected = classes[np.arange(len(labels)) % len(classes)]
    _refuse_other_labels(path, labels, expected,
                         f"the classes the shard records ({classes.tolist()}, cycled over its samples)",
                         lambda i, got, want: f"sample {i} has label {got}, expected {want}")


def _refuse_other_labels(path, labels, expected, source: str, first_mismatch) -> None:
    """One line naming the file, how many labels differ from ``expected`` (which ``source`` names)
    and the first that does, as ``first_mismatch(index, label, expected label)`` words it."""
    wrong = np.flatnonzero(np.asarray(labels) != expected)
    if len(wrong):
        i = int(wrong[0])
        raise ValueError(f"{path}: {len(wrong)} of {len(labels)} labels are not {source}: "
                         f"{first_mismatch(i, int(labels[i]), int(expected[i]))} "
                         f"(labels reordered or from another shard?){RECOVER}")


def seed_list(spec: Sequence[int]) -> list[int]:
    """``[first, count]`` (the workflow's param) or the seeds themselves."""
    return list(range(int(spec[0]), int(spec[0]) + int(spec[1]))) if len(spec) == 2 else [int(s) for s in spec]


def _describe(seeds) -> str:
    seeds = [int(s) for s in seeds]
    return "none" if not seeds else f"{seeds[0]}..{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) \
        else f"{seeds[:4]}..."
