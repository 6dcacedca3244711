"""Images on disk: float [-1, 1] NCHW ↔ uint8 NHWC, and PNG grids.

Each diffusion family's original code writes its samples with its own rounding, and a one-level
shift on half of all pixels moves FID, so the conversion is named per convention:

* ``adm``   -- guided-diffusion / EluCD ``classifier_sample.py``: ``((x+1)·127.5).clamp(0, 255)``, truncated;
* ``edm``   -- NVlabs/edm ``generate.py`` and DiT ``sample.py``: ``(x·127.5 + 128).clip(0, 255)``, truncated;
* ``round`` -- the nearest level, ``((x+1)·127.5).round()``: the digits benchmark's own convention.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from offshelf.atomic import atomic_write

Convention = Literal["adm", "edm", "round"]
CONVENTIONS = ("adm", "edm", "round")


def to_uint8_nhwc(x: torch.Tensor, convention: Convention) -> np.ndarray:
    """[-1, 1] float NCHW → uint8 NHWC under ``convention`` (module docstring)."""
    x = x.detach().float()
    if convention == "adm":
        levels = ((x + 1) * 127.5).clamp(0, 255)
    elif convention == "edm":
        levels = (x * 127.5 + 128).clamp(0, 255)
    elif convention == "round":
        levels = ((x + 1) * 127.5).round().clamp(0, 255)
    else:
        raise ValueError(f"uint8 convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
    return levels.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def from_uint8_nhwc(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC → float NCHW in [-1, 1] (level v ↦ v/127.5 − 1)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def grid(images: np.ndarray, ncol: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 NHWC images tiled row-major into one H×W×3 image (≈square by default, black gutters)."""
    n, h, w, c = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    out = np.zeros((nrow * (h + pad) + pad, ncol * (w + pad) + pad, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        out[top:top + h, left:left + w] = img if c == 3 else np.repeat(img, 3, axis=-1)
    return out


def save_grid(images: np.ndarray, path: str | os.PathLike, ncol: int | None = None, scale: int = 1) -> Path:
    """Write uint8 NHWC images as one PNG grid, atomically; ``scale`` enlarges tiny images
    (nearest neighbour, so pixels stay pixels)."""
    from PIL import Image

    tiled = grid(images, ncol)
    if scale > 1:
        tiled = tiled.repeat(scale, axis=0).repeat(scale, axis=1)
    return atomic_write(path, lambda tmp: Image.fromarray(tiled).save(tmp, format="PNG"))
