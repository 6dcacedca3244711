"""Labelled real images no network here was trained on, for ``offshelf tune``'s Stage 1
(docs/tuning.md §7): the ImageNet validation set, preprocessed as the backbones' training data.

Preprocessing is guided-diffusion's ``center_crop_arr`` (ADM's training data and reference
batches; DiT's training and EDM's ``center-crop-dhariwal`` use the same): halve with BOX filtering
while the short side is at least twice the target, resize with BICUBIC so the short side is the
target, then crop the centre. The class index is a folder's position among the sorted class
folders, torchvision's ``ImageFolder`` rule, which for the 1000 synset folders (``n01440764`` …)
is the class order of torchvision's classifiers and of ADM's labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp")


class HeldOutError(ValueError):
    """A held-out image set that cannot be built or read; the message names the file or folder."""


def center_crop_adm(image, size: int) -> np.ndarray:
    """guided-diffusion's ``center_crop_arr``: a PIL image -> uint8 [size, size, 3]."""
    from PIL import Image

    image = image.convert("RGB")
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    array = np.asarray(image)
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    return array[top:top + size, left:left + size]


def class_folders(folder: Path, num_classes: int) -> list[Path]:
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if len(classes) != num_classes:
        raise HeldOutError(f"{folder}: {len(classes)} class folders, expected {num_classes} (one per class, e.g. "
                           f"ImageNet's synset folders n01440764 …; the class index is the folder's sorted position, "
                           f"so a missing folder would shift every later label)")
    return classes


def images_from_folder(folder, resolution: int, count: int, num_classes: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images of an ImageFolder tree, taken round-robin over the classes (each class's files
    in sorted order), preprocessed by :func:`center_crop_adm`: (uint8 [N, R, R, 3], int64 labels)."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise HeldOutError(f"{folder}: not a folder (expected one subfolder of images per class)")
    per_class = [sorted(p for p in c.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
                 for c in class_folders(folder, num_classes)]
    available = sum(len(files) for files in per_class)
    if available < count:
        raise HeldOutError(f"{folder}: {available} images in its class folders, {count} asked for")
    chosen: list[tuple[Path, int]] = []
    for round_ in range(max(len(files) for files in per_class)):
        for label, files in enumerate(per_class):
            if round_ < len(files) and len(chosen) < count:
                chosen.append((files[round_], label))
    images = np.empty((count, resolution, resolution, 3), np.uint8)
    for i, (path, _) in enumerate(chosen):
        try:
            with Image.open(path) as image:
                images[i] = center_crop_adm(image, resolution)
        except (UnidentifiedImageError, OSError) as err:
            raise HeldOutError(f"{path}: not a readable image ({err})") from None
    return images, np.array([label for _, label in chosen], np.int64)


def save_held_out(path, images: np.ndarray, labels: np.ndarray) -> None:
    """ADM's sample layout (``arr_0`` uint8 NHWC, ``arr_1`` labels), written atomically."""
    from offshelf.atomic import save_npz

    save_npz(path, arr_0=images, arr_1=labels)


def load_held_out(path, image_shape: tuple[int, int, int], num_classes: int, key: str):
    """Images in [-1, 1] (float NCHW) and labels from a held-out file, checked against the
    backbone's (C, H, W) and label space; ``key`` is the config key that named the file."""
    import torch

    from offshelf.images import from_uint8_nhwc
    from offshelf.shards import load_samples

    if not Path(path).is_file():
        raise HeldOutError(f"config key '{key}': {path} does not exist (build it with `offshelf held-out`)")
    try:
        images, labels = load_samples(path, require_labels=True)
    except ValueError as err:
        raise HeldOutError(f"config key '{key}': {err}") from None
    c, h, w = image_shape
    if images.shape[1:] != (h, w, c):
        raise HeldOutError(f"config key '{key}': {path} holds {images.shape[1]}x{images.shape[2]}x{images.shape[3]} "
                           f"images, this backbone samples {h}x{w}x{c} (offshelf held-out --resolution {h})")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise HeldOutError(f"config key '{key}': {path} has labels in [{labels.min()}, {labels.max()}], "
                           f"expected 0 … {num_classes - 1}")
    return from_uint8_nhwc(images), torch.from_numpy(labels.astype(np.int64))
