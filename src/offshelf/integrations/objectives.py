"""What guides a text-to-image pipeline (docs/diffusers.md): an objective of the decoded image.

Every objective maps a latent ẑ0 to ``(∇_{ẑ0} J, J)`` through a ``decode`` function (the VAE or
TAESD decoder, images in [−1, 1]): Algorithm 3's path, the gradient of objective ∘ decoder.

* :class:`ClassifierObjective` -- an off-the-shelf classifier and a target class:
  ``J = τ1·f_y − logsumexp(τ2·f)`` (Eq. 4) after Softplus surgery (β), through
  :func:`offshelf.guidance.calibrated_gradient`, the gradient every offshelf sampler uses.
* :class:`CLIPObjective` -- CLIP similarity of each image to its text (the prompt it was
  generated from by default): the library's CLIP guidance (paper Sec. 5.4,
  :class:`~offshelf.classifiers.clip.CLIPPromptClassifier` with τ1 = 1, τ2 = 0, so
  ``J = s·cos(image, text)``).
* :class:`RewardObjective` -- any ``reward(images in [−1, 1]) -> [batch]`` (aesthetic scorer,
  −MSE to a target, ...), summed over the batch before the gradient: per-image rewards give
  per-image gradients.

``gradient(z, decode, context)`` evaluates the batch in chunks of ``chunk`` images when asked
(the decoder's backward is the memory peak at 1024²): the objectives are per image, so chunked
and unchunked gradients are the same.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from offshelf.guidance import InputAdapter, calibrated_gradient, calibrated_log_prob


class Objective(nn.Module):
    """Base class: ``gradient(z, decode, context) -> (grad, value)``; ``value`` is J per image."""

    def prepare(self, context: dict) -> None:
        """Called once per pipeline call with ``context`` (``prompts``: one text per image)."""

    def gradient(self, z: torch.Tensor, decode: Callable[[torch.Tensor], torch.Tensor], context: dict
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def _at_least_fp32(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _per_image(values, batch: int, what: str, device) -> torch.Tensor:
    y = torch.as_tensor(values, device=device).long().reshape(-1)
    if len(y) == 1:
        y = y.expand(batch)
    if len(y) != batch:
        raise ValueError(f"{what}: {len(y)} values for a batch of {batch} images (give one, or one per image)")
    return y


class ClassifierObjective(Objective):
    """The calibrated log-probability of class ``target`` (one int, or one per image) under
    ``classifier(images in [−1, 1]) -> logits``; ``adapter`` resizes / normalises first.
    The classifier is used as given: :func:`objective_from` applies the Softplus surgery."""

    def __init__(self, classifier: nn.Module, target, joint_temperature: float = 1.0,
                 marginal_temperature: float = 0.5, adapter: InputAdapter | None = None):
        super().__init__()
        if target is None:
            raise ValueError("a classifier objective needs target= (the class to guide towards)")
        self.classifier = classifier.eval().requires_grad_(False)
        self.target = target
        self.joint_temperature, self.marginal_temperature = joint_temperature, marginal_temperature
        self.adapter = adapter or InputAdapter()

    def gradient(self, z, decode, context):
        y = _per_image(self.target, len(z), "target", z.device)
        grad, logits = calibrated_gradient(z.to(_at_least_fp32(z)), y, lambda u: self.classifier(self.adapter(decode(u))).float(),
                                           self.joint_temperature, self.marginal_temperature)
        return grad, calibrated_log_prob(logits, y, self.joint_temperature, self.marginal_temperature)


class RewardObjective(Objective):
    """``reward(images in [−1, 1]) -> [batch]``, any differentiable callable."""

    def __init__(self, reward: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        if not callable(reward):
            raise TypeError(f"reward must be callable, got {type(reward).__name__}")
        self.reward = reward

    def gradient(self, z, decode, context):
        with torch.enable_grad():
            u = z.detach().to(_at_least_fp32(z)).requires_grad_(True)
            value = self.reward(decode(u))
            if value.shape != (len(z),):
                raise ValueError(f"reward must return one scalar per image, shape ({len(z)},), got {tuple(value.shape)}")
            (grad,) = torch.autograd.grad(value.float().sum(), u)
        return grad, value.detach().to(_at_least_fp32(value))


class CLIPObjective(Objective):
    """CLIP similarity of image b to ``texts[b]`` (default: the prompt image b was generated
    from): ``J = s·cos`` with ``s = exp(logit_scale)``, the gradient of
    :class:`~offshelf.classifiers.clip.CLIPPromptClassifier`'s logit through
    :func:`~offshelf.guidance.calibrated_gradient` (τ1 = 1, τ2 = 0), as the library's CLIP guidance.
    ``model, tokenizer``: an open_clip model (``offshelf.classifiers.clip.load_clip``)."""

    def __init__(self, model: nn.Module, tokenizer, texts: str | Sequence[str] | None = None):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.texts = [texts] if isinstance(texts, str) else (list(texts) if texts is not None else None)
        self._classifier = None
        self._index: torch.Tensor | None = None

    def prepare(self, context):
        from offshelf.classifiers.clip import CLIPPromptClassifier

        texts = self.texts if self.texts is not None else context.get("prompts")
        if not texts:
            raise ValueError("CLIP guidance needs a text: the pipeline's prompt (given as text, not only as "
                             "embeddings), or texts= for the objective")
        unique = list(dict.fromkeys(texts))
        if self._classifier is None or self._classifier.prompts != unique:
            self._classifier = CLIPPromptClassifier(self.model, self.tokenizer, unique)
        self._texts = list(texts)
        self._index = torch.tensor([unique.index(t) for t in texts])

    def gradient(self, z, decode, context):
        if self._classifier is None:
            self.prepare(context)
        index = self._index
        if len(index) == 1:
            index = index.expand(len(z))
        if len(index) != len(z):  # a chunk of the batch: context carries its offset
            start = context.get("offset", 0)
            index = self._index[start:start + len(z)]
        index = index.to(z.device)
        classifier = self._classifier.to(z.device)
        grad, logits = calibrated_gradient(z.float(), index, lambda u: classifier(decode(u)), 1.0, 0.0)
        return grad, logits.gather(1, index[:, None])[:, 0]


def chunked_gradient(objective: Objective, z: torch.Tensor, decode, context: dict, chunk: int | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``objective.gradient`` over chunks of ``chunk`` images (None: the whole batch at once)."""
    if not chunk or chunk >= len(z):
        return objective.gradient(z, decode, dict(context, offset=0))
    grads, values = [], []
    for start in range(0, len(z), chunk):
        grad, value = objective.gradient(z[start:start + chunk], decode, dict(context, offset=start))
        grads.append(grad)
        values.append(value)
    return torch.cat(grads), torch.cat(values)


def objective_from(objective, *, target=None, softplus_beta: float = 3.0, joint_temperature: float = 1.0,
                   marginal_temperature: float = 0.5, adapter: InputAdapter | None = None, clip=None,
                   texts=None) -> Objective:
    """An :class:`Objective` from what a user passes to ``offshelf.guide``:

    * an :class:`Objective` -- as is;
    * an ``nn.Module`` classifier (logits) with ``target=`` -- :class:`ClassifierObjective`, after
      Softplus surgery with ``softplus_beta`` (``inf`` keeps the ReLUs);
    * ``"clip"`` with ``clip=(open_clip model, tokenizer)`` or ``clip="<arch>:<pretrained>"``
      (open_clip names; weights from open_clip's cache) -- :class:`CLIPObjective` (``texts``:
      default the prompts);
    * any other callable -- a reward, :class:`RewardObjective`.
    """
    if isinstance(objective, Objective):
        return objective
    if isinstance(objective, str):
        if objective != "clip":
            raise ValueError(f"objective {objective!r}: expected 'clip', a classifier, a reward callable or an "
                             "offshelf.integrations.objectives.Objective")
        if clip is None:
            raise ValueError("objective='clip' needs clip=(open_clip model, tokenizer) or clip='<arch>:<pretrained>'")
        if isinstance(clip, str):
            from offshelf.classifiers.clip import load_clip

            name, pretrained = (clip, None) if clip.startswith(("hf-hub:", "local-dir:")) else clip.partition(":")[::2]
            model, tokenizer = load_clip(name, pretrained or None)
        else:
            model, tokenizer = clip
        return CLIPObjective(model, tokenizer, texts)
    if isinstance(objective, nn.Module) and target is not None:
        from offshelf.classifiers.softplus import softplus_surgery

        return ClassifierObjective(softplus_surgery(objective, softplus_beta), target, joint_temperature,
                                   marginal_temperature, adapter)
    if isinstance(objective, nn.Module):
        raise ValueError(f"{type(objective).__name__}: a classifier objective needs target= (its class to guide "
                         "towards); for a module that returns a reward per image, wrap it: RewardObjective(module)")
    if callable(objective):
        return RewardObjective(objective)
    raise TypeError(f"cannot guide with {type(objective).__name__}: expected a classifier (with target=), 'clip', "
                    "a reward callable or an Objective")


__all__ = ["CLIPObjective", "ClassifierObjective", "Objective", "RewardObjective", "chunked_gradient",
           "objective_from"]
