"""pytorch-fid's FID Inception: the feature extractor behind EluCD's own FIDs (docs/method.md §7).

The official EluCD evaluation ran the vendored pytorch-fid 0.3.0 on PNG folders against ADM's
reference ``mu``/``sigma``. Its network is torchvision's Inception-v3 skeleton (1008 classes, no
aux head) carrying the TF graph's weights (``pt_inception-2015-12-05-6726825d.pth``), with four
kinds of blocks patched to behave as TF's graph does:

* Mixed_5b/5c/5d (InceptionA), Mixed_6b..6e (InceptionC) and Mixed_7b (InceptionE, first):
  the pool branch averages without counting the zero padding (TF's ``avg_pool`` semantics,
  ``count_include_pad=False``); torchvision counts it.
* Mixed_7c (InceptionE, second): the pool branch is a 3×3 **max** pool (a quirk of the TF graph),
  where torchvision averages.

Input pipeline, as pytorch-fid's ``get_activations`` + ``InceptionV3.forward`` do it: uint8 →
``ToTensor`` ([0, 1] floats, x/255) → bilinear resize to 299×299 (``align_corners=False``) →
2x − 1 → blocks up to the final adaptive average pool → the 2048-d pool3 vector. The resize
comes *before* the [-1, 1] scaling (it is linear, so the order changes nothing but round-off).

Written from the architecture, not copied; ``tests/unit/test_metrics.py`` checks it against a
line-by-line transcription of pytorch-fid's forward on torchvision building blocks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.inception import InceptionA, InceptionC, InceptionE

FILENAME = "pt_inception-2015-12-05-6726825d.pth"
URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FILENAME}"
FEATURE_DIM = 2048
RESIZE = 299


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TF's average pool divides by the number of real (unpadded) inputs in each window
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(InceptionA):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg_pool(x))], 1)


class FIDInceptionC(InceptionC):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            b7d = layer(b7d)
        return torch.cat([self.branch1x1(x), b7, b7d, self.branch_pool(_tf_avg_pool(x))], 1)


class FIDInceptionE(InceptionE):
    """``max_pool=False``: Mixed_7b (TF average pool); ``True``: Mixed_7c (max pool)."""

    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__(in_channels)
        self.max_pool = max_pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        b3d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3d = torch.cat([self.branch3x3dbl_3a(b3d), self.branch3x3dbl_3b(b3d)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, b3d, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """pytorch-fid's ``InceptionV3(output_blocks=[3])`` with the FID weights: float images in
    [0, 1] (NCHW, any size) → [B, 2048] pool3 features."""

    def __init__(self):
        super().__init__()
        # init_weights=False: the weights come from the file (and torchvision's truncated-normal
        # init of ~24M parameters only costs time)
        net = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
        net.Mixed_5b = FIDInceptionA(192, pool_features=32)
        net.Mixed_5c = FIDInceptionA(256, pool_features=64)
        net.Mixed_5d = FIDInceptionA(288, pool_features=64)
        net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        net.Mixed_7b = FIDInceptionE(1280, max_pool=False)
        net.Mixed_7c = FIDInceptionE(2048, max_pool=True)
        self.net = net

    def load_file(self, path: str | Path) -> "FIDInceptionV3":
        """Load the pytorch-fid state dict (torchvision key names, the 1008-way fc included) strictly."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: pytorch-fid Inception weights not found ({FILENAME}, from {URL})")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unreadable file gets the same one-line message
            raise ValueError(f"{path}: not a loadable pytorch-fid Inception state dict ({type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''})") from error
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state dict (pytorch-fid's {FILENAME}), got {type(state).__name__}")
        try:
            self.net.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ValueError(f"{path}: does not fit pytorch-fid's Inception ({str(error).splitlines()[0]})") from error
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = F.interpolate(x, size=(RESIZE, RESIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        # block 0: up to the first max pool
        x = F.max_pool2d(n.Conv2d_2b_3x3(n.Conv2d_2a_3x3(n.Conv2d_1a_3x3(x))), kernel_size=3, stride=2)
        # block 1: up to the second max pool
        x = F.max_pool2d(n.Conv2d_4a_3x3(n.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
        # blocks 2 and 3: the mixed blocks, then the final average pool (pool3)
        for block in (n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a, n.Mixed_6b, n.Mixed_6c, n.Mixed_6d,
                      n.Mixed_6e, n.Mixed_7a, n.Mixed_7b, n.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)


def load_fid_inception(path: str | Path, device="cpu") -> FIDInceptionV3:
    return FIDInceptionV3().load_file(path).to(device).eval().requires_grad_(False)


def fid_inception_feature_fn(path: str | Path, device="cpu"):
    """uint8 NHWC images → [B, 2048] float32 features, exactly pytorch-fid's pipeline (grey images
    are repeated to RGB, as PIL's ``convert('RGB')`` does)."""
    device = torch.device(device)
    model = load_fid_inception(path, device)

    @torch.no_grad()
    def features(images: np.ndarray) -> np.ndarray:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"pytorch-fid Inception: expected uint8 NHWC images with 1 or 3 channels, got "
                             f"{images.dtype} {tuple(images.shape)}")
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        batch = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 255.0
        return model(batch).cpu().numpy()

    return features
