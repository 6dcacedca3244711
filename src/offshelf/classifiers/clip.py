"""CLIP as an off-the-shelf "classifier" over K text prompts (paper Sec. 5.4, Eq. D.1).

:class:`CLIPPromptClassifier` maps images in [−1, 1] to logits

    f_k(x) = s · cos(E_img(norm(resize(x))), E_txt(prompt_k)),   s = exp(logit_scale)

(s = 100 for OpenAI's CLIP), so the unchanged classifier-guidance machinery applies:
``ClassifierGuidance(clip, joint_temperature=1, marginal_temperature=0, input="x0")`` has
``∇ log p̃(k | x̂0) = ∇ f_k(x̂0)`` -- the gradient of the scaled cosine similarity to prompt k,
since τ2 = 0 turns the marginal term into the constant log K.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

PAPER_CLIP_MODEL = "ViT-L-14-336-quickgelu"  # ViT-L/14 at 336 px, paper Appendix D
PAPER_CLIP_PRETRAINED = "openai"

# open_clip accepts an architecture config dict as keyword overrides of a registered one; the
# base only supplies keys the dict leaves out (none, for a complete config).
_RANDOM_BASE = "ViT-B-32"
_CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")


def _open_clip():
    try:
        import open_clip
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("CLIP guidance needs open_clip: pip install open-clip-torch "
                          "(or the project's [clip] extra)") from e
    return open_clip


def check_quick_gelu(model_name: str, pretrained: str | None) -> None:
    """Refuse a config whose activation differs from the one the weights were trained with.

    OpenAI's CLIP weights use QuickGELU; open_clip's plain ``"ViT-L-14-336"`` config uses
    nn.GELU and only warns, then computes wrong features. Checked for known pretrained tags
    (a local weight file carries no such metadata).
    """
    if not pretrained:
        return
    open_clip = _open_clip()
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or {}
    model_cfg = open_clip.get_model_config(model_name) or {}
    if tag_cfg and bool(tag_cfg.get("quick_gelu", False)) != bool(model_cfg.get("quick_gelu", False)):
        hint = (f"use {model_name + '-quickgelu'!r}" if tag_cfg.get("quick_gelu")
                else f"use {model_name.removesuffix('-quickgelu')!r}")
        raise ValueError(f"open_clip model {model_name!r} with pretrained={pretrained!r}: the weights were "
                         f"trained with quick_gelu={bool(tag_cfg.get('quick_gelu'))} but the config has "
                         f"quick_gelu={bool(model_cfg.get('quick_gelu'))}, which computes wrong features; {hint}")


def load_clip(model_name: str = PAPER_CLIP_MODEL, pretrained: str | None = PAPER_CLIP_PRETRAINED,
              cache_dir: str | None = None, device: str | torch.device = "cpu"):
    """``(model, tokenizer)`` from open_clip; ``pretrained`` is a tag (``"openai"``) or a local
    weight file. Weights download into ``cache_dir`` (open_clip's default cache when None)."""
    open_clip = _open_clip()
    if ":" not in model_name and model_name not in open_clip.list_models():  # hf-hub:/local-dir: pass through
        raise ValueError(f"unknown open_clip model {model_name!r}; e.g. {PAPER_CLIP_MODEL!r}")
    check_quick_gelu(model_name, pretrained)
    model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, cache_dir=cache_dir,
                                                        device=device)
    return model.eval(), open_clip.get_tokenizer(model_name, cache_dir=cache_dir)


@contextmanager
def _quiet_open_clip():
    # open_clip logs "No pretrained weights loaded ... initialized randomly" -- intended here.
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def build_random_clip(config: str | Mapping[str, Any], seed: int = 0):
    """``(model, tokenizer)``: a randomly initialised open_clip model, nothing downloaded.

    ``config`` is a registered open_clip architecture name or a config dict with
    ``embed_dim``, ``vision_cfg`` and ``text_cfg`` (plus optional ``quick_gelu``), the format
    of open_clip's ``model_configs/*.json``.
    """
    open_clip = _open_clip()
    torch.manual_seed(seed)
    with _quiet_open_clip():
        if isinstance(config, str):
            if config not in open_clip.list_models():
                raise ValueError(f"unknown open_clip model config {config!r}")
            model = open_clip.create_model(config, pretrained=None)
            tokenizer = open_clip.get_tokenizer(config)
        elif isinstance(config, Mapping):
            missing = [k for k in _CONFIG_KEYS if k not in config]
            if missing:
                raise ValueError(f"open_clip model config dict lacks {missing}; expected keys {list(_CONFIG_KEYS)}")
            model = open_clip.create_model(_RANDOM_BASE, pretrained=None, **dict(config))
            context_length = int(config["text_cfg"].get("context_length", 77))
            tokenizer = open_clip.SimpleTokenizer(context_length=context_length)
        else:
            raise TypeError(f"config must be a model name or a dict, got {type(config).__name__}")
    return model.eval(), tokenizer


def tokenize_prompts(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """``[K, context_length]`` token ids; an empty prompt or one that does not fit the context
    (start + end token included) is an error -- CLIP's tokenizer would silently truncate."""
    if isinstance(prompts, str) or not len(prompts):
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    context_length = tokenizer.context_length
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt {i} is empty ({prompt!r}); every prompt needs some text")
        n = len(tokenizer.encode(prompt)) + 2
        if n > context_length:
            raise ValueError(f"prompt {i} {prompt!r} is {n} tokens with start/end, longer than CLIP's "
                             f"context length {context_length}; shorten it")
    return tokenizer(list(prompts))


def _preprocess(model) -> tuple[tuple[int, int], Sequence[float], Sequence[float]]:
    visual = model.visual
    size = visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    cfg = getattr(visual, "preprocess_cfg", {}) or {}
    mean = cfg.get("mean", getattr(visual, "image_mean", None))
    std = cfg.get("std", getattr(visual, "image_std", None))
    if mean is None or std is None:
        raise ValueError("the CLIP model carries no image mean/std (visual.preprocess_cfg)")
    return size, mean, std


class CLIPPromptClassifier(nn.Module):
    """``images in [−1, 1] (B×3×H×W) → logits (B×K) = s·cos(image, prompt_k)``.

    The text embeddings are computed once. With ``templates`` (e.g. ``("a photo of a {}.",)``)
    each prompt is a class name put into every template, and its embedding is the normalised
    mean of the templates' normalised embeddings (CLIP's zero-shot prompt ensembling); without,
    each prompt is encoded as written. The image path is differentiable: centre crop to a
    square (CLIP's resize-shortest-side + centre-crop, for non-square inputs), antialiased
    bicubic resize to the model's input size, ``([-1,1]→[0,1] − mean)/std``, encode.
    """

    def __init__(self, model: nn.Module, tokenizer, prompts: Sequence[str], templates: Sequence[str] | None = None):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.prompts = list(prompts)
        self.templates = list(templates) if templates is not None else None
        device = next(model.parameters()).device
        if self.templates is None:
            self.register_buffer("text_features", self._encode(tokenizer, self.prompts, device))
        else:
            if isinstance(templates, str) or not self.templates or any("{}" not in t for t in self.templates):
                raise ValueError(f"templates must be a non-empty list of strings with a '{{}}' for the class name, "
                                 f"got {templates!r}")
            per_template = torch.stack([self._encode(tokenizer, [t.format(p) for p in self.prompts], device)
                                        for t in self.templates])
            self.register_buffer("text_features", F.normalize(per_template.mean(0), dim=-1))
        self.image_size, mean, std = _preprocess(model)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1).to(device))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1).to(device))
        self.logit_scale = float(model.logit_scale.detach().float().exp())

    def _encode(self, tokenizer, prompts: list[str], device, batch_size: int = 256) -> torch.Tensor:
        """Unit-norm text embeddings of ``prompts`` (K×D, fp32), in batches (1,000 ImageNet classes)."""
        tokens = tokenize_prompts(tokenizer, prompts)
        with torch.no_grad():
            text = torch.cat([self.model.encode_text(tokens[i:i + batch_size].to(device)).float()
                              for i in range(0, len(tokens), batch_size)])
        return F.normalize(text, dim=-1)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm CLIP image embeddings (B×D, fp32)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"CLIP needs RGB images B×3×H×W in [-1, 1], got shape {tuple(images.shape)}")
        x = images.float()
        h, w = x.shape[-2:]
        if h != w:
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
            x = x[..., top:top + side, left:left + side]
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False, antialias=True)
        x = ((x + 1) / 2 - self.mean) / self.std
        dtype = next(self.model.parameters()).dtype
        return F.normalize(self.model.encode_image(x.to(dtype)).float(), dim=-1)

    def similarity(self, images: torch.Tensor) -> torch.Tensor:
        """``cos(image, prompt_k)``, B×K."""
        return self.image_features(images) @ self.text_features.T

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.similarity(images)


def clip_score(logits_or_cos: torch.Tensor, labels: torch.Tensor, logit_scale: float = 1.0) -> torch.Tensor:
    """The usual CLIP score ``100·cos(image, its prompt)`` per sample, from cosines
    (``logit_scale=1``) or from :class:`CLIPPromptClassifier` logits (its ``logit_scale``)."""
    cos = logits_or_cos.float().gather(1, labels.long().view(-1, 1))[:, 0] / logit_scale
    return 100.0 * cos


# --------------------------------------------------------------------------- zero-shot ImageNet

CLIP_NETWORK_PREFIX = "clip:"  # a setting's network "clip:<open_clip model>/<pretrained tag>"
#: the one prompt template of CLIP's zero-shot ImageNet classifier used here (OpenAI's paper
#: averages 80; a list of templates can be passed to :func:`zero_shot_classifier`)
IMAGENET_TEMPLATES = ("a photo of a {}.",)


def parse_clip_network(network: str) -> tuple[str, str] | None:
    """``"clip:ViT-B-32/openai"`` -> ``("ViT-B-32", "openai")``; None for a network that is not
    a CLIP one; a malformed CLIP name is a ValueError saying the expected form."""
    if not network.startswith(CLIP_NETWORK_PREFIX):
        return None
    model_name, sep, pretrained = network.removeprefix(CLIP_NETWORK_PREFIX).partition("/")
    if not sep or not model_name or not pretrained or "/" in pretrained:
        raise ValueError(f"network {network!r}: a CLIP zero-shot classifier is named "
                         f"'clip:<open_clip model>/<pretrained tag>', e.g. 'clip:ViT-B-32/openai'")
    return model_name, pretrained


def imagenet_class_names() -> list[str]:
    """ImageNet-1k's class names in label order: torchvision's weights metadata (``categories``),
    the same list every torchvision classifier's output index follows."""
    import torchvision.models as tvm

    return list(tvm.ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def zero_shot_classifier(model: nn.Module, tokenizer, class_names: Sequence[str] | None = None,
                         templates: Sequence[str] = IMAGENET_TEMPLATES) -> CLIPPromptClassifier:
    """CLIP as an off-the-shelf classifier: logits ``s·cos(E_img(x), E_txt(class k))`` over
    ``class_names`` (default: ImageNet-1k's, :func:`imagenet_class_names`), each class embedded
    through ``templates``."""
    return CLIPPromptClassifier(model, tokenizer, imagenet_class_names() if class_names is None else class_names,
                                templates=templates)


def clip_has_relu(model_name: str) -> bool:
    """Whether Softplus(β) surgery applies to open_clip model ``model_name``'s image tower:
    only the ModifiedResNet towers (RN50, RN101, RN50x4...: ``vision_cfg.layers`` a list, no timm
    tower) use ``nn.ReLU`` modules; ViT and timm towers use GELU. Read from the model config, so
    it is known when a plan is made, before any weight is loaded."""
    config = _open_clip().get_model_config(model_name)
    if config is None:
        raise ValueError(f"unknown open_clip model {model_name!r}; e.g. 'ViT-B-32', 'RN50'")
    vision = config.get("vision_cfg", {})
    return isinstance(vision.get("layers"), (list, tuple)) and not vision.get("timm_model_name")
