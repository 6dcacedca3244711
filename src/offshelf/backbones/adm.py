"""ADM (guided-diffusion, Dhariwal & Nichol 2021): the noise-prediction UNet and the noise-aware
encoder classifier, written for offshelf with parameter names identical to openai's state dicts
so the official checkpoints load with ``strict=True``.

Numerics follow upstream exactly: sinusoidal timestep embedding ``[cos(t·f_i), sin(t·f_i)]`` with
``f_i = 10000^{-i/half}``; GroupNorm(32) evaluated in fp32; attention logits
``(q·d^{-1/4})ᵀ(k·d^{-1/4})`` with the softmax in fp32.

Precision: the networks are built and loaded in fp32. ``convert_to_fp16()`` halves the convolutions
of the input/middle/output blocks (linear layers and norms stay fp32), as upstream
``convert_to_fp16`` does; ``build_adm``/``load_adm`` apply it for ``use_fp16`` presets only on
CUDA (``on_device``). On CPU the networks run in fp32 (CPU half kernels are slow and not what ADM
used); the fp16 path itself runs on CPU too and is tested there (tests/unit/test_precision.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

NUM_CLASSES = 1000

# guided-diffusion's `model_and_diffusion_defaults()` restricted to `create_model`'s arguments.
UNET_DEFAULTS: dict[str, Any] = dict(
    image_size=64, num_channels=128, num_res_blocks=2, channel_mult="", learn_sigma=False,
    class_cond=False, use_checkpoint=False, attention_resolutions="16,8", num_heads=4,
    num_head_channels=-1, num_heads_upsample=-1, use_scale_shift_norm=True, dropout=0.0,
    resblock_updown=False, use_fp16=False, use_new_attention_order=False,
)

# guided-diffusion's `classifier_defaults()`.
CLASSIFIER_DEFAULTS: dict[str, Any] = dict(
    image_size=64, classifier_use_fp16=False, classifier_width=128, classifier_depth=2,
    classifier_attention_resolutions="32,16,8", classifier_use_scale_shift_norm=True,
    classifier_resblock_updown=True, classifier_pool="attention",
)

# Flags from guided-diffusion's README for the official checkpoints (file names in comments).
ADM_PRESETS: dict[str, dict[str, Any]] = {
    # 128x128_diffusion.pt
    "adm_imagenet128_cond_diffusion": dict(
        UNET_DEFAULTS, attention_resolutions="32,16,8", class_cond=True, image_size=128,
        learn_sigma=True, num_channels=256, num_heads=4, num_res_blocks=2, resblock_updown=True,
        use_fp16=True, use_scale_shift_norm=True),
    # 128x128_classifier.pt
    "adm_imagenet128_classifier": dict(
        CLASSIFIER_DEFAULTS, image_size=128, classifier_attention_resolutions="32,16,8",
        classifier_depth=2, classifier_width=128, classifier_pool="attention",
        classifier_resblock_updown=True, classifier_use_scale_shift_norm=True),
    # 256x256_diffusion_uncond.pt
    "adm_imagenet256_uncond_diffusion": dict(
        UNET_DEFAULTS, attention_resolutions="32,16,8", class_cond=False, image_size=256,
        learn_sigma=True, num_channels=256, num_head_channels=64, num_res_blocks=2,
        resblock_updown=True, use_fp16=True, use_scale_shift_norm=True),
    # 256x256_diffusion.pt
    "adm_imagenet256_cond_diffusion": dict(
        UNET_DEFAULTS, attention_resolutions="32,16,8", class_cond=True, image_size=256,
        learn_sigma=True, num_channels=256, num_head_channels=64, num_res_blocks=2,
        resblock_updown=True, use_fp16=True, use_scale_shift_norm=True),
}


# ----------------------------------------------------------------------------------------------
# Building blocks


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000) -> torch.Tensor:
    """``[cos(t·f_i), sin(t·f_i)]_{i<dim/2}`` with ``f_i = max_period^{-i/(dim/2)}`` (zero-padded
    to ``dim`` when odd)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(timesteps.device)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 whatever the input precision."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class SiLU(nn.Module):
    """``x·sigmoid(x)``, in place where autograd records nothing (the sampler's no-grad forwards): one
    allocation less, the same values. Under autograd out of place, since an in-place SiLU makes
    autograd clone its input and round its gradient differently."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x, inplace=not (torch.is_grad_enabled() and x.requires_grad))


def _add_residual(h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x + h``, into ``h`` (one allocation less) where both share a memory layout: then the sum has
    that layout either way. Under channels_last the two can differ, and ``h += x`` would keep h's
    layout where ``x + h`` takes x's: the convolutions after it would round differently."""
    if h.shape == x.shape and h.stride() == x.stride() and h.dtype == x.dtype:
        return h.add_(x)
    return x + h


def normalization(channels: int) -> nn.Module:
    return GroupNorm32(32, channels)


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.detach().zero_()
    return module


def maybe_checkpoint(enabled: bool, fn, *args):
    """Gradient checkpointing (memory only; results are identical)."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


class TimestepBlock(nn.Module):
    """A block whose forward also takes the timestep (+ class) embedding."""


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest ×2, then an optional 3×3 conv."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """Stride-2 3×3 conv, or 2×2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)
        else:
            if out_channels not in (None, channels):
                raise ValueError("average-pool downsampling cannot change the channel count")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(TimestepBlock):
    """``skip(x) + conv(drop(act(norm'(conv(act(norm(x)))), emb)))`` where ``norm'`` is
    ``norm(h)·(1+scale)+shift`` with (scale, shift) from the embedding (``use_scale_shift_norm``)
    or ``norm(h + emb)``; ``up``/``down`` resample both branches before the first conv."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_conv: bool = False, use_scale_shift_norm: bool = False, use_checkpoint: bool = False,
                 up: bool = False, down: bool = False):
        super().__init__()
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(
            normalization(channels), SiLU(), nn.Conv2d(channels, self.out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels))
        self.out_layers = nn.Sequential(
            normalization(self.out_channels), SiLU(), nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)))
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return maybe_checkpoint(self.use_checkpoint, self._forward, x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h, x = self.h_upd(h), self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        # The embedding MLP stays fp32 under convert_to_fp16; cast its output to the block dtype.
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale)
            h += shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return _add_residual(h, self.skip_connection(x))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax((q/d^{1/4})ᵀ(k/d^{1/4}))`` applied to v, per (batch·head): [BH, d, T] each."""
    scale = 1 / math.sqrt(math.sqrt(q.shape[1]))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    return torch.einsum("bts,bcs->bct", weight, v)


class QKVAttentionLegacy(nn.Module):
    """Attention on a fused qkv tensor laid out per head as ``[q_h; k_h; v_h]`` (the layout of the
    original ADM checkpoints)."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        ch = width // (3 * self.n_heads)
        q, k, v = qkv.reshape(bs * self.n_heads, ch * 3, length).split(ch, dim=1)
        return _attend(q, k, v).reshape(bs, -1, length)


class QKVAttention(nn.Module):
    """The same attention with qkv laid out as ``[q (all heads); k; v]`` (``use_new_attention_order``
    and the classifier's attention pooling)."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        ch = width // (3 * self.n_heads)
        q, k, v = (t.reshape(bs * self.n_heads, ch, length) for t in qkv.chunk(3, dim=1))
        return _attend(q, k, v).reshape(bs, -1, length)


class AttentionBlock(nn.Module):
    """``x + proj(attention(qkv(norm(x))))`` over all spatial positions. Heads: ``num_heads``, or
    ``channels // num_head_channels`` when ``num_head_channels != -1``."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_checkpoint: bool = False, use_new_attention_order: bool = False):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"channels {channels} not divisible by num_head_channels {num_head_channels}")
            self.num_heads = channels // num_head_channels
        if channels % self.num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {self.num_heads}")
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.attention = QKVAttention(self.num_heads) if use_new_attention_order else QKVAttentionLegacy(self.num_heads)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return maybe_checkpoint(self.use_checkpoint, self._forward, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.proj_out(self.attention(self.qkv(self.norm(x))))
        return _add_residual(h, x).reshape(b, c, *spatial)


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling: the spatial mean is prepended as a query token, a learned
    positional embedding is added, and the attended mean token is projected to ``output_dim``."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads_channels: int, output_dim: int | None = None):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spacial_dim ** 2 + 1) / embed_dim ** 0.5)
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim or embed_dim, 1)
        self.num_heads = embed_dim // num_heads_channels
        if self.num_heads < 1:
            raise ValueError(f"attention pooling needs at least {num_heads_channels} channels, got {embed_dim}")
        self.attention = QKVAttention(self.num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        x = x.reshape(b, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None].to(x.dtype)
        x = self.c_proj(self.attention(self.qkv_proj(x)))
        return x[:, :, 0]


def convert_module_to_f16(module: nn.Module) -> None:
    """Halve convolution weights only (upstream ``convert_module_to_f16``)."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        module.weight.data = module.weight.data.half()
        if module.bias is not None:
            module.bias.data = module.bias.data.half()


def convert_module_to_f32(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        module.weight.data = module.weight.data.float()
        if module.bias is not None:
            module.bias.data = module.bias.data.float()


# ----------------------------------------------------------------------------------------------
# Networks


class _Encoder(nn.Module):
    """Time embedding, the downsampling path and the middle block shared by both networks."""

    def __init__(self, image_size: int, in_channels: int, model_channels: int, num_res_blocks: int,
                 attention_resolutions: tuple[int, ...], dropout: float, channel_mult: tuple[float, ...],
                 use_checkpoint: bool, num_heads: int, num_head_channels: int, use_scale_shift_norm: bool,
                 resblock_updown: bool, use_new_attention_order: bool):
        super().__init__()
        self.image_size = image_size
        self.model_channels = model_channels
        self.dtype = torch.float32
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), SiLU(), nn.Linear(emb_dim, emb_dim))
        self._block_args = dict(emb_channels=emb_dim, dropout=dropout, use_checkpoint=use_checkpoint,
                                use_scale_shift_norm=use_scale_shift_norm)
        self._attn_args = dict(use_checkpoint=use_checkpoint, num_head_channels=num_head_channels,
                               use_new_attention_order=use_new_attention_order)

        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        self.skip_channels = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, out_channels=int(mult * model_channels), **self._block_args)]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads=num_heads, **self._attn_args))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                self.skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                down = (ResBlock(ch, out_channels=ch, down=True, **self._block_args) if resblock_updown
                        else Downsample(ch, True, out_channels=ch))
                self.input_blocks.append(TimestepEmbedSequential(down))
                self.skip_channels.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, **self._block_args),
            AttentionBlock(ch, num_heads=num_heads, **self._attn_args),
            ResBlock(ch, **self._block_args))
        self.bottom_channels, self.bottom_ds = ch, ds

    def _embed(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.time_embed(timestep_embedding(timesteps, self.model_channels))

    def _fp16_parts(self) -> list[nn.Module]:
        return [self.input_blocks, self.middle_block]

    def convert_to_fp16(self) -> "_Encoder":
        """Halve the convolutions of the trunk (not the embeddings or the head), as upstream."""
        for part in self._fp16_parts():
            part.apply(convert_module_to_f16)
        self.dtype = torch.float16
        return self

    def convert_to_fp32(self) -> "_Encoder":
        for part in self._fp16_parts():
            part.apply(convert_module_to_f32)
        self.dtype = torch.float32
        return self


class UNetModel(_Encoder):
    """ADM's UNet: ``forward(x, timesteps, y) -> [B, out_channels, H, W]``; with ``learn_sigma``
    the channels are ε then the variance interpolation values v ∈ [−1, 1]."""

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: tuple[int, ...], dropout: float = 0.0,
                 channel_mult: tuple[float, ...] = (1, 2, 4, 8), num_classes: int | None = None,
                 use_checkpoint: bool = False, num_heads: int = 1, num_head_channels: int = -1,
                 num_heads_upsample: int = -1, use_scale_shift_norm: bool = False,
                 resblock_updown: bool = False, use_new_attention_order: bool = False):
        super().__init__(image_size, in_channels, model_channels, num_res_blocks, attention_resolutions,
                         dropout, channel_mult, use_checkpoint, num_heads, num_head_channels,
                         use_scale_shift_norm, resblock_updown, use_new_attention_order)
        self.in_channels, self.out_channels, self.num_classes = in_channels, out_channels, num_classes
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, model_channels * 4)

        ch, ds = self.bottom_channels, self.bottom_ds
        skip_channels = list(self.skip_channels)
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers: list[nn.Module] = [ResBlock(ch + skip_channels.pop(), out_channels=int(model_channels * mult),
                                                    **self._block_args)]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads=num_heads_upsample, **self._attn_args))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, out_channels=ch, up=True, **self._block_args) if resblock_updown
                                  else Upsample(ch, True, out_channels=ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        input_ch = int(channel_mult[0] * model_channels)
        self.out = nn.Sequential(normalization(ch), SiLU(),
                                 zero_module(nn.Conv2d(input_ch, out_channels, 3, padding=1)))

    def _fp16_parts(self) -> list[nn.Module]:
        return [self.input_blocks, self.middle_block, self.output_blocks]

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("class labels y must be given if and only if the model is class-conditional "
                             f"(num_classes={self.num_classes}, y {'given' if y is not None else 'missing'})")
        emb = self._embed(timesteps)
        if y is not None:
            emb = emb + self.label_emb(y)
        h = x.type(self.dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.type(x.dtype))


class EncoderUNetModel(_Encoder):
    """ADM's noise-aware classifier: the UNet's downsampling half and a pooling head,
    ``forward(x, timesteps) -> logits [B, out_channels]``."""

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: tuple[int, ...], dropout: float = 0.0,
                 channel_mult: tuple[float, ...] = (1, 2, 4, 8), use_checkpoint: bool = False,
                 num_heads: int = 1, num_head_channels: int = -1, use_scale_shift_norm: bool = False,
                 resblock_updown: bool = False, use_new_attention_order: bool = False, pool: str = "adaptive"):
        super().__init__(image_size, in_channels, model_channels, num_res_blocks, attention_resolutions,
                         dropout, channel_mult, use_checkpoint, num_heads, num_head_channels,
                         use_scale_shift_norm, resblock_updown, use_new_attention_order)
        self.out_channels, self.pool = out_channels, pool
        ch, ds = self.bottom_channels, self.bottom_ds
        # Features of every input block plus the middle block, for the "spatial" heads.
        feature_size = sum(self.skip_channels) + ch
        if pool == "adaptive":
            self.out = nn.Sequential(normalization(ch), SiLU(), nn.AdaptiveAvgPool2d((1, 1)),
                                     zero_module(nn.Conv2d(ch, out_channels, 1)), nn.Flatten())
        elif pool == "attention":
            if num_head_channels == -1:
                raise ValueError("attention pooling needs num_head_channels != -1")
            self.out = nn.Sequential(normalization(ch), SiLU(),
                                     AttentionPool2d(image_size // ds, ch, num_head_channels, out_channels))
        elif pool == "spatial":
            self.out = nn.Sequential(nn.Linear(feature_size, 2048), nn.ReLU(), nn.Linear(2048, out_channels))
        elif pool == "spatial_v2":
            self.out = nn.Sequential(nn.Linear(feature_size, 2048), normalization(2048), SiLU(),
                                     nn.Linear(2048, out_channels))
        else:
            raise ValueError(f"unknown classifier pool {pool!r}; expected adaptive, attention, spatial or spatial_v2")

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        emb = self._embed(timesteps)
        spatial = self.pool.startswith("spatial")
        features = []
        h = x.type(self.dtype)
        for block in self.input_blocks:
            h = block(h, emb)
            if spatial:
                features.append(h.type(x.dtype).mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        if spatial:
            features.append(h.type(x.dtype).mean(dim=(2, 3)))
            return self.out(torch.cat(features, dim=-1))
        return self.out(h.type(x.dtype))


# ----------------------------------------------------------------------------------------------
# guided-diffusion's factory functions


def _check_flags(flags: Mapping[str, Any], defaults: Mapping[str, Any], factory: str) -> dict[str, Any]:
    unknown = sorted(set(flags) - set(defaults))
    if unknown:
        raise ValueError(f"{factory}: unknown flag(s) {unknown}; accepted flags are {sorted(defaults)}")
    return {**defaults, **flags}


def _default_channel_mult(image_size: int) -> tuple[float, ...]:
    mults = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
    if image_size not in mults:
        raise ValueError(f"no default channel_mult for image_size {image_size}; expected one of {sorted(mults)} "
                         "or an explicit channel_mult like '1,2,2'")
    return mults[image_size]


def _attention_downsample_rates(image_size: int, resolutions: str) -> tuple[int, ...]:
    """ADM lists attention by feature resolution; the network tests the downsampling rate."""
    try:
        return tuple(image_size // int(r) for r in str(resolutions).split(","))
    except ValueError:
        raise ValueError(f"attention resolutions must be comma-separated integers like '32,16,8', "
                         f"got {resolutions!r}") from None


def create_unet(**flags: Any) -> UNetModel:
    """guided-diffusion's ``create_model`` (same keyword arguments; defaults from
    ``model_and_diffusion_defaults``). The network is fp32; ``use_fp16`` is recorded on it as
    ``model.use_fp16`` and applied by ``build_adm``/``load_adm`` on CUDA."""
    f = _check_flags(flags, UNET_DEFAULTS, "create_unet")
    if f["channel_mult"] == "":
        channel_mult = _default_channel_mult(f["image_size"])
    else:
        channel_mult = tuple(int(m) for m in str(f["channel_mult"]).split(","))
    model = UNetModel(
        image_size=f["image_size"], in_channels=3, model_channels=f["num_channels"],
        out_channels=6 if f["learn_sigma"] else 3, num_res_blocks=f["num_res_blocks"],
        attention_resolutions=_attention_downsample_rates(f["image_size"], f["attention_resolutions"]),
        dropout=f["dropout"], channel_mult=channel_mult,
        num_classes=NUM_CLASSES if f["class_cond"] else None, use_checkpoint=f["use_checkpoint"],
        num_heads=f["num_heads"], num_head_channels=f["num_head_channels"],
        num_heads_upsample=f["num_heads_upsample"], use_scale_shift_norm=f["use_scale_shift_norm"],
        resblock_updown=f["resblock_updown"], use_new_attention_order=f["use_new_attention_order"])
    model.use_fp16 = bool(f["use_fp16"])
    return model


def create_classifier(**flags: Any) -> EncoderUNetModel:
    """guided-diffusion's ``create_classifier`` (same keyword arguments; defaults from
    ``classifier_defaults``): 1000 classes, 64-channel attention heads, legacy qkv order."""
    f = _check_flags(flags, CLASSIFIER_DEFAULTS, "create_classifier")
    model = EncoderUNetModel(
        image_size=f["image_size"], in_channels=3, model_channels=f["classifier_width"],
        out_channels=NUM_CLASSES, num_res_blocks=f["classifier_depth"],
        attention_resolutions=_attention_downsample_rates(f["image_size"], f["classifier_attention_resolutions"]),
        channel_mult=_default_channel_mult(f["image_size"]), num_head_channels=64,
        use_scale_shift_norm=f["classifier_use_scale_shift_norm"],
        resblock_updown=f["classifier_resblock_updown"], pool=f["classifier_pool"])
    model.use_fp16 = bool(f["classifier_use_fp16"])
    return model


def create_from_flags(flags: Mapping[str, Any]) -> UNetModel | EncoderUNetModel:
    """A classifier if the flags are ``create_classifier``'s (``classifier_*``), else a UNet."""
    if any(k.startswith("classifier_") for k in flags):
        return create_classifier(**flags)
    return create_unet(**flags)


# ----------------------------------------------------------------------------------------------
# Presets and checkpoints


def _preset(preset_name: str) -> dict[str, Any]:
    if preset_name not in ADM_PRESETS:
        raise KeyError(f"unknown ADM preset {preset_name!r}; expected one of {sorted(ADM_PRESETS)}")
    return ADM_PRESETS[preset_name]


#: Device types on which ``use_fp16`` converts the trunk: guided-diffusion ran fp16 on CUDA only, and
#: CPU half kernels are slow (tests/unit/test_precision.py adds "cpu" to exercise the fp16 path without a GPU).
FP16_DEVICE_TYPES = ("cuda",)


def on_device(model: nn.Module, device: str | torch.device, use_fp16: bool | None = None) -> nn.Module:
    """``model`` in eval mode on ``device``, its trunk converted to fp16 as guided-diffusion's
    ``use_fp16`` does (the network's recorded ``use_fp16`` unless overridden) where the device
    type is in :data:`FP16_DEVICE_TYPES`; elsewhere it stays fp32."""
    device = torch.device(device)
    model = model.to(device).eval()
    half = model.use_fp16 if use_fp16 is None else use_fp16
    if half and device.type in FP16_DEVICE_TYPES:
        model.convert_to_fp16()
    return model


def build_adm(preset_name: str, device: str | torch.device = "cpu",
              use_fp16: bool | None = None) -> UNetModel | EncoderUNetModel:
    """A freshly initialised network for a preset, created directly on ``device`` (``"meta"``
    allocates nothing). fp16 (the preset's ``use_fp16`` unless overridden) only on CUDA."""
    device = torch.device(device)
    with device:
        model = create_from_flags(_preset(preset_name))
    return on_device(model, device, use_fp16)


def _describe_mismatch(path: str, expected: Mapping[str, torch.Tensor], got: Mapping[str, Any],
                       preset_name: str, limit: int = 5) -> str | None:
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [f"{k}: file {tuple(got[k].shape)} vs network {tuple(v.shape)}"
              for k, v in expected.items() if k in got and tuple(got[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return None
    lines = [f"{path} does not match the ADM network of preset {preset_name!r}:"]
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
            lines.append(f"  {len(items)} {title}: {items[:limit]}{more}")
    return "\n".join(lines)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` of a plain state dict (str → tensor), with clear errors."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ADM checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a state dict file"
        raise ValueError(f"{path} is not a loadable torch state dict ({type(e).__name__}: {str(e)[:200]})") from e
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{path} does not hold a state dict (expected a non-empty dict of name -> tensor, "
                         f"got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path} is not a plain state dict: entries {bad[:5]} are not name -> tensor "
                         f"(top-level keys: {list(obj)[:10]})")
    return dict(obj)


def load_adm(path: str | os.PathLike, preset_name: str, device: str | torch.device = "cpu",
             use_fp16: bool | None = None) -> UNetModel | EncoderUNetModel:
    """Load an official ADM checkpoint into the preset's network (strict), in eval mode on
    ``device``; fp16 as in ``build_adm``."""
    path, device = os.fspath(path), torch.device(device)
    state = read_state_dict(path)
    with torch.device("meta"):
        model = create_from_flags(_preset(preset_name))
    error = _describe_mismatch(path, model.state_dict(), state, preset_name)
    if error:
        raise ValueError(error)
    # Parameters are fp32 masters (as upstream load_state_dict copies into fp32 modules).
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return on_device(model, device, use_fp16)
