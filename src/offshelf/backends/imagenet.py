"""What the ImageNet backends share: the off-the-shelf torchvision classifier file a setting
names, the device, and evaluation against published reference batches under one of two FID
protocols (config key ``imagenet.fid_protocol``):

* ``adm_tf`` (default): the TF-Inception port in clean-fid's ``legacy_tensorflow`` mode, TF's
  resize inside the graph. The reference ``mu``/``sigma`` in ADM's ``VIRTUAL_imagenet*_labeled.npz``
  (and EDM's fid-refs) were computed with that graph, so this is ADM's evaluator's protocol: the
  one behind the baselines the paper quotes (ADM-G 2.97, EDM's FIDs).
* ``pytorch_fid``: pytorch-fid's FID Inception (``pt_inception-2015-12-05-6726825d.pth``, bilinear
  resize to 299, inputs in [-1, 1]) against the *same* reference statistics: what EluCD's own
  numbers used (docs/method.md §7). The port differs from the TF graph in its resize and round-off, which
  moves FID by a few hundredths: the size of the gaps between the paper's rows.

Every metrics file records its protocol and the sha256 of both files it depends on
(:meth:`ImageNetBackend.provenance`), so numbers from different protocols are never mixed silently.
No classification accuracy is reported: the guiding ResNet cannot judge its own guidance, and
the Inception's 1008-way head does not use ImageNet's class order.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch

from offshelf.backends.base import Backend, FeatureExtractor, Pretrained, Reference
from offshelf.backends.capabilities import Capability
from offshelf.settings import Setting

NUM_CLASSES = 1000
INCEPTION = "inception_cleanfid_legacy_tf"
#: ``imagenet.fid_protocol`` -> the registry name of its feature extractor
FID_PROTOCOLS = {"adm_tf": INCEPTION, "pytorch_fid": "inception_pytorch_fid"}
DEFAULT_FID_PROTOCOL = "adm_tf"
# ADM's reference batches hold 10k images (arr_0) besides mu/sigma: precision/recall need them.
# EDM's fid-refs hold only mu/sigma.
REFERENCE_HAS_IMAGES = {"ref_imagenet128": True, "ref_imagenet256": True, "ref_imagenet64_edm": False}


def classifier_checkpoint_name(network: str) -> str:
    """Registry name of a torchvision classifier's weights: the paper's V2 file for resnet50 /
    resnet101 (``resnet101_v2``), else ``torchvision_<network>`` (its DEFAULT weights, registered
    from torchvision's weights enum). An unknown name is a ValueError with the closest valid ones."""
    from offshelf.checkpoints import CheckpointError
    from offshelf.classifiers.zoo import classifier_checkpoint

    try:
        return classifier_checkpoint(network).name
    except CheckpointError as err:
        raise ValueError(f"off-the-shelf network {network!r}: {err}; or a CLIP zero-shot classifier "
                         f"'clip:<open_clip model>/<pretrained tag>'") from None


class ImageNetBackend(Backend):
    """Base of adm128, edm64 and dit256. Options: the config's ``imagenet`` section."""

    num_classes = NUM_CLASSES
    capabilities = frozenset({Capability.PAPER_COMPARABLE, Capability.REFERENCE_FEATURES, Capability.PROVENANCE,
                              Capability.GPU})
    config_schema = "schemas/imagenet.schema.yaml"  # the `imagenet:` section
    #: registry name of the diffusion network
    denoiser_checkpoint: str = ""
    #: registry name of the reference batch used by default (``imagenet.reference`` overrides)
    default_reference: str = ""

    def __init__(self, options: Mapping[str, Any] | None = None):
        super().__init__(options)
        if not REFERENCE_HAS_IMAGES.get(self.reference_name, True):  # EDM's fid-refs: mu/sigma only
            self.capabilities = self.capabilities - {Capability.REFERENCE_FEATURES}
        if self.imagenet.get("device", "cuda") == "cpu":  # its jobs ask for no GPU (offshelf.devices)
            self.capabilities = self.capabilities - {Capability.GPU}

    @classmethod
    def options_from_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        return {"imagenet": dict(config.get("imagenet", {}))}

    @property
    def imagenet(self) -> dict[str, Any]:
        return self.options.get("imagenet", {})

    @property
    def reference_name(self) -> str:
        return self.imagenet.get("reference", self.default_reference)

    @property
    def device(self) -> torch.device:
        device = torch.device(self.imagenet.get("device", "cuda"))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("config key 'imagenet.device' is 'cuda' but no CUDA device is visible; "
                               "set imagenet.device: cpu to run (slowly) on the CPU")
        return device

    def network(self, setting: Setting | None) -> str:
        """A setting's off-the-shelf classifier: a torchvision architecture (``resnet101``,
        ``convnext_tiny``...) or a CLIP zero-shot one (``clip:ViT-B-32/openai``)."""
        return (setting.network if setting is not None and setting.network else
                self.imagenet.get("classifier", "resnet101"))

    def guides_off_the_shelf(self, setting: Setting | None) -> bool:
        return setting is not None and setting.uses_classifier and setting.classifier in ("offshelf", "combined")

    def files(self, setting: Setting) -> dict[str, Pretrained]:
        """The denoiser and, when guided, the classifier's file: a torchvision classifier's
        verified registry file. A CLIP classifier has none here: open_clip fetches and caches its
        own weights (as for text-to-image, docs/clip.md)."""
        names = {"denoiser": Pretrained(self.denoiser_checkpoint)}
        if self.guides_off_the_shelf(setting):
            from offshelf.classifiers.clip import parse_clip_network

            self.check_network(setting)  # here too: a subclass's `unsupported` may not call ours
            network = self.network(setting)
            if parse_clip_network(network) is None:
                names["offshelf"] = Pretrained(classifier_checkpoint_name(network))
        return names

    def unsupported(self, setting: Setting) -> str | None:
        if setting.uses_classifier and setting.classifier != "offshelf":
            return "this backbone guides with the off-the-shelf classifier only"
        self.check_network(setting)
        return None

    def check_network(self, setting: Setting) -> None:
        """A setting's network must name a classifier (ValueError otherwise, naming the setting),
        and Softplus(β) must have ReLUs to replace: CLIP's ViT towers and torchvision's ViTs,
        Swins and ConvNeXts are GELU. Checked from configs and meta-device builds: no file read."""
        if not self.guides_off_the_shelf(setting):
            return
        from offshelf.classifiers.clip import clip_has_relu, parse_clip_network
        from offshelf.classifiers.zoo import classifier_has_relu

        network = self.network(setting)
        try:
            clip = parse_clip_network(network)
            if clip is None:
                classifier_checkpoint_name(network)
            smooth = not math.isinf(setting.softplus_beta)
            if smooth and clip is not None and not clip_has_relu(clip[0]):
                raise ValueError(f"softplus_beta = {setting.softplus_beta:g}, but CLIP model {clip[0]!r} has no ReLU "
                                 f"in its image tower (GELU), so Softplus surgery does not apply; use softplus_beta: "
                                 f"inf with this network (ReLU towers: the RN50 family)")
            if smooth and clip is None and not classifier_has_relu(network):
                raise ValueError(f"softplus_beta = {setting.softplus_beta:g}, but torchvision {network!r} has no ReLU "
                                 f"module, so Softplus surgery does not apply; use softplus_beta: inf with this network")
        except ValueError as err:
            raise ValueError(f"setting {setting.name}: {err}") from None

    def load_offshelf(self, files: Mapping[str, str], setting: Setting | None) -> torch.nn.Module | None:
        """The setting's off-the-shelf classifier on the device, or None when it guides with none."""
        from offshelf.classifiers.clip import load_clip, parse_clip_network, zero_shot_classifier
        from offshelf.classifiers.zoo import load_classifier

        if not self.guides_off_the_shelf(setting):
            return None
        network = self.network(setting)
        clip = parse_clip_network(network)
        if clip is not None:
            model, tokenizer = load_clip(*clip, cache_dir=self.imagenet.get("clip_cache"), device=self.device)
            return zero_shot_classifier(model, tokenizer)
        return load_classifier(network, weights_path=files["offshelf"]).to(self.device)

    # ------------------------------------------------------------------ evaluation

    @property
    def fid_protocol(self) -> str:
        protocol = self.imagenet.get("fid_protocol", DEFAULT_FID_PROTOCOL)
        if protocol not in FID_PROTOCOLS:
            raise ValueError(f"config key 'imagenet.fid_protocol' is {protocol!r}; expected one of "
                             f"{', '.join(FID_PROTOCOLS)}")
        return protocol

    def evaluation_files(self) -> dict[str, Pretrained]:
        # one role for either extractor: the rules and scripts stay protocol-agnostic
        return {"inception": Pretrained(FID_PROTOCOLS[self.fid_protocol]),
                "reference_stats": Pretrained(self.reference_name)}

    def feature_extractor(self, files: Mapping[str, str]) -> FeatureExtractor:
        protocol = self.fid_protocol
        if protocol == "pytorch_fid":
            from offshelf.fid_inception import fid_inception_feature_fn

            features, name = fid_inception_feature_fn(files["inception"], self.device), "Inception (pytorch_fid)"
        else:
            from offshelf.metrics import inception_feature_fn

            mode = self.imagenet.get("fid_mode", "legacy_tensorflow")
            features, name = inception_feature_fn(mode, files["inception"], self.device), f"Inception (adm_tf: {mode})"
        return FeatureExtractor(features, batch_size=self.imagenet.get("batch_size", 200), name=name,
                                device=self.device)

    def provenance(self, files: Mapping[str, str]) -> dict[str, Any]:
        """The FID protocol and the sha256 of the feature extractor and reference statistics files
        (digests cached by file identity: no re-read of a multi-GB file per evaluation)."""
        from offshelf.checkpoints import file_sha256

        return {"fid_protocol": self.fid_protocol,
                "feature_extractor": FID_PROTOCOLS[self.fid_protocol],
                "feature_extractor_sha256": file_sha256(files["inception"]),
                "reference_stats": self.reference_name,
                "reference_stats_sha256": file_sha256(files["reference_stats"])}

    def reference_features(self, files: Mapping[str, str], extractor: FeatureExtractor,
                           evaluation: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Inception features of the reference batch's images (``arr_0``): precision/recall's real set."""
        from offshelf.metrics import extract_features
        from offshelf.shards import load_samples

        images, _ = load_samples(files["reference_stats"], require_labels=False)
        return {"features": extract_features(images, extractor.features, extractor.batch_size)}

    def reference(self, files: Mapping[str, str], reference_features: Mapping[str, np.ndarray] | None) -> Reference:
        from offshelf.metrics import load_reference_stats

        features = None if reference_features is None else np.asarray(reference_features["features"])
        return Reference(features=features, stats=load_reference_stats(files["reference_stats"], expected_dim=2048))
