"""Stand-in checkpoints for the wet rehearsals (issue 12, part 1).

Every file the ImageNet workflows and text2image download is built here from random weights at
a tiny size, in the format of the real download and under the registry's real file name, so the
real loaders (``offshelf.backbones.*``, ``classifiers.zoo``, ``metrics``, ``classifiers.clip``)
read them unchanged. Nothing is a mock: an ADM ``.pt`` is a ``torch.save``'d state dict with
guided-diffusion's key names, the EDM ``.pkl`` is an NVlabs ``torch_utils.persistence`` pickle,
and so on; only the architecture flags are small, and those are written to ``manifest.json``.

``build(outdir)`` writes the files plus

* ``registry.yaml``: per stand-in its registry name, file name, ``url`` template
  ``{base_url}/<filename>``, sha256 and size (for ``checkpoints.load_registry_overrides``);
* ``manifest.json``: what each backend needs to load the tiny files (ADM flags, sizes, ...).

Bytes are deterministic (fixed seeds, no time stamps): building twice gives identical files.
Command line: ``python tests/rehearsal/standins.py OUTDIR``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import pickle
import re
import sys
import time
import types
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
try:  # importable from tests (PYTHONPATH=src) and as a script from a checkout
    import offshelf  # noqa: F401
except ImportError:  # pragma: no cover - depends on how it is launched
    sys.path.insert(0, str(ROOT / "src"))

# the golden fixtures shipped with the tests ($OFFSHELF_REFERENCE_DIR overrides the folder)
REFERENCE_DIR = Path(os.environ.get("OFFSHELF_REFERENCE_DIR") or ROOT / "tests" / "fixtures" / "reference")
EDM_REFERENCE_PICKLE = "edm_tiny_network.pkl"
NUM_CLASSES = 1000
FEATURE_DIM = 2048  # Inception pool_3; load_reference_stats(expected_dim=2048) in the workflow

# --------------------------------------------------------------------------- architectures
# guided-diffusion flags (create_model / create_classifier keyword arguments). Image sizes and
# everything that decides the data layout stay as in the official presets (128 px, class-
# conditional, learned sigma, fp16 flag, attention pooling); only widths and depths shrink.
ADM128_UNET_FLAGS = dict(
    image_size=128, num_channels=32, num_res_blocks=1, channel_mult="1,1,2", attention_resolutions="32",
    class_cond=True, learn_sigma=True, num_heads=1, resblock_updown=True, use_scale_shift_norm=True,
    use_fp16=True)
# create_classifier fixes 64-channel heads and the channel_mult for 128 px (1,1,2,3,4): width 32
# gives 128 channels at 8x8, two heads; attention only at 8x8 keeps it cheap.
ADM128_CLASSIFIER_FLAGS = dict(
    image_size=128, classifier_width=32, classifier_depth=1, classifier_attention_resolutions="8",
    classifier_pool="attention", classifier_resblock_updown=True, classifier_use_scale_shift_norm=True,
    classifier_use_fp16=False)
# text2image's unconditional 256 px ADM (config/clip_text2image.yaml: 256x256_diffusion_uncond.pt).
ADM256_UNCOND_FLAGS = dict(
    image_size=256, num_channels=32, num_res_blocks=1, channel_mult="1,1,2,2", attention_resolutions="32",
    class_cond=False, learn_sigma=True, num_head_channels=64, resblock_updown=True, use_scale_shift_norm=True,
    use_fp16=True)

EDM_RESOLUTION = 64
# DiT: hidden 384 is DiT-S's width, so offshelf.backbones.dit infers its 6 heads from the weights
# (load_dit takes no num_heads); one block instead of 28. Latent 32x32x4 as DiT-XL/2-256.
DIT = dict(hidden_size=384, num_heads=6, depth=1, patch_size=2, in_channels=4, input_size=32, learn_sigma=True,
           num_classes=NUM_CLASSES, frequency_embedding_size=256)
# sd-vae-ft-ema's layout (4 resolutions: 256 px <-> 32x32x4 latent, scaling 0.18215), 16 channels.
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[16, 16, 16, 16], layers_per_block=1,
    act_fn="silu", latent_channels=4, norm_num_groups=8, sample_size=256, scaling_factor=0.18215)
VAE_FOLDER = "sd-vae-ft-ema"
# open_clip architecture (open_clip_config.json "model_cfg"). The vocabulary must stay 49408:
# the BPE tokenizer emits those ids. quick_gelu as OpenAI's ViT-L-14-336.
CLIP_MODEL_CFG = dict(
    embed_dim=32, quick_gelu=True,
    vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
    text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
CLIP_PREPROCESS_CFG = dict(mean=[0.48145466, 0.4578275, 0.40821073], std=[0.26862954, 0.26130258, 0.27577711],
                           interpolation="bicubic", resize_mode="shortest")
CLIP_FOLDER = "clip-text2image-standin"
REFERENCE_IMAGES = 32  # enough for k-NN precision/recall (k = 3); the real batches hold 10k


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def _seeded(seed: int):
    """Constructors that draw from torch's global RNG (diffusers, open_clip) get a fixed seed
    without changing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _randomized(state: dict[str, torch.Tensor], seed: int) -> OrderedDict:
    """New random values for every float tensor of a state dict: weights ~ N(0, 1/fan_in) (so
    activations stay O(1) through a deep stack), vectors that start at one (norm scales) ~ 1 +
    N(0, 0.05²), other vectors ~ N(0, 0.05²). Zero-initialised layers (ADM's output convs, DiT's
    adaLN) become non-zero, so every path of the network is exercised."""
    gen = _generator(seed)
    out = OrderedDict()
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            out[name] = tensor.clone()
            continue
        noise = torch.randn(tensor.shape, generator=gen, dtype=torch.float32)
        if tensor.ndim >= 2:
            fan_in = tensor[0].numel()
            value = noise / math.sqrt(fan_in)
        elif tensor.numel() and bool((tensor == 1).all()):
            value = 1 + 0.05 * noise
        else:
            value = 0.05 * noise
        out[name] = value.to(tensor.dtype).contiguous()
    return out


def _savez(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` layout (a zip of ``<key>.npy``, stored) with a fixed time stamp: numpy's own
    writer stamps the current time into every entry, so its bytes change from run to run."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buffer.getvalue())


# --------------------------------------------------------------------------- ADM (.pt state dicts)

def build_adm(path: Path, flags: dict, seed: int) -> None:
    """guided-diffusion saves ``th.save(model.state_dict())`` of fp32 master weights: a plain
    str -> tensor dict, keys in module order, which is what this writes for ``flags``."""
    from offshelf.backbones import adm

    with torch.device("meta"):  # only the key names, shapes and dtypes are needed
        model = adm.create_from_flags(flags)
    shapes = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()}
    torch.save(_randomized(shapes, seed), path)


# --------------------------------------------------------------------------- EDM (NVlabs pickle)
# An NVlabs network pickle is what `pickle.dump(dict(ema=net, ...))` writes when every network
# class is decorated with torch_utils.persistence.persistent_class: each such object reduces to
# `torch_utils.persistence._reconstruct_persistent_obj(meta)`, meta = {type: 'class', version: 6,
# module_src, class_name, state: the module's __dict__ incl. _init_args/_init_kwargs}; plain
# torch containers (ModuleDict) and tensors pickle the usual way. Writing that structure from
# scratch would mean re-implementing NVlabs' constructors (every sub-module's init kwargs, numpy
# scalars included). Instead the reference fixture -- written by NVlabs' own code -- is read
# with its structure intact, re-targeted to 64 px / 1000 classes (names, kwargs, shapes) and
# given new random weights.

def _persistence_stub(meta):  # pragma: no cover - never called: it only names the global
    raise RuntimeError("stand-in for torch_utils.persistence._reconstruct_persistent_obj")


_persistence_stub.__module__ = "torch_utils.persistence"
_persistence_stub.__name__ = _persistence_stub.__qualname__ = "_reconstruct_persistent_obj"


class _Persistent:
    """One persistent-class object of the pickle, kept as its ``meta`` record."""

    def __init__(self, meta: dict):
        self.meta = meta

    @property
    def state(self) -> dict:
        return self.meta["state"]

    def __reduce__(self):  # exactly what persistence's __reduce__ returns
        return _persistence_stub, (self.meta,)


@contextlib.contextmanager
def _persistence_module():
    """pickle writes a global by name after checking that importing it gives the same object;
    register ``torch_utils.persistence`` for the duration of the dump (restored afterwards)."""
    package, module = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")
    module._reconstruct_persistent_obj = _persistence_stub
    package.persistence = module
    saved = {name: sys.modules.get(name) for name in ("torch_utils", "torch_utils.persistence")}
    sys.modules.update({"torch_utils": package, "torch_utils.persistence": module})
    try:
        yield
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


class _StructureUnpickler(pickle.Unpickler):
    """Reads the reference pickle keeping persistent objects as records; an allow-list like
    offshelf's loader (the fixture is trusted, but nothing here needs more)."""

    _GLOBALS = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _Persistent,
        ("torch.storage", "_load_from_bytes"):
            lambda b: torch.load(io.BytesIO(b), map_location="cpu", weights_only=True),
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("collections", "OrderedDict"): OrderedDict,
        ("torch.nn.modules.container", "ModuleDict"): nn.ModuleDict,
        ("torch.nn.modules.container", "ModuleList"): nn.ModuleList,
        ("torch.nn.modules.container", "Sequential"): nn.Sequential,
    }

    def find_class(self, module, name):
        if (module, name) in self._GLOBALS:
            return self._GLOBALS[(module, name)]
        if module.startswith("numpy") and name in ("scalar", "dtype"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected global {module}.{name} in the EDM reference pickle")


def _children(obj) -> dict:
    """Sub-modules of a persistent record or a plain torch container, by attribute name."""
    if isinstance(obj, _Persistent):
        return obj.state.get("_modules", {})
    if isinstance(obj, nn.Module):
        return obj.__dict__.get("_modules", {})
    return {}


def _rename_levels(modules: dict, factor: int) -> dict:
    """DhariwalUNet names blocks by resolution (``16x16_block0``); scale those names."""
    def rename(key):
        m = re.match(r"(\d+)x(\d+)_(.*)", key)
        return f"{int(m[1]) * factor}x{int(m[2]) * factor}_{m[3]}" if m else key
    return OrderedDict((rename(k), v) for k, v in modules.items())


def _retarget_edm(data: dict, resolution: int, label_dim: int, seed: int) -> dict:
    ema = data["ema"]
    kwargs = ema.state["_init_kwargs"]
    factor = resolution // kwargs["img_resolution"]
    if factor * kwargs["img_resolution"] != resolution or kwargs.get("model_type") != "DhariwalUNet":
        raise ValueError(f"reference EDM network {kwargs} cannot be re-targeted to {resolution} px")
    unet = ema.state["_modules"]["model"]
    # EDMPrecond: kwargs and the attributes its __init__ set. use_fp16 as the real ImageNet-64 net.
    kwargs.update(img_resolution=resolution, label_dim=label_dim, use_fp16=True)
    ema.state.update(img_resolution=resolution, label_dim=label_dim, use_fp16=True)
    unet.state["_init_kwargs"].update(
        img_resolution=resolution, label_dim=label_dim,
        attn_resolutions=[r * factor for r in unet.state["_init_kwargs"]["attn_resolutions"]])
    kwargs["attn_resolutions"] = list(unet.state["_init_kwargs"]["attn_resolutions"])
    for name in ("enc", "dec"):
        container = unet.state["_modules"][name]
        container.__dict__["_modules"] = _rename_levels(container.__dict__["_modules"], factor)
    # map_label = Linear(label_dim, emb, init_weight=sqrt(label_dim)) in DhariwalUNet.__init__
    label = unet.state["_modules"]["map_label"]
    label.state["_init_kwargs"].update(in_features=label_dim, init_weight=np.float64(math.sqrt(label_dim)))
    label.state["in_features"] = label_dim
    if isinstance(data.get("dataset_kwargs"), dict):
        data["dataset_kwargs"]["resolution"] = resolution

    # New weights: per tensor the reference's mean/std (NVlabs' init scales); zero-initialised
    # tensors get std 0.02 so no path is dead. Buffers (fixed resample filters) stay as they are.
    gen = _generator(seed)

    def visit(obj):
        if isinstance(obj, _Persistent):
            obj.meta["module_src"] = ("# offshelf rehearsal stand-in: NVlabs/edm's training/networks.py source is "
                                      "not embedded (offshelf never executes it)\n")
            params = obj.state.get("_parameters", {})
            for key, old in list(params.items()):
                if old is None:
                    continue
                shape = list(old.shape)
                if obj is label and key == "weight":
                    shape[1] = label_dim
                std = float(old.detach().float().std()) if old.numel() > 1 else 0.0
                scale = std if std > 0 else 0.02
                # map_label's std does not depend on label_dim: NVlabs scales its init by sqrt(label_dim)
                value = float(old.detach().float().mean()) + scale * torch.randn(shape, generator=gen)
                params[key] = nn.Parameter(value.to(old.dtype), requires_grad=old.requires_grad)
        for child in _children(obj).values():
            if child is not None:
                visit(child)

    visit(ema)
    return data


class _EDMPickler(pickle.Pickler):
    """pickle.Pickler plus one normalisation: a tensor's storage pickles as
    ``torch.storage._load_from_bytes(<legacy torch.save bytes>)``, and torch's legacy writer keys
    the storage by its memory address (``str(storage._cdata)``), which changes every run. The key
    is an opaque string to the reader, so it is replaced by ``"0"`` (what torch's zip writer
    uses): same format, deterministic bytes."""

    def reducer_override(self, obj):
        if not isinstance(obj, (torch.TypedStorage, torch.UntypedStorage)):
            return NotImplemented
        function, (payload,) = obj.__reduce__()
        keys = {str(obj._cdata).encode()}
        if isinstance(obj, torch.TypedStorage):
            keys.add(str(obj._untyped_storage._cdata).encode())
        for key in keys:
            pickled = b"X" + len(key).to_bytes(4, "little") + key  # BINUNICODE in protocol 2
            if payload.count(pickled) == 2:  # the persistent id and the list of storage keys
                return function, (payload.replace(pickled, b"X" + (1).to_bytes(4, "little") + b"0"),)
        raise RuntimeError("torch's legacy storage format changed: storage key not found")


def build_edm(path: Path, seed: int, reference: Path | None = None) -> dict:
    """``edm-imagenet-64x64-cond-adm.pkl``: ``dict(ema=EDMPrecond(DhariwalUNet), augment_pipe=None,
    dataset_kwargs=...)`` in NVlabs' persistence format. Returns EDMPrecond's init kwargs."""
    reference = Path(reference or REFERENCE_DIR / EDM_REFERENCE_PICKLE)
    if not reference.is_file():
        raise FileNotFoundError(f"{reference}: the NVlabs-written EDM fixture is needed to build the EDM stand-in "
                                f"(shipped in tests/fixtures/reference; $OFFSHELF_REFERENCE_DIR overrides the folder)")
    with open(reference, "rb") as f:
        data = _StructureUnpickler(f).load()
    data = _retarget_edm(data, EDM_RESOLUTION, NUM_CLASSES, seed)
    with _persistence_module():
        buffer = io.BytesIO()
        _EDMPickler(buffer, protocol=4).dump(data)  # the reference's protocol
        payload = buffer.getvalue()
    path.write_bytes(payload)
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in data["ema"].state["_init_kwargs"].items()}


# --------------------------------------------------------------------------- DiT (original format)

def _dit_pos_embed(hidden: int, grid: int) -> np.ndarray:
    """facebookresearch/DiT ``get_2d_sincos_pos_embed`` (models.py), written out independently of
    diffusers: load_dit_original checks the stored table against diffusers' own."""
    def one_d(dim, pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h, grid_w = np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32)
    mesh = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape(2, 1, grid, grid)
    return np.concatenate([one_d(hidden // 2, mesh[0]), one_d(hidden // 2, mesh[1])], axis=1)


def dit_original_shapes(cfg: dict = DIT) -> OrderedDict:
    """Key -> shape of facebookresearch/DiT's ``DiT(...).state_dict()``, in module order
    (pos_embed, x_embedder, t_embedder, y_embedder, blocks, final_layer)."""
    d, p, c = cfg["hidden_size"], cfg["patch_size"], cfg["in_channels"]
    out_c = 2 * c if cfg["learn_sigma"] else c
    shapes = OrderedDict(pos_embed=(1, (cfg["input_size"] // p) ** 2, d))
    shapes["x_embedder.proj.weight"], shapes["x_embedder.proj.bias"] = (d, c, p, p), (d,)
    shapes["t_embedder.mlp.0.weight"], shapes["t_embedder.mlp.0.bias"] = (d, cfg["frequency_embedding_size"]), (d,)
    shapes["t_embedder.mlp.2.weight"], shapes["t_embedder.mlp.2.bias"] = (d, d), (d,)
    shapes["y_embedder.embedding_table.weight"] = (cfg["num_classes"] + 1, d)  # + the CFG null class
    for i in range(cfg["depth"]):
        for name, shape in (("attn.qkv", (3 * d, d)), ("attn.proj", (d, d)), ("mlp.fc1", (4 * d, d)),
                            ("mlp.fc2", (d, 4 * d)), ("adaLN_modulation.1", (6 * d, d))):
            shapes[f"blocks.{i}.{name}.weight"], shapes[f"blocks.{i}.{name}.bias"] = shape, shape[:1]
    shapes["final_layer.linear.weight"], shapes["final_layer.linear.bias"] = (p * p * out_c, d), (p * p * out_c,)
    shapes["final_layer.adaLN_modulation.1.weight"], shapes["final_layer.adaLN_modulation.1.bias"] = (2 * d, d), (2 * d,)
    return shapes


def build_dit(path: Path, seed: int, cfg: dict = DIT) -> None:
    """``DiT-XL-2-256x256.pt`` as released: ``torch.save`` of the EMA state dict (no wrapper)."""
    shapes = dit_original_shapes(cfg)
    state = _randomized({k: torch.zeros(s) for k, s in shapes.items() if k != "pos_embed"}, seed)
    pos = torch.from_numpy(_dit_pos_embed(cfg["hidden_size"], cfg["input_size"] // cfg["patch_size"])).float()
    torch.save(OrderedDict([("pos_embed", pos.unsqueeze(0)), *state.items()]), path)


def build_vae(folder: Path, seed: int) -> None:
    """``AutoencoderKL.save_pretrained``: config.json + diffusion_pytorch_model.safetensors, the
    layout of stabilityai/sd-vae-ft-ema on the hub."""
    import diffusers

    with _seeded(seed):
        vae = diffusers.AutoencoderKL(**VAE_CONFIG)
    vae.save_pretrained(folder, safe_serialization=True)


# --------------------------------------------------------------------------- torchvision ResNets

ROW_STRIDE = 7  # see _compact_weight


def _compact_weight(shape, std: float, gen: torch.Generator) -> torch.Tensor:
    """A random [out, ...] weight stored as a strided view of one short random vector: row o is
    the vector shifted by ROW_STRIDE·o. torch.save writes a view's storage once, so a full-size
    ResNet-101 (44.5M parameters, 171 MB as independent tensors) takes ~1 MB, while the file is
    still an ordinary torchvision state dict (same keys, shapes, dtypes; torch.load gives
    tensors that load_state_dict copies). Rows differ (shifted), so no output channel is dead."""
    rest = math.prod(shape[1:])
    base = std * torch.randn(rest + ROW_STRIDE * (shape[0] - 1), generator=gen)
    inner = [math.prod(shape[i + 1:]) for i in range(1, len(shape))]
    return base.as_strided(tuple(shape), (ROW_STRIDE, *inner))


def build_resnet(folder: Path, arch: str, seed: int) -> str:
    """``<arch>-<sha256[:8]>.pth``: torch.hub's naming for a torchvision state dict, the prefix
    being this file's own hash. Returns the file name."""
    import torchvision.models as tvm

    with torch.device("meta"):
        model = tvm.get_model_builder(arch)(weights=None, num_classes=NUM_CLASSES)
    gen = _generator(seed)
    state = OrderedDict()
    for name, tensor in model.state_dict().items():
        shape = tuple(tensor.shape)
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(0, dtype=torch.long)
        elif tensor.ndim >= 2:  # conv (He init) and fc weights
            fan_in = math.prod(shape[1:])
            state[name] = _compact_weight(shape, math.sqrt((1 if name.startswith("fc") else 2) / fan_in), gen)
        elif name.endswith("running_var"):
            state[name] = 1 + 0.1 * torch.rand(shape, generator=gen)
        elif name.endswith("running_mean") or name.endswith(".bias"):
            state[name] = 0.05 * torch.randn(shape, generator=gen)
        elif name.endswith(".weight"):  # BatchNorm scale. The last BN of each residual branch is
            # small (as zero_init_residual would make it) so that eval-mode activations do not double
            # per block: 33 blocks of ResNet-101 would otherwise grow them ~10^9-fold.
            last = name.endswith("bn3.weight") or (arch in ("resnet18", "resnet34") and name.endswith("bn2.weight"))
            state[name] = (0.2 if last else 1.0) * (1 + 0.1 * torch.randn(shape, generator=gen))
        else:
            raise ValueError(f"unexpected torchvision {arch} state entry {name}")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    filename = f"{arch}-{hashlib.sha256(payload).hexdigest()[:8]}.pth"
    (folder / filename).write_bytes(payload)
    return filename


# --------------------------------------------------------------------------- Inception (TorchScript)

class _Conv(nn.Module):
    """A strided convolution without TorchScript ``Final`` constants. nn.Conv2d's constants are
    emitted in set order, which follows Python's per-process string hashing, so a scripted
    nn.Conv2d gives different bytes in every process."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride)


class _Affine(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))


class StandInInception(nn.Module):
    """The interface of NVlabs' ``inception-2015-12-05.pt`` as clean-fid uses it: TorchScript
    ``forward(img, return_features=False, use_fp16=False, no_output_bias=False)`` taking NCHW
    float images in [0, 255] of any size, resizing to 299 inside (legacy TF mode) and returning
    2048-d pool features (or 1008-way softmax), plus ``layers`` mapping an already normalised
    299x299 batch to ``[B, 2048, 1, 1]`` (clean-fid's ``clean`` mode). Three strided convs
    instead of Inception-v3; features are post-ReLU averages like pool_3."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            _Conv(3, 16, 4, stride=4), nn.ReLU(), _Conv(16, 32, 4, stride=4), nn.ReLU(),
            _Conv(32, FEATURE_DIM, 1, stride=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.output = _Affine(FEATURE_DIM, 1008)

    def forward(self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> torch.Tensor:
        x = img.to(torch.float32)
        if x.shape[2] != 299 or x.shape[3] != 299:
            x = F.interpolate(x, size=[299, 299], mode="bilinear", align_corners=False)
        x = (x - 128) / 128
        features = self.layers(x).reshape(-1, 2048)  # FEATURE_DIM (TorchScript cannot close over globals)
        if return_features:
            return features
        logits = features @ self.output.weight.t()
        if not no_output_bias:
            logits = logits + self.output.bias
        return F.softmax(logits, dim=1)


def build_inception(path: Path, seed: int) -> None:
    model = StandInInception()
    state = _randomized(model.state_dict(), seed)
    for name in state:  # He init: post-ReLU features keep their scale through the 3 convs
        if name.startswith("layers") and name.endswith("weight"):
            state[name] = state[name] * math.sqrt(2)
    model.load_state_dict(state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation notice
        scripted = torch.jit.script(model.eval())
    scripted.save(str(path))


# --------------------------------------------------------------------------- reference batches

def reference_images(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random colour fields (bicubic up-sampled 4x4 noise) as uint8 NHWC, with labels:
    images a network maps to varied features, unlike flat or white-noise ones."""
    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.uniform(-1, 1, size=(n, 3, 4, 4)).astype(np.float32))
    images = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    uint8 = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.ascontiguousarray(uint8), rng.integers(0, NUM_CLASSES, size=n).astype(np.int64)


def reference_stats(images: np.ndarray, inception_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """mu/sigma of the stand-in Inception's features through offshelf's own evaluation path
    (clean-fid legacy_tensorflow), so a rehearsal's FID against this file is a real FID."""
    from offshelf.metrics import extract_features, feature_statistics, inception_feature_fn

    stats = feature_statistics(extract_features(images, inception_feature_fn("legacy_tensorflow", inception_path)))
    return stats.mu, stats.sigma


def build_reference(path: Path, size: int, seed: int, inception_path: Path, with_images: bool) -> None:
    """ADM's ``VIRTUAL_imagenet*_labeled.npz`` (``arr_0`` uint8 NHWC, ``arr_1`` labels, ``mu``,
    ``sigma``) or, without images, EDM's fid-refs (``mu``, ``sigma``). Statistics are stored as
    float32 (the real files hold float64): a 2048x2048 float64 sigma alone is 32 MB, and the
    loader converts to float64 either way. ADM's spatial statistics (mu_s/sigma_s) are left out:
    nothing in offshelf reads them."""
    images, labels = reference_images(REFERENCE_IMAGES, size, seed)
    mu, sigma = reference_stats(images, inception_path)
    arrays = dict(arr_0=images, arr_1=labels) if with_images else {}
    _savez(path, **arrays, mu=mu.astype(np.float32), sigma=sigma.astype(np.float32))


# --------------------------------------------------------------------------- CLIP (open_clip folder)

def build_clip(folder: Path, seed: int) -> None:
    """A folder as open_clip's ``local-dir:`` schema (and hf-hub repos) hold a model:
    ``open_clip_config.json`` ({model_cfg, preprocess_cfg}) and ``open_clip_pytorch_model.bin``
    (``torch.save`` of the state dict). Loaded offline as ``load_clip("local-dir:<folder>", None)``."""
    from offshelf.classifiers.clip import build_random_clip

    folder.mkdir(parents=True, exist_ok=True)
    with _seeded(seed):
        model, _ = build_random_clip(json.loads(json.dumps(CLIP_MODEL_CFG)), seed=seed)
    config = {"model_cfg": CLIP_MODEL_CFG, "preprocess_cfg": CLIP_PREPROCESS_CFG}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    torch.save(OrderedDict((k, v.contiguous()) for k, v in model.state_dict().items()),
               folder / "open_clip_pytorch_model.bin")


# --------------------------------------------------------------------------- all of it

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(outdir: str | os.PathLike, seed: int = 0) -> dict:
    """Write every stand-in, ``registry.yaml`` and ``manifest.json`` into ``outdir``.

    Returns ``{"files": {registry name: path}, "registry": ..., "manifest": ..., "seconds":
    {registry name: build time}}``."""
    import yaml

    from offshelf.checkpoints import REGISTRY

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    files: dict[str, Path] = {}

    def timed(name: str, relpath: str, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        seconds[name] = round(time.perf_counter() - start, 3)
        files[name] = out / relpath
        return result

    def filename(name: str) -> str:
        return REGISTRY[name].filename

    manifest: dict[str, dict] = {}
    for name, flags, s in (("adm_imagenet128_cond_diffusion", ADM128_UNET_FLAGS, seed + 1),
                           ("adm_imagenet128_classifier", ADM128_CLASSIFIER_FLAGS, seed + 2),
                           ("adm_imagenet256_uncond_diffusion", ADM256_UNCOND_FLAGS, seed + 3)):
        timed(name, filename(name), build_adm, out / filename(name), flags, s)
        manifest[name] = {"format": "guided-diffusion state dict (torch.save)", "flags": dict(flags)}
    manifest["adm_imagenet128_cond_diffusion"]["used_by"] = "adm128 denoiser"
    manifest["adm_imagenet128_classifier"]["used_by"] = "adm128 finetuned"
    manifest["adm_imagenet256_uncond_diffusion"]["used_by"] = "text2image diffusion.checkpoint"

    name = "edm_imagenet64_cond"
    init_kwargs = timed(name, filename(name), build_edm, out / filename(name), seed + 4)
    manifest[name] = {"format": "NVlabs torch_utils.persistence pickle, dict(ema=EDMPrecond, ...)",
                      "init_kwargs": init_kwargs, "image_size": EDM_RESOLUTION, "used_by": "edm64 denoiser"}

    name = "dit_xl2_256"
    timed(name, filename(name), build_dit, out / filename(name), seed + 5)
    manifest[name] = {"format": "facebookresearch/DiT state dict (torch.save)", "config": dict(DIT),
                      "image_size": DIT["input_size"] * 8, "used_by": "dit256 denoiser"}
    timed("vae_sd_ft_ema", VAE_FOLDER, build_vae, out / VAE_FOLDER, seed + 6)
    manifest["vae_sd_ft_ema"] = {"format": "diffusers AutoencoderKL save_pretrained folder", "folder": VAE_FOLDER,
                                 "config": VAE_CONFIG, "used_by": "dit256 imagenet.vae"}

    for arch, name, s in (("resnet50", "resnet50_v2", seed + 7), ("resnet101", "resnet101_v2", seed + 8)):
        start = time.perf_counter()
        fname = build_resnet(out, arch, s)
        seconds[name], files[name] = round(time.perf_counter() - start, 3), out / fname
        manifest[name] = {"format": "torchvision state dict, torch.hub name <arch>-<sha256[:8]>.pth",
                          "arch": arch, "filename": fname, "used_by": "imagenet.classifier (off-the-shelf)"}

    name = "inception_cleanfid_legacy_tf"
    timed(name, filename(name), build_inception, out / filename(name), seed + 9)
    manifest[name] = {"format": "TorchScript (clean-fid InceptionV3W)", "feature_dim": FEATURE_DIM,
                      "modes": ["legacy_tensorflow", "clean"]}

    inception = files["inception_cleanfid_legacy_tf"]
    for name, size, images, s in (("ref_imagenet128", 128, True, seed + 10), ("ref_imagenet256", 256, True, seed + 11),
                                  ("ref_imagenet64_edm", 64, False, seed + 12)):
        timed(name, filename(name), build_reference, out / filename(name), size, s, inception, images)
        manifest[name] = {"format": "ADM reference batch .npz" if images else "EDM fid-refs .npz",
                          "image_size": size, "n_images": REFERENCE_IMAGES if images else 0,
                          "stats_dtype": "float32", "feature_extractor": "inception_cleanfid_legacy_tf stand-in"}

    timed("clip_text2image", CLIP_FOLDER, build_clip, out / CLIP_FOLDER, seed + 13)
    manifest["clip_text2image"] = {"format": "open_clip local-dir folder", "folder": CLIP_FOLDER,
                                   "model": f"local-dir:<folder of {CLIP_FOLDER}>", "pretrained": None,
                                   "model_cfg": CLIP_MODEL_CFG, "used_by": "text2image clip.model"}

    # registry.yaml: one entry per downloadable file. Folders (VAE, CLIP) are one entry per file,
    # named <name>/<file>: none of them is in offshelf's registry yet (the real ones come from the
    # HF hub / open_clip's cache), marked registered: false.
    entries = []
    for name, path in files.items():
        paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for p in paths:
            rel = p.relative_to(out).as_posix()
            entry_name = name if not path.is_dir() else f"{name}/{p.name}"
            entry = {"name": entry_name, "filename": rel, "url": "{base_url}/" + rel,
                     "sha256": _sha256(p), "size": p.stat().st_size, "registered": name in REGISTRY}
            if name in ("resnet50_v2", "resnet101_v2"):
                entry["hash_prefix"] = entry["sha256"][:8]
            entries.append(entry)
    registry = {"checkpoints": entries}
    (out / "registry.yaml").write_text(
        "# Stand-in checkpoints (tests/rehearsal/standins.py): url is a template; format it with the\n"
        "# local server's base URL. registered: whether offshelf.checkpoints.REGISTRY has the name.\n"
        + yaml.safe_dump(registry, sort_keys=False, width=120))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return {"files": files, "registry": registry, "manifest": manifest, "seconds": seconds}


def registry_url(entry: dict, base_url: str) -> str:
    """The download URL of a registry.yaml entry for a server at ``base_url``."""
    return entry["url"].format(base_url=base_url.rstrip("/"))


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    result = build(args.outdir, args.seed)
    for entry in result["registry"]["checkpoints"]:
        print(f"{entry['size'] / 1e6:8.2f} MB  {entry['sha256'][:12]}  {entry['filename']}")
    print(f"built in {time.perf_counter() - start:.1f} s: {result['seconds']}")
    return 0


if __name__ == "__main__":
    # Run as the module ``rehearsal.standins``, as tests import it: TorchScript embeds the class's
    # qualified name, so building from ``__main__`` would give different Inception bytes.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from rehearsal import standins as _module

    sys.exit(_module.main())
