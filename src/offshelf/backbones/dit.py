"""DiT (Peebles & Xie, 2023) through diffusers: loading, original-checkpoint conversion, and
the ``model(z, t, y) -> [ε, v]`` denoiser interface that ``GaussianDiffusion`` understands.

The network is diffusers' ``DiTTransformer2DModel``; the VAE is ``AutoencoderKL``
(``stabilityai/sd-vae-ft-ema``, latents scaled by 0.18215). Two numerical details in which
diffusers' DiT differs from the network the weights were trained with (facebookresearch/DiT
``models.py``) are corrected by :func:`match_original_dit`, applied by default:

* timestep frequencies: DiT uses ``exp(−ln(10⁴)·i/128)``, diffusers ``exp(−ln(10⁴)·i/127)``
  (``downscale_freq_shift=1``);
* the pre-MLP LayerNorm: DiT uses ε = 1e−6, diffusers ``norm_eps`` (1e−5 by default).

Output layout (both implementations): ``out_channels = 2·in_channels``; channels ``[:C]``
are ε, ``[C:]`` the learned-range variance interpolation ``v ∈ [−1, 1]`` (ADM's
``learned_range``). The class table has ``num_classes + 1`` rows; the last row (1000 for
ImageNet) is the null class used by classifier-free guidance.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

DEFAULT_DIT = "facebook/DiT-XL-2-256"
DEFAULT_VAE = "stabilityai/sd-vae-ft-ema"
LATENT_SCALE = 0.18215

# Head count is not recoverable from weights; DiT's named configs (models.py) by hidden size.
_DIT_HEADS = {1152: 16, 1024: 16, 768: 12, 384: 6}


def _require_diffusers():
    try:
        import diffusers  # noqa: F401
    except ImportError as e:  # pragma: no cover - environment problem
        raise ImportError("DiT support needs the 'dit' extra: pip install 'diffusers>=0.30' safetensors accelerate") from e
    return diffusers


def match_original_dit(transformer: nn.Module) -> nn.Module:
    """Make a diffusers DiT compute exactly what facebookresearch/DiT computes (see module doc)."""
    for block in transformer.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0
        block.norm3.eps = 1e-6
    return transformer


def load_dit(source: str | os.PathLike = DEFAULT_DIT, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, match_original: bool = True) -> nn.Module:
    """A ``DiTTransformer2DModel`` in eval mode.

    ``source``: a folder written by ``save_pretrained`` (or a pipeline folder with a
    ``transformer/`` subfolder), an original DiT ``.pt`` checkpoint, or a hub id such as
    ``facebook/DiT-XL-2-256`` (its ``transformer`` subfolder; ``HF_HOME`` / ``HF_HUB_OFFLINE``
    are honoured by huggingface_hub).
    """
    diffusers = _require_diffusers()
    path = Path(source)
    if path.is_file():
        return load_dit_original(path, device=device, dtype=dtype, match_original=match_original)
    if path.is_dir():
        subfolder = None
        if not (path / "config.json").is_file():
            if (path / "transformer" / "config.json").is_file():
                subfolder = "transformer"
            else:
                raise FileNotFoundError(f"{path}: expected a DiT folder with config.json (or transformer/config.json)")
    else:
        subfolder = "transformer"
    try:
        model = diffusers.DiTTransformer2DModel.from_pretrained(str(source), subfolder=subfolder, torch_dtype=dtype)
    except (OSError, ValueError) as e:
        raise OSError(f"cannot load DiT from {str(source)!r} (subfolder={subfolder!r}): {e}") from e
    if match_original:
        match_original_dit(model)
    return model.to(device).eval().requires_grad_(False)


def load_vae(source: str | os.PathLike = DEFAULT_VAE, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> nn.Module:
    """``AutoencoderKL.from_pretrained`` (a local folder, a folder with a ``vae/`` subfolder,
    or a hub id) in eval mode. Decode latents as ``vae.decode(z / LATENT_SCALE).sample``."""
    diffusers = _require_diffusers()
    path = Path(source)
    subfolder = None
    if path.is_dir() and not (path / "config.json").is_file():
        if not (path / "vae" / "config.json").is_file():
            raise FileNotFoundError(f"{path}: expected a VAE folder with config.json (or vae/config.json)")
        subfolder = "vae"
    try:
        vae = diffusers.AutoencoderKL.from_pretrained(str(source), subfolder=subfolder, torch_dtype=dtype)
    except (OSError, ValueError) as e:
        raise OSError(f"cannot load the VAE from {str(source)!r}: {e}") from e
    return vae.to(device).eval().requires_grad_(False)


# --- original facebookresearch/DiT checkpoints ---------------------------------------------

def _block_map(i: int) -> list[tuple[str, str]]:
    """(original key, diffusers key) pairs of block ``i`` that map one to one."""
    o, d = f"blocks.{i}.", f"transformer_blocks.{i}."
    pairs = [("adaLN_modulation.1", "norm1.linear"), ("attn.proj", "attn1.to_out.0"),
             ("mlp.fc1", "ff.net.0.proj"), ("mlp.fc2", "ff.net.2")]
    return [(o + a + s, d + b + s) for a, b in pairs for s in (".weight", ".bias")]


_EMBED_MAP = [  # original -> the copy inside every diffusers block's norm1.emb
    ("t_embedder.mlp.0.weight", "timestep_embedder.linear_1.weight"),
    ("t_embedder.mlp.0.bias", "timestep_embedder.linear_1.bias"),
    ("t_embedder.mlp.2.weight", "timestep_embedder.linear_2.weight"),
    ("t_embedder.mlp.2.bias", "timestep_embedder.linear_2.bias"),
    ("y_embedder.embedding_table.weight", "class_embedder.embedding_table.weight"),
]
_TOP_MAP = [
    ("x_embedder.proj.weight", "pos_embed.proj.weight"), ("x_embedder.proj.bias", "pos_embed.proj.bias"),
    ("final_layer.adaLN_modulation.1.weight", "proj_out_1.weight"),
    ("final_layer.adaLN_modulation.1.bias", "proj_out_1.bias"),
    ("final_layer.linear.weight", "proj_out_2.weight"), ("final_layer.linear.bias", "proj_out_2.bias"),
]


def _depth(state: dict, prefix: str) -> int:
    return len({k.split(".")[1] for k in state if k.startswith(prefix)})


def dit_config_from_original(state: dict, num_heads: int | None = None) -> dict:
    """The ``DiTTransformer2DModel`` config of an original DiT state dict."""
    for key in ("x_embedder.proj.weight", "pos_embed", "y_embedder.embedding_table.weight", "final_layer.linear.weight"):
        if key not in state:
            raise KeyError(f"not an original DiT state dict: missing {key!r}")
    hidden, in_channels, patch, _ = state["x_embedder.proj.weight"].shape
    grid = math.isqrt(state["pos_embed"].shape[1])
    heads = num_heads or _DIT_HEADS.get(hidden)
    if heads is None:
        raise ValueError(f"hidden size {hidden} is not a named DiT config; pass num_heads")
    mlp = state["blocks.0.mlp.fc1.weight"].shape[0]
    if mlp != 4 * hidden:
        raise ValueError(f"blocks.0.mlp.fc1 has {mlp} outputs; diffusers' DiT block needs mlp_ratio 4 ({4 * hidden})")
    return dict(num_attention_heads=heads, attention_head_dim=hidden // heads, in_channels=in_channels,
                out_channels=state["final_layer.linear.weight"].shape[0] // (patch * patch),
                num_layers=_depth(state, "blocks."), sample_size=grid * patch, patch_size=patch,
                num_embeds_ada_norm=state["y_embedder.embedding_table.weight"].shape[0] - 1,
                norm_eps=1e-6)


def original_to_diffusers(state: dict) -> dict:
    """Rename an original DiT state dict to diffusers' keys (the inverse of
    :func:`diffusers_to_original`): qkv is split into to_q/to_k/to_v, and the shared
    t/y embedders are copied into every block. ``pos_embed`` is a fixed sin-cos table that
    diffusers recomputes; it is dropped here (checked by :func:`load_dit_original`)."""
    state = dict(state)
    out = {}
    for i in range(_depth(state, "blocks.")):
        for o, d in _block_map(i):
            out[d] = state.pop(o)
        q, k, v = state.pop(f"blocks.{i}.attn.qkv.weight").chunk(3, dim=0)
        qb, kb, vb = state.pop(f"blocks.{i}.attn.qkv.bias").chunk(3, dim=0)
        a = f"transformer_blocks.{i}.attn1."
        out.update({a + "to_q.weight": q, a + "to_k.weight": k, a + "to_v.weight": v,
                    a + "to_q.bias": qb, a + "to_k.bias": kb, a + "to_v.bias": vb})
        for o, d in _EMBED_MAP:
            out[f"transformer_blocks.{i}.norm1.emb.{d}"] = state[o]
    for o, _ in _EMBED_MAP:
        state.pop(o)
    for o, d in _TOP_MAP:
        out[d] = state.pop(o)
    state.pop("pos_embed")
    if state:
        raise KeyError(f"unexpected keys in the original DiT state dict: {sorted(state)[:8]}")
    return {k: v.contiguous() for k, v in out.items()}


def diffusers_to_original(state: dict, pos_embed: torch.Tensor) -> dict:
    """diffusers DiT state dict -> facebookresearch/DiT key names. Block 0's embedders become
    the shared ``t_embedder`` / ``y_embedder``; the other blocks' copies must equal them."""
    state = dict(state)
    depth = _depth(state, "transformer_blocks.")
    out = {"pos_embed": pos_embed}
    for i in range(depth):
        for o, d in _block_map(i):
            out[o] = state.pop(d)
        a = f"transformer_blocks.{i}.attn1."
        for s in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{s}"] = torch.cat([state.pop(a + f"to_{n}.{s}") for n in "qkv"], dim=0)
        for o, d in _EMBED_MAP:
            w = state.pop(f"transformer_blocks.{i}.norm1.emb.{d}")
            if i == 0:
                out[o] = w
            elif not torch.equal(w, out[o]):
                raise ValueError(f"transformer_blocks.{i}.norm1.emb.{d} differs from block 0's: "
                                 "original DiT shares one embedder across blocks")
    for o, d in _TOP_MAP:
        out[o] = state.pop(d)
    if state:
        raise KeyError(f"unexpected keys in the diffusers DiT state dict: {sorted(state)[:8]}")
    return out


def load_dit_original(path: str | os.PathLike, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32, num_heads: int | None = None,
                      match_original: bool = True) -> nn.Module:
    """Load ``DiT-XL-2-256x256.pt`` (or any facebookresearch/DiT checkpoint; an ``"ema"``
    entry is used when present, as DiT's ``find_model`` does) into a diffusers DiT."""
    diffusers = _require_diffusers()
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise OSError(f"{path}: cannot read as a torch checkpoint: {e}") from e
    if isinstance(state, dict) and "ema" in state:
        state = state["ema"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    try:
        config = dit_config_from_original(state, num_heads)
        converted = original_to_diffusers(state)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e
    model = diffusers.DiTTransformer2DModel(**config)
    if not torch.allclose(model.pos_embed.pos_embed, state["pos_embed"].float(), atol=1e-5):
        raise ValueError(f"{path}: pos_embed is not the fixed 2-D sin-cos table diffusers uses")
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise KeyError(f"{path}: converted keys do not fit DiTTransformer2DModel: missing {missing[:8]}, "
                       f"unexpected {unexpected[:8]}")
    if match_original:
        match_original_dit(model)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


class DiTDenoiser(nn.Module):
    """``model(z, t, y) -> [B, 2C, h, w]`` (ε, then learned-range v) in float32, the
    interface of ``GaussianDiffusion.p_mean_variance``. ``t`` are original (unspaced)
    timesteps; ``y = null_label`` is the unconditional branch."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer
        config = transformer.config
        self.in_channels = config.in_channels
        self.out_channels = config.out_channels or config.in_channels
        if self.out_channels != 2 * self.in_channels:
            raise ValueError(f"DiT has {self.out_channels} output channels; learned-range sampling needs "
                             f"2·in_channels = {2 * self.in_channels}")
        self.num_classes = config.num_embeds_ada_norm
        self.null_label = self.num_classes
        self.latent_size = config.sample_size

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    def forward(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if z.shape[1] != self.in_channels:
            raise ValueError(f"DiT expects {self.in_channels} latent channels, got {z.shape[1]}")
        if y is None:
            raise ValueError("DiT is class-conditional: pass labels (null class = %d)" % self.null_label)
        out = self.transformer(z.to(self.dtype), timestep=t, class_labels=y.long(), return_dict=False)[0]
        return out.float()
