"""The embedded digits benchmark: a download-free stand-in for ImageNet on scikit-learn's bundled
8×8 digits (1,797 images, 10 classes), small enough to train and sample on a laptop CPU.

Four networks play the paper's four roles:

* ``denoiser``   -- class-conditional ε-prediction DDPM with label dropout: conditional,
                    unconditional (null label) and classifier-free sampling from one network
                    (ADM's role).
* ``offshelf``   -- a ReLU ResNet trained on *clean* images only, never on noise (torchvision
                    ResNet's role): what the paper guides with.
* ``finetuned``  -- a time-dependent classifier trained on x_t over all t (ADM's noise-aware
                    classifier, the CG baseline).
* ``evaluator``  -- a separately trained network (other seed and architecture) used only for
                    FID features and class accuracy (Inception's role).

Other off-the-shelf **classifier families**, trained on clean images like ``offshelf`` and
trained only when a setting asks for them (``network: mlp`` / ``network: vit``):

* ``offshelf_mlp`` -- a ReLU MLP on the flattened pixels (no convolution, no normalisation).
* ``offshelf_vit`` -- a small vision transformer (2×2 patches, GELU): Softplus surgery does not
                      apply to it (it has no ReLU), see :data:`CLASSIFIER_FAMILIES`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from offshelf.atomic import atomic_write
from offshelf.diffusion import beta_schedule

NUM_CLASSES = 10
NULL_LABEL = NUM_CLASSES  # the label-dropout token
IMAGE_SHAPE = (1, 8, 8)
# Setting.network -> (role of its trained checkpoint, whether its activations are ReLU modules,
# so that Softplus(β) surgery applies). "" is the default off-the-shelf ResNet.
CLASSIFIER_FAMILIES: dict[str, tuple[str, bool]] = {
    "": ("offshelf", True),
    "mlp": ("offshelf_mlp", True),
    "vit": ("offshelf_vit", False),
}
FAMILY_ROLES = tuple(role for role, _ in CLASSIFIER_FAMILIES.values() if role != "offshelf")
ROLES = ("denoiser", "offshelf", "finetuned", "evaluator") + FAMILY_ROLES


# --------------------------------------------------------------------------- data

def load_digits_split(split: str = "train", seed: int = 0, test_fraction: float = 0.2):
    """Images in [-1, 1] as ``[N, 1, 8, 8]`` float32 and labels, from a fixed stratified split."""
    from offshelf.extras import needs
    needs("the digits data set (offshelf.backbones.digits)", "sklearn")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test", "all"):
        raise ValueError(f"digits split must be 'train', 'test' or 'all', got {split!r}")
    data = load_digits()
    x = (data.images.astype(np.float32) / 16.0) * 2 - 1
    y = data.target.astype(np.int64)
    if split == "all":
        return torch.from_numpy(x[:, None]), torch.from_numpy(y)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=y)
    idx = idx_train if split == "train" else idx_test
    return torch.from_numpy(x[idx, None]), torch.from_numpy(y[idx])


# --------------------------------------------------------------------------- networks

def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    """Pre-activation residual block with an additive conditioning embedding (optional).
    One ``relu`` module is reused, as torchvision's blocks do, so Softplus surgery must catch
    every call site through the module."""

    def __init__(self, channels: int, out_channels: int, emb_dim: int = 0, stride: int = 1):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, channels)
        self.conv1 = nn.Conv2d(channels, out_channels, 3, stride=stride, padding=1)
        self.norm2 = nn.GroupNorm(8, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.relu = nn.ReLU()
        self.emb = nn.Linear(emb_dim, out_channels) if emb_dim else None
        self.skip = (nn.Conv2d(channels, out_channels, 1, stride=stride)
                     if stride != 1 or channels != out_channels else nn.Identity())

    def forward(self, x, emb=None):
        h = self.conv1(self.relu(self.norm1(x)))
        if self.emb is not None:
            h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.relu(self.norm2(h)))
        return self.skip(x) + h


class DigitsUNet(nn.Module):
    """ε-prediction UNet for 8×8: 8×8 → 4×4 → 8×8 with skip connections, time and class
    embeddings; class ``NULL_LABEL`` is the unconditional (dropped) label."""

    def __init__(self, channels: int = 64, emb_dim: int = 128):
        super().__init__()
        self.emb_dim = emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(NUM_CLASSES + 1, emb_dim)
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.down1 = ResBlock(channels, channels, emb_dim)
        self.down2 = ResBlock(channels, 2 * channels, emb_dim, stride=2)
        self.mid = ResBlock(2 * channels, 2 * channels, emb_dim)
        self.up2 = ResBlock(4 * channels, channels, emb_dim)
        self.up1 = ResBlock(2 * channels, channels, emb_dim)
        self.out = nn.Sequential(nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, 1, 3, padding=1))

    def forward(self, x, t, y=None):
        if y is None:
            y = torch.full((x.shape[0],), NULL_LABEL, dtype=torch.long, device=x.device)
        emb = self.time_mlp(timestep_embedding(t, self.emb_dim)) + self.label_emb(y)
        h0 = self.stem(x)
        h1 = self.down1(h0, emb)
        h2 = self.down2(h1, emb)
        h = self.mid(h2, emb)
        h = self.up2(torch.cat([h, h2], 1), emb)
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        h = self.up1(torch.cat([h, h1], 1), emb)
        return self.out(h)


class DigitsResNet(nn.Module):
    """Small ReLU ResNet classifier; ``time_conditioned`` adds a timestep embedding to every
    block (the fine-tuned, noise-aware baseline). ``features()`` is the pooled penultimate
    layer (the evaluator's FID features)."""

    def __init__(self, width: int = 32, time_conditioned: bool = False, dropout: float = 0.0):
        super().__init__()
        self.time_conditioned = time_conditioned
        emb_dim = 4 * width if time_conditioned else 0
        self.emb_dim = emb_dim
        if time_conditioned:
            self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.ReLU(), nn.Linear(emb_dim, emb_dim))
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.block1 = ResBlock(width, width, emb_dim)
        self.block2 = ResBlock(width, 2 * width, emb_dim, stride=2)
        self.block3 = ResBlock(2 * width, 2 * width, emb_dim)
        self.head_norm = nn.GroupNorm(8, 2 * width)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * width, NUM_CLASSES)
        self.feature_dim = 2 * width

    def features(self, x, t=None):
        emb = None
        if self.time_conditioned:
            if t is None:
                raise ValueError("this classifier is time-conditioned: call it as model(x, t)")
            emb = self.time_mlp(timestep_embedding(t, self.emb_dim))
        h = self.stem(x)
        h = self.block3(self.block2(self.block1(h, emb), emb), emb)
        return self.relu(self.head_norm(h)).mean(dim=(2, 3))

    def forward(self, x, t=None):
        return self.fc(self.dropout(self.features(x, t)))


class DigitsMLP(nn.Module):
    """ReLU MLP on the 64 flattened pixels: two hidden layers of ``4 * width`` units. No
    convolution and no normalisation: a classifier whose inductive bias differs from the ResNet's."""

    def __init__(self, width: int = 32):
        super().__init__()
        hidden = 4 * width
        self.hidden1 = nn.Linear(int(np.prod(IMAGE_SHAPE)), hidden)
        self.hidden2 = nn.Linear(hidden, hidden)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        self.fc = nn.Linear(hidden, NUM_CLASSES)
        self.feature_dim = hidden

    def features(self, x):
        return self.relu2(self.hidden2(self.relu1(self.hidden1(x.flatten(1)))))

    def forward(self, x):
        return self.fc(self.features(x))


class ViTBlock(nn.Module):
    """Pre-norm transformer block: self-attention, then a GELU MLP (``nn.GELU`` modules, as
    timm's and torchvision's ViTs: no ReLU anywhere)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class DigitsViT(nn.Module):
    """Small vision transformer for 8×8: 2×2 patches (16 tokens) of ``width`` channels, a class
    token, learned position embeddings, ``depth`` blocks; the class token's final norm is the
    feature vector."""

    def __init__(self, width: int = 32, depth: int = 2, heads: int = 2, patch: int = 2):
        super().__init__()
        c, h, w = IMAGE_SHAPE
        self.patch_embed = nn.Conv2d(c, width, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 1 + (h // patch) * (w // patch), width))
        self.blocks = nn.ModuleList(ViTBlock(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, NUM_CLASSES)
        self.feature_dim = width

    def features(self, x):
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens[:, 0])

    def forward(self, x):
        return self.fc(self.features(x))


# --------------------------------------------------------------------------- training

@dataclass
class TrainConfig:
    role: str
    seed: int = 0
    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    width: int = 64
    label_dropout: float = 0.15
    ema: float = 0.999
    num_train_timesteps: int = 1000
    schedule: str = "linear"
    split_seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"unknown digits model role {self.role!r}; expected one of {ROLES}")


def build(role: str, width: int) -> nn.Module:
    if role == "denoiser":
        return DigitsUNet(channels=width)
    if role == "offshelf":
        return DigitsResNet(width=width)
    if role == "finetuned":
        return DigitsResNet(width=width, time_conditioned=True)
    if role == "offshelf_mlp":
        return DigitsMLP(width=width)
    if role == "offshelf_vit":
        return DigitsViT(width=width)
    return DigitsResNet(width=width, dropout=0.2)  # evaluator: other width/seed, dropout


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random ±1-pixel shifts: cheap, label-preserving augmentation for the classifiers."""
    shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
    return torch.roll(x, shifts=shift, dims=(2, 3))


def train(config: TrainConfig, progress: bool = False) -> tuple[nn.Module, dict]:
    """Train one digits network from a fixed seed; returns the (EMA, for the denoiser) model and
    a metrics dict (held-out accuracy for classifiers, final loss for the denoiser)."""
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    x_train, y_train = load_digits_split("train", config.split_seed)
    model = build(config.role, config.width)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    warmup = max(0.05, 2.5 / config.steps)  # OneCycleLR needs at least two warm-up steps
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.steps, pct_start=warmup)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    alphas_cumprod = torch.tensor(np.cumprod(1 - beta_schedule(config.schedule, config.num_train_timesteps)),
                                  dtype=torch.float32)
    steps = range(config.steps)
    if progress:
        from offshelf.extras import needs
        needs(f"{__name__} (progress=True)", "tqdm")
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc=f"train {config.role}")
    start, loss = time.time(), torch.tensor(0.0)
    model.train()
    for step in steps:
        idx = torch.randint(len(x_train), (config.batch_size,), generator=gen)
        x, y = x_train[idx], y_train[idx]
        if config.role == "denoiser":
            t = torch.randint(config.num_train_timesteps, (len(x),), generator=gen)
            noise = torch.randn(x.shape, generator=gen)
            a = alphas_cumprod[t].view(-1, 1, 1, 1)
            drop = torch.rand(len(x), generator=gen) < config.label_dropout
            y = torch.where(drop, torch.full_like(y, NULL_LABEL), y)
            loss = F.mse_loss(model(a.sqrt() * x + (1 - a).sqrt() * noise, t, y), noise)
        elif config.role == "finetuned":
            x = _augment(x, gen)
            t = torch.randint(config.num_train_timesteps, (len(x),), generator=gen)
            a = alphas_cumprod[t].view(-1, 1, 1, 1)
            x_t = a.sqrt() * x + (1 - a).sqrt() * torch.randn(x.shape, generator=gen)
            loss = F.cross_entropy(model(x_t, t), y)
        else:
            loss = F.cross_entropy(model(_augment(x, gen)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        decay = min(config.ema, (1 + step) / (10 + step))  # warm-up: short runs are not stuck at init
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if v.dtype.is_floating_point:
                    ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
                else:
                    ema[k].copy_(v)
    model.load_state_dict(ema)
    model.eval()
    metrics = {"final_loss": float(loss.detach()), "train_seconds": time.time() - start}
    if config.role != "denoiser":
        metrics.update(evaluate_classifier(model, config))
    return model, metrics


@torch.no_grad()
def evaluate_classifier(model: nn.Module, config: TrainConfig) -> dict:
    """Held-out accuracy on clean images (and, for the noise-aware one, at t=500)."""
    x, y = load_digits_split("test", config.split_seed)
    if config.role == "finetuned":
        out = {"test_accuracy_t0": float((model(x, torch.zeros(len(x), dtype=torch.long)).argmax(1) == y).float().mean())}
        ac = torch.tensor(np.cumprod(1 - beta_schedule(config.schedule, config.num_train_timesteps)), dtype=torch.float32)
        a = ac[500]
        gen = torch.Generator().manual_seed(1)
        x_t = a.sqrt() * x + (1 - a).sqrt() * torch.randn(x.shape, generator=gen)
        out["test_accuracy_t500"] = float((model(x_t, torch.full((len(x),), 500)).argmax(1) == y).float().mean())
        return out
    return {"test_accuracy": float((model(x).argmax(1) == y).float().mean())}


# --------------------------------------------------------------------------- checkpoints

CHECKPOINT_FORMAT = "offshelf-digits-v2"  # v2: the payload records its sha256


def weights_sha256(config: dict, state_dict: dict) -> str:
    """sha256 of the network alone (its config and weights, not the training's metrics, which
    hold wall-clock seconds): the same for every run that trains the same network, so it can
    name a judge in metrics files that two runs must agree on."""
    return payload_sha256(config, {}, state_dict)


def payload_sha256(config: dict, metrics: dict, state_dict: dict) -> str:
    """sha256 of a checkpoint's content: config and metrics as canonical JSON, then each tensor's
    name, dtype, shape and raw bytes in state-dict order. Independent of torch's zip layout, so
    it names the weights, not one serialisation of them."""
    hasher = hashlib.sha256()
    hasher.update(json.dumps({"config": config, "metrics": metrics}, sort_keys=True, default=float).encode())
    for key, tensor in state_dict.items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        hasher.update(f"\n{key}:{flat.dtype}:{tuple(tensor.shape)}\n".encode())
        hasher.update(flat.view(torch.uint8).numpy().tobytes())  # uint8 view: any dtype, bfloat16 too
    return hasher.hexdigest()


def save_checkpoint(model: nn.Module, config: TrainConfig, metrics: dict, path: str | os.PathLike) -> None:
    """Written atomically (offshelf.atomic), with the sha256 of its content (:func:`payload_sha256`)."""
    state_dict = model.state_dict()
    payload = {"format": CHECKPOINT_FORMAT, "config": asdict(config), "metrics": metrics, "state_dict": state_dict,
               "sha256": payload_sha256(asdict(config), metrics, state_dict)}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _train_config(path: Path, config) -> TrainConfig:
    """The checkpoint's TrainConfig, or a one-line error naming the file and the offending keys."""
    if not isinstance(config, dict):
        raise ValueError(f"{path}: checkpoint 'config' must be a mapping, got {type(config).__name__}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"{path}: checkpoint config has unknown keys {', '.join(map(repr, unknown))} "
                         f"(written by another offshelf version?); known: {', '.join(sorted(known))}")
    required = {f.name for f in fields(TrainConfig) if f.default is MISSING and f.default_factory is MISSING}
    if missing := sorted(required - set(config)):
        raise ValueError(f"{path}: checkpoint config lacks {', '.join(map(repr, missing))}")
    try:
        return TrainConfig(**config)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def load_checkpoint(path: str | os.PathLike, expected_role: str | None = None) -> tuple[nn.Module, TrainConfig, dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"digits checkpoint {path} does not exist (train it with the workflow's `train_model` rule)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which
        raise ValueError(f"{path}: not a readable offshelf digits checkpoint ({err})") from err
    if isinstance(payload, dict) and payload.get("format") == "offshelf-digits-v1":
        # Refused, not accepted with a warning: an unchecked file is exactly what flipped bytes
        # look like, and the fix is minutes of CPU training.
        raise ValueError(f"{path}: digits checkpoint from before checkpoints recorded a sha256; retrain it: "
                         f"delete it and rerun the workflow (or run it with --forcerun train_model)")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an offshelf digits checkpoint (missing format {CHECKPOINT_FORMAT!r})")
    if not isinstance(payload.get("state_dict"), dict):
        raise ValueError(f"{path}: digits checkpoint holds no 'state_dict' mapping")
    config = _train_config(path, payload.get("config"))
    digest = payload_sha256(payload["config"], payload.get("metrics"), payload["state_dict"])
    if payload.get("sha256") != digest:
        raise ValueError(f"{path}: digits checkpoint content has sha256 {digest}, but the file records "
                         f"{payload.get('sha256')}: it is corrupt; retrain it (delete it and rerun the workflow)")
    if expected_role is not None and config.role != expected_role:
        raise ValueError(f"{path}: holds a {config.role!r} network, expected {expected_role!r}")
    model = build(config.role, config.width)
    model.load_state_dict(payload["state_dict"])
    model.eval().requires_grad_(False)
    return model, config, payload["metrics"]
