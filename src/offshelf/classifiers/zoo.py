"""Off-the-shelf ImageNet classifiers from torchvision, loaded from verified files.

``load_classifier("resnet50")`` is the paper's ResNet-50 (torchvision ``IMAGENET1K_V2`` =
``resnet50-11ad3fa6.pth``), likewise ``"resnet101"``; any other torchvision classification model
name gets its ``DEFAULT`` weights. The weights file always comes from
:func:`offshelf.checkpoints.fetch` (cache, sha256 / hash prefix / lock verified), never from
torch.hub's own download, which checks the hash only when it downloads.

The model is built with ``weights=None`` plus the constructor arguments torchvision's builder
would set for pretrained weights (``_pretrained_kwargs``), so it is the same network as
``torchvision.models.<name>(weights=...)``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
import torchvision.models as tvm
from torch import nn

from offshelf.checkpoints import (
    REGISTRY,
    Checkpoint,
    CheckpointError,
    ChecksumError,
    fetch,
    file_sha256,
    hash_prefix_from_filename,
    torchvision_checkpoint,
    torchvision_weights,
)

# The paper's two classifiers: registry names pinned in offshelf.checkpoints.
PAPER_WEIGHTS = {
    "resnet50": (tvm.ResNet50_Weights.IMAGENET1K_V2, "resnet50_v2"),
    "resnet101": (tvm.ResNet101_Weights.IMAGENET1K_V2, "resnet101_v2"),
}

_transforms = tvm.ResNet50_Weights.IMAGENET1K_V2.transforms()
IMAGENET_MEAN: tuple[float, float, float] = tuple(_transforms.mean)
IMAGENET_STD: tuple[float, float, float] = tuple(_transforms.std)
del _transforms


def available_classifiers() -> list[str]:
    return tvm.list_models(module=tvm)


def classifier_weights(name: str) -> tvm.WeightsEnum:
    """The torchvision weights ``load_classifier(name)`` uses (an unknown name: an error with the
    closest valid names)."""
    if name in PAPER_WEIGHTS:
        return PAPER_WEIGHTS[name][0]
    return torchvision_weights(name)


def classifier_checkpoint(name: str) -> Checkpoint:
    """The registry entry for classifier ``name``: the paper's pinned file, else
    ``torchvision_<name>`` (registered on first use, resolvable by name in any process)."""
    if name in PAPER_WEIGHTS:
        return REGISTRY[PAPER_WEIGHTS[name][1]]
    return torchvision_checkpoint(name)


@functools.lru_cache(maxsize=None)
def classifier_has_relu(name: str) -> bool:
    """Whether torchvision classifier ``name`` has ``nn.ReLU`` modules, i.e. whether Softplus(β)
    surgery applies (ResNets, VGG, DenseNet... do; ViT, Swin, ConvNeXt are GELU). Built on the
    meta device: no weights, no memory, so a plan can ask before any file is loaded."""
    from offshelf.classifiers.softplus import count_relus

    weights = classifier_weights(name)
    with torch.device("meta"):
        model = tvm.get_model_builder(name)(weights=None, **_pretrained_kwargs(name, weights))
    return count_relus(model) > 0


def _pretrained_kwargs(name: str, weights: tvm.WeightsEnum) -> dict:
    """Constructor arguments torchvision's builders override when they are given weights."""
    kwargs = {"num_classes": len(weights.meta["categories"])}
    if name in ("googlenet", "inception_v3"):
        kwargs.update(transform_input=True, aux_logits=True, init_weights=False)
    elif name.startswith("vit_"):
        kwargs["image_size"] = weights.meta["min_size"][0]
    elif name.startswith("maxvit"):
        kwargs["input_size"] = weights.meta["min_size"]
    return kwargs


def _weights_file(checkpoint: Checkpoint, weights_path, cache_dir, lock_file) -> Path:
    if weights_path is None:
        return fetch(checkpoint.name, cache_dir=cache_dir, lock_file=lock_file)
    weights_path = Path(weights_path).expanduser()
    own_prefix = hash_prefix_from_filename(weights_path.name)
    if own_prefix is None or own_prefix == checkpoint.hash_prefix:
        return fetch(checkpoint.name, lock_file=lock_file, local_path=weights_path)
    # A file named in torch.hub style (`<arch>-<sha256 prefix>.pth`) vouches for itself: it is
    # the user's own weights, checked against its name, not against the published file's pins.
    if not weights_path.is_file():
        raise CheckpointError(f"classifier weights file {weights_path} does not exist")
    digest = file_sha256(weights_path)
    if not digest.startswith(own_prefix):
        raise ChecksumError(f"{weights_path} has sha256 {digest}, which does not start with the hash prefix "
                            f"{own_prefix} its file name promises")
    return weights_path


def load_classifier(name: str, weights_path: str | os.PathLike | None = None,
                    cache_dir: str | os.PathLike | None = None,
                    lock_file: str | os.PathLike | None = None) -> nn.Module:
    """torchvision classifier ``name`` with its verified pretrained weights, in eval mode with
    ``requires_grad=False`` (guidance differentiates w.r.t. the input only).

    ``weights_path``: use this file instead of the cache. A file without a hash in its name
    (e.g. the paper's ``resnet50_weight_V2.pth``) must match the published weights; a file named
    ``<arch>-<sha256 prefix>.pth`` is checked against that prefix."""
    weights = classifier_weights(name)
    checkpoint = classifier_checkpoint(name)
    path = _weights_file(checkpoint, weights_path, cache_dir, lock_file)

    model = tvm.get_model_builder(name)(weights=None, **_pretrained_kwargs(name, weights))
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state_dict)
    except Exception as e:  # unpickling or key/shape mismatch: name the file, not a deep traceback
        message = str(e).strip()
        message = message if len(message) < 600 else message[:600] + " ..."
        raise CheckpointError(f"cannot load {path} as torchvision {name} weights: {message}") from None
    if name in ("googlenet", "inception_v3"):  # as torchvision does: pretrained aux heads are dropped
        model.aux_logits = False
        if name == "googlenet":
            model.aux1 = model.aux2 = None
        else:
            model.AuxLogits = None
    return model.eval().requires_grad_(False)


__all__ = ["load_classifier", "classifier_weights", "classifier_checkpoint", "classifier_has_relu", "available_classifiers",
           "IMAGENET_MEAN", "IMAGENET_STD", "PAPER_WEIGHTS"]
