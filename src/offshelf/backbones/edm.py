"""EDM (Karras et al., NeurIPS 2022): the preconditioned denoiser ``D(x; σ, y)`` around the
"ADM" UNet (``DhariwalUNet``), written for offshelf with parameter names identical to
NVlabs/edm's networks so the official ``edm-imagenet-64x64-cond-adm.pkl`` loads with
``strict=True``, plus a pickle loader that never imports or runs NVlabs code.

Preconditioning (EDM Table 1), with σ_data = 0.5:

    c_skip = σ_data² / (σ² + σ_data²)          c_out   = σ·σ_data / sqrt(σ² + σ_data²)
    c_in   = 1 / sqrt(σ² + σ_data²)            c_noise = ln(σ) / 4
    D(x; σ, y) = c_skip·x + c_out·F(c_in·x; c_noise, y)

Precision: the wrapper computes in fp32; with ``use_fp16`` (the ImageNet-64 checkpoint) the UNet
runs in fp16 on CUDA only, as upstream does. The network code itself is original; NVlabs/edm's
code and weights are CC BY-NC-SA 4.0.
"""

from __future__ import annotations

import io
import math
import os
import pickle
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# EDM's `train.py --arch=adm --cond=1` for ImageNet-64 (augmentation off, dropout 0.10, fp16).
IMAGENET64_COND_ADM_KWARGS: dict[str, Any] = dict(
    img_resolution=64, img_channels=3, label_dim=1000, use_fp16=True, model_type="DhariwalUNet",
    model_channels=192, channel_mult=[1, 2, 3, 4], dropout=0.10,
)


def _init_weight(shape, mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """EDM's initialisers; only matter when training, loaded weights overwrite them."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"unknown init_mode {mode!r}")


class Linear(nn.Module):
    """``y = x·Wᵀ + b`` with the weights cast to the activation dtype (fp16 support)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init_mode: str = "kaiming_normal", init_weight: float = 1, init_bias: float = 0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(_init_weight([out_features, in_features], **fans) * init_weight)
        self.bias = nn.Parameter(_init_weight([out_features], **fans) * init_bias) if bias else None

    def forward(self, x):
        x = x @ self.weight.to(x.dtype).t()
        if self.bias is not None:
            x = x + self.bias.to(x.dtype)
        return x


class Conv2d(nn.Module):
    """Same-padded convolution with optional 2× up/down resampling by the separable filter
    ``f fᵀ / (Σf)²`` (``[1, 1]``: box filter = average pool down, nearest-neighbour up).
    ``kernel=0`` gives a resample-only layer without weights (the skip path of up/down blocks)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True,
                 up: bool = False, down: bool = False, resample_filter=(1, 1),
                 fused_resample: bool = False, init_mode: str = "kaiming_normal",
                 init_weight: float = 1, init_bias: float = 0):
        assert not (up and down), "a convolution resamples up or down, not both"
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        self.weight = (nn.Parameter(_init_weight([out_channels, in_channels, kernel, kernel], **fans) * init_weight)
                       if kernel else None)
        self.bias = nn.Parameter(_init_weight([out_channels], **fans) * init_bias) if kernel and bias else None
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        f = f.ger(f)[None, None] / f.sum().square()
        self.register_buffer("resample_filter", f if up or down else None)

    def forward(self, x):
        w = self.weight.to(x.dtype) if self.weight is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.fused_resample and self.up and w is not None:
            x = F.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                                   stride=2, padding=max(f_pad - w_pad, 0))
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            if self.up:
                x = F.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                                       stride=2, padding=f_pad)
            if self.down:
                x = F.conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2,
                             padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if b is not None:
            x = x + b.reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """GroupNorm with ``min(num_groups, C // min_channels_per_group)`` groups."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4,
                 eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``softmax_k(qᵀk / sqrt(d))`` over [batch·heads, d, tokens], computed in fp32."""
    logits = torch.einsum("ncq,nck->nqk", q.float(), (k / math.sqrt(k.shape[1])).float())
    return logits.softmax(dim=2).to(q.dtype)


class UNetBlock(nn.Module):
    """Residual block: GN-SiLU-conv, adaptive scale/shift from the embedding, GN-SiLU-dropout-conv,
    skip (1×1 conv when channels change, resample-only when only the size changes), optional
    multi-head self-attention; both residual sums multiplied by ``skip_scale``."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False,
                 down: bool = False, attention: bool = False, num_heads: int | None = None,
                 channels_per_head: int = 64, dropout: float = 0, skip_scale: float = 1, eps: float = 1e-5,
                 resample_filter=(1, 1), resample_proj: bool = False, adaptive_scale: bool = True,
                 init: dict | None = None, init_zero: dict | None = None, init_attn: dict | None = None):
        super().__init__()
        init = init or {}
        init_zero = init_zero if init_zero is not None else dict(init_weight=0)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        self.num_heads = 0 if not attention else num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down,
                            resample_filter=resample_filter, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, up=up, down=down,
                               resample_filter=resample_filter, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1, **(init_attn if init_attn is not None else init))
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x, emb):
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(chunks=2, dim=1)
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale

        if self.num_heads:
            n, c = x.shape[:2]
            q, k, v = self.qkv(self.norm2(x)).reshape(n * self.num_heads, c // self.num_heads, 3, -1).unbind(2)
            a = torch.einsum("nqk,nck->ncq", attention_weights(q, k), v)
            x = (self.proj(a.reshape(*x.shape)) + x) * self.skip_scale
        return x


class PositionalEmbedding(nn.Module):
    """``[cos(t·f_i), sin(t·f_i)]`` with ``f_i = (1/max_positions)^{i/(C/2 − endpoint)}``."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x):
        half = self.num_channels // 2
        freqs = torch.arange(0, half, dtype=torch.float32, device=x.device)
        freqs = (1 / self.max_positions) ** (freqs / (half - (1 if self.endpoint else 0)))
        x = x.ger(freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class DhariwalUNet(nn.Module):
    """The ADM UNet as re-implemented in EDM ("config F" of Dhariwal & Nichol, 2021):
    ``F(x; c_noise, y)`` with a positional noise embedding, an MLP, an additive class embedding,
    ``num_blocks`` residual blocks per level (attention at ``attn_resolutions``) and skip
    concatenation in the decoder."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 192, channel_mult=(1, 2, 3, 4),
                 channel_mult_emb: int = 4, num_blocks: int = 3, attn_resolutions=(32, 16, 8),
                 dropout: float = 0.10, label_dropout: float = 0):
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode="kaiming_uniform", init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0, init_bias=0)
        block_kwargs = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init,
                            init_zero=init_zero)

        self.map_noise = PositionalEmbedding(num_channels=model_channels)
        self.map_augment = (Linear(augment_dim, model_channels, bias=False, init_mode="kaiming_normal",
                                   init_weight=math.sqrt(augment_dim)) if augment_dim else None)
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = (Linear(label_dim, emb_channels, bias=False, init_mode="kaiming_normal",
                                 init_weight=math.sqrt(label_dim)) if label_dim else None)

        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions,
                                                                **block_kwargs)
        skips = [block.out_channels for block in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions,
                                                                **block_kwargs)
        self.out_norm = GroupNorm(num_channels=cout)
        self.out_conv = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels)
        emb = F.silu(emb)

        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


class EDMPrecond(nn.Module):
    """``D(x; σ, y) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; ln(σ)/4, y)`` (EDM Table 1).

    ``sigma`` is a scalar or one value per sample; ``class_labels`` one-hot [batch, label_dim]
    (zeros, i.e. no class, when None for a conditional net).
    """

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0, sigma_max: float = float("inf"), sigma_data: float = 0.5,
                 model_type: str = "DhariwalUNet", **model_kwargs):
        super().__init__()
        if model_type != "DhariwalUNet":
            raise ValueError(f"EDMPrecond: model_type {model_type!r} is not implemented (only 'DhariwalUNet', "
                             "the ADM architecture of EDM's ImageNet-64 network)")
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data
        self.model = DhariwalUNet(img_resolution=img_resolution, in_channels=img_channels,
                                  out_channels=img_channels, label_dim=label_dim, **model_kwargs)

    def forward(self, x, sigma, class_labels=None, force_fp32: bool = False, **model_kwargs):
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        dtype = torch.float16 if self.use_fp16 and not force_fp32 and x.device.type == "cuda" else torch.float32

        sd2 = self.sigma_data ** 2
        c_skip = sd2 / (sigma ** 2 + sd2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + sd2).sqrt()
        c_in = 1 / (sd2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4

        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        return c_skip * x + c_out * F_x.to(torch.float32)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)


# --- the official pickle, read without NVlabs code -------------------------------------------

class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references a global outside the allow-list."""


class _PersistentObject:
    """What ``torch_utils.persistence._reconstruct_persistent_obj`` would have rebuilt: the class
    name, its constructor arguments and the module state (``__dict__``)."""

    def __init__(self, class_name: str, init_args: tuple, init_kwargs: dict, state: dict):
        self.class_name = class_name
        self.init_args = init_args
        self.init_kwargs = init_kwargs
        self.state = state


def _reconstruct_persistent_obj(meta: dict) -> _PersistentObject:
    if not isinstance(meta, dict) or meta.get("type") != "class" or "state" not in meta:
        raise pickle.UnpicklingError("unexpected torch_utils.persistence record (expected type 'class' with state)")
    state = meta["state"]
    return _PersistentObject(meta.get("class_name", "?"), tuple(state.get("_init_args", ())),
                             dict(state.get("_init_kwargs", {})), state)


class _PickledModule:
    """A plain ``torch.nn`` container (e.g. ``nn.ModuleDict``) pickled by ``__reduce_ex__``:
    created empty (NEWOBJ), then filled from its ``__dict__`` (BUILD)."""

    def __init__(self, *args, **kwargs):
        self.state: dict = {}

    def __setstate__(self, state):
        self.state = state


class _EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a plain dict that tolerates a BUILD state."""

    def __setstate__(self, state):
        if state:
            self.update(state)


def _load_storage_from_bytes(data: bytes):
    # torch's own reducer would call torch.load on these bytes unrestricted; weights_only is the
    # allow-listed loader for tensors and storages.
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _numpy_scalar():
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    return scalar


_SAFE_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch.nn.modules.container", "ModuleDict"): _PickledModule,
    ("torch.nn.modules.container", "ModuleList"): _PickledModule,
    ("torch.nn.modules.container", "Sequential"): _PickledModule,
    ("collections", "OrderedDict"): OrderedDict,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
    ("numpy", "dtype"): np.dtype,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar(),
    ("numpy.core.multiarray", "scalar"): _numpy_scalar(),
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("_codecs", "encode"): lambda text, encoding="utf-8": text.encode(encoding),  # protocol-2 bytes
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: not on the EDM pickle allow-list "
                "(offshelf never imports or runs code embedded in network pickles)") from None


def _collect_state_dict(obj, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """Flatten a pickled module tree into ``state_dict`` form (parameters, persistent buffers)."""
    state = obj.state
    non_persistent = state.get("_non_persistent_buffers_set", set())
    for name, tensor in state.get("_parameters", {}).items():
        if tensor is not None:
            out[prefix + name] = tensor.detach()
    for name, tensor in state.get("_buffers", {}).items():
        if tensor is not None and name not in non_persistent:
            out[prefix + name] = tensor.detach()
    for name, child in state.get("_modules", {}).items():
        if child is not None:
            _collect_state_dict(child, f"{prefix}{name}.", out)


def _plain(value):
    """numpy scalars / EasyDicts in the recorded kwargs -> Python values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def read_edm_pickle(path: str | os.PathLike) -> dict:
    """Unpickle an NVlabs/edm network file with the allow-list; persistent classes come back as
    records (class name, init kwargs, state), never as NVlabs objects."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        try:
            data = _RestrictedUnpickler(f).load()
        except UnsafePickleError as exc:
            raise UnsafePickleError(f"{path}: {exc}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
                KeyError, RuntimeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not a readable EDM network pickle (corrupt or truncated?): "
                             f"{type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a pickled dict with key 'ema', got {type(data).__name__}")
    return data


def load_edm_pickle(path: str | os.PathLike, key: str = "ema", device: str | torch.device = "cpu") -> EDMPrecond:
    """Load ``pickle[key]`` (the EMA network) of an official EDM ``.pkl`` as offshelf's
    :class:`EDMPrecond`, in eval mode with gradients off for its parameters."""
    path = os.fspath(path)
    data = read_edm_pickle(path)
    if key not in data:
        raise KeyError(f"{path}: no key {key!r} (found {sorted(map(str, data))})")
    record = data[key]
    if not isinstance(record, _PersistentObject) or record.class_name != "EDMPrecond":
        found = record.class_name if isinstance(record, _PersistentObject) else type(record).__name__
        raise ValueError(f"{path}: {key!r} is {found}, expected an EDMPrecond network")
    model = record.state.get("_modules", {}).get("model")
    if not isinstance(model, _PersistentObject) or model.class_name != "DhariwalUNet":
        found = model.class_name if isinstance(model, _PersistentObject) else type(model).__name__
        raise ValueError(f"{path}: {key}.model is {found}; only DhariwalUNet (the ADM architecture) is supported")

    state_dict: dict[str, torch.Tensor] = {}
    _collect_state_dict(record, "", state_dict)
    with torch.device("meta"):
        net = EDMPrecond(*_plain(record.init_args), **_plain(record.init_kwargs))
    try:
        net.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: {key} weights do not match EDMPrecond{record.init_kwargs}: {exc}") from None
    return net.to(device).eval().requires_grad_(False)
