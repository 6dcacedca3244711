"""Sample grids: one line per class, the same seeds in every setting's grid.

A sample's class is a function of its seed alone (``offshelf.seeding.draw_labels`` for the DDPM and
DiT backends, the seed's own generator for EDM), and every setting samples the same seeds, so "the
first k seeds whose label is c" names the same seeds in every setting of a run. Lines of two
settings' grids therefore compare image by image: same seed, same class, same initial noise, only
the setting differs.

The layout (classes and the seeds of each line) is stored in the PNG itself (a text chunk,
:data:`LAYOUT_KEY`), so a grid says what it shows without a sidecar file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from offshelf.atomic import atomic_write
from offshelf.shards import HasShardFormat, load_shards

LAYOUT_KEY = "offshelf:grid"
MIN_TILE = 64  # px: smaller images (the digits' 8x8) are enlarged by an integer factor to at least this
GUTTER = 2  # px between tiles, after enlarging
BACKGROUND = 255  # white gutters and empty tiles: the digits' black backgrounds stay separate tiles
MAX_LINES = 32  # a grid of every ImageNet class would be 1000 lines: a config lists a few
DEFAULTS = {"per_class": 8, "shards": 1}


class GridConfigError(ValueError):
    """The config's ``grids`` section cannot be drawn for this backend; the message names the key."""


def grid_options(grids: Mapping[str, Any] | None, num_classes: int) -> dict[str, Any]:
    """The config's ``grids`` section completed with its defaults (every class when the backend
    has at most :data:`MAX_LINES`), checked against the backend's classes."""
    options = {**DEFAULTS, **(grids or {})}
    if "classes" not in options:
        if num_classes > MAX_LINES:
            raise GridConfigError(f"grids.classes: the backend has {num_classes} classes, too many lines for one "
                                  f"grid; list the classes to show (at most {MAX_LINES})")
        options["classes"] = list(range(num_classes))
    classes = [int(c) for c in options["classes"]]
    wrong = [c for c in classes if not 0 <= c < num_classes]
    if wrong:
        raise GridConfigError(f"grids.classes: {wrong} outside the backend's classes 0..{num_classes - 1}")
    if len(set(classes)) != len(classes):
        raise GridConfigError(f"grids.classes: {classes} lists a class twice")
    options["classes"] = classes
    return options


def grid_shards(config: Mapping[str, Any], sampled: Sequence[int], setting: str) -> list[int]:
    """The leading shards a setting's grid reads: ``grids.shards``, at most the shards the setting
    samples (``sampled``: the sample counts its evaluations read, Plan.sampled_counts; the most of
    them): never its whole 50,000-sample run."""
    if not sampled:
        raise ValueError(f"no table row samples setting {setting!r}: it has no grid")
    return list(range(grid_shard_count(config, max(sampled))))


def grid_shard_count(config: Mapping[str, Any], num_samples: int | None = None) -> int:
    """How many leading shards a grid of a setting sampling ``num_samples`` (default: the config's
    ``sampling.num_samples``) reads: ``grids.shards``, at most the shards it has."""
    from offshelf.planning.params import num_shards

    wanted = (config.get("grids") or {}).get("shards", DEFAULTS["shards"])
    return min(wanted, num_shards(config, num_samples))


def grid_seeds(labels: Sequence[int], seeds: Sequence[int], classes: Sequence[int],
               per_class: int) -> list[list[int | None]]:
    """For each class, the first ``per_class`` seeds (ascending) whose label is that class; ``None``
    where the samples given hold fewer (an empty tile)."""
    labels, seeds = np.asarray(labels), np.asarray(seeds)
    if labels.shape != seeds.shape:
        raise ValueError(f"{len(labels)} labels for {len(seeds)} seeds")
    order = np.argsort(seeds, kind="stable")
    lines = []
    for c in classes:
        found = [int(s) for s in seeds[order][labels[order] == c][:per_class]]
        lines.append(found + [None] * (per_class - len(found)))
    return lines


def upscale_factor(height: int, width: int, min_tile: int = MIN_TILE) -> int:
    """The integer factor that makes the smaller side of a tile at least ``min_tile`` pixels."""
    return max(1, math.ceil(min_tile / min(height, width)))


def class_grid(images: np.ndarray, labels: Sequence[int], seeds: Sequence[int], classes: Sequence[int],
               per_class: int, min_tile: int = MIN_TILE) -> tuple[np.ndarray, list[list[int | None]]]:
    """uint8 NHWC samples → one H×W×3 grid, line i = ``classes[i]``, column j = that class's j-th
    seed (:func:`grid_seeds`), tiles enlarged by nearest neighbour (:func:`upscale_factor`) and
    separated by :data:`GUTTER` white pixels; also returns the seeds of each line."""
    n, h, w, c = images.shape
    if len(labels) != n or len(seeds) != n:
        raise ValueError(f"{n} images, {len(labels)} labels, {len(seeds)} seeds: one each per sample")
    layout = grid_seeds(labels, seeds, classes, per_class)
    k = upscale_factor(h, w, min_tile)
    th, tw = h * k, w * k
    out = np.full((len(classes) * (th + GUTTER) + GUTTER, per_class * (tw + GUTTER) + GUTTER, 3), BACKGROUND,
                  dtype=np.uint8)
    index = {int(s): i for i, s in enumerate(seeds)}
    for row, line in enumerate(layout):
        for col, seed in enumerate(line):
            if seed is None:
                continue
            tile = images[index[seed]]
            tile = tile if c == 3 else np.repeat(tile, 3, axis=-1)
            top, left = GUTTER + row * (th + GUTTER), GUTTER + col * (tw + GUTTER)
            out[top:top + th, left:left + tw] = tile.repeat(k, axis=0).repeat(k, axis=1)
    return out, layout


def save_class_grid(grid: np.ndarray, layout: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a grid as PNG, atomically, with its ``layout`` (classes, seeds per line) in a text chunk."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(LAYOUT_KEY, json.dumps(layout))
    return atomic_write(path, lambda tmp: Image.fromarray(grid).save(tmp, format="PNG", pnginfo=info))


def read_layout(path: str | os.PathLike) -> dict[str, Any]:
    """The layout :func:`save_class_grid` stored in a grid PNG."""
    from PIL import Image

    with Image.open(path) as image:
        text = image.text.get(LAYOUT_KEY)
    if text is None:
        raise ValueError(f"{path}: no {LAYOUT_KEY!r} text chunk (not a grid written by offshelf.grids)")
    return json.loads(text)


def write_sample_grid(shard_format: HasShardFormat, shard_paths: Sequence[str], expected_seeds: Sequence[Sequence[int]],
                      grids: Mapping[str, Any] | None, out_path: str | os.PathLike, setting: str) -> dict[str, Any]:
    """The grid of one setting from its first shards (checked against the plan's seeds and the
    backend's ``shard_format``, as the evaluation checks them), written to ``out_path``; returns its
    layout. Lines with fewer than ``per_class`` samples of their class in these shards keep empty
    tiles (``missing`` counts them: raise ``grids.shards`` to fill them). ``shard_format``: a
    :class:`~offshelf.shards.ShardFormat` (or the backend), so the job need not import torch."""
    options = grid_options(grids, shard_format.num_classes)
    images, labels, _ = load_shards(shard_format, shard_paths, expected_seeds)
    seeds = np.concatenate([_seeds(p) for p in shard_paths])
    grid, lines = class_grid(images, labels, seeds, options["classes"], options["per_class"])
    layout = {"setting": setting, "classes": options["classes"], "seeds": lines,
              "missing": sum(s is None for line in lines for s in line), "shards": len(shard_paths)}
    save_class_grid(grid, layout, out_path)
    return layout


def _seeds(path: str) -> np.ndarray:
    with np.load(path) as shard:
        return shard["seeds"]


def shards_by_setting(paths: Sequence[str | os.PathLike]) -> dict[str, list[str]]:
    """Shard files ``<...>/<setting>/shard<i>.npz`` grouped by setting (their folder's name), each
    setting's in shard order. A setting's grid reads its leading shards, 0, 1, ... with none missing."""
    found: dict[str, dict[int, str]] = {}
    for path in paths:
        index = Path(path).name.removeprefix("shard").removesuffix(".npz")
        if not (index.isdigit() and Path(path).name == f"shard{index}.npz"):
            raise ValueError(f"{path}: not a shard file (shard<i>.npz)")
        found.setdefault(Path(path).parent.name, {})[int(index)] = str(path)
    out = {}
    for setting, shards in found.items():
        if sorted(shards) != list(range(len(shards))):
            raise ValueError(f"setting {setting}: a grid reads its leading shards, got shards {sorted(shards)}")
        out[setting] = [shards[i] for i in range(len(shards))]
    return out


@dataclass(frozen=True)
class GridSources:
    """What a report draws its sample grids from: each setting's leading shards (``shards``:
    setting -> paths in shard order), the [first seed, count] of shard 0, 1, ... (the same in every
    setting: ``seeds``), the config's ``grids`` section and the backend's shard format (checked as
    the evaluation checks the shards)."""

    shard_format: HasShardFormat
    shards: Mapping[str, Sequence[str]]
    seeds: Sequence[Sequence[int]]
    options: Mapping[str, Any] | None

    def write(self, setting: str, out_path: str | os.PathLike) -> dict[str, Any]:
        """The grid of ``setting`` written to ``out_path`` (:func:`write_sample_grid`); its layout."""
        paths = self.shards[setting]
        if len(paths) > len(self.seeds):
            raise ValueError(f"setting {setting}: {len(paths)} grid shards, seeds given for {len(self.seeds)}")
        return write_sample_grid(self.shard_format, paths, self.seeds[:len(paths)], self.options, out_path, setting)
