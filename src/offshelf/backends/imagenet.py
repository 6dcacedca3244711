"""What the ImageNet backends share: the off-the-shelf torchvision classifier file a setting
names, the device, and evaluation against published reference batches under one of two FID
protocols (config key ``imagenet.fid_protocol``):

* ``adm_tf`` (default): the TF-Inception port in clean-fid's ``legacy_tensorflow`` mode, TF's
  resize inside the graph. The reference ``mu``/``sigma`` in ADM's ``VIRTUAL_imagenet*_labeled.npz``
  (and EDM's fid-refs) were computed with that graph, so this is ADM's evaluator's protocol: the
  one behind the baselines the paper quotes (ADM-G 2.97, EDM's FIDs).
* ``pytorch_fid``: pytorch-fid's FID Inception (``pt_inception-2015-12-05-6726825d.pth``, bilinear
  resize to 299, inputs in [-1, 1]) against the *same* reference statistics: what EluCD's own
  numbers used (spec §9). The port differs from the TF graph in its resize and round-off, which
  moves FID by a few hundredths: the size of the gaps between the paper's rows.

Every metrics file records its protocol and the sha256 of both files it depends on
(:meth:`ImageNetBackend.provenance`), so numbers from different protocols are never mixed silently.
No classification accuracy is reported: the guiding ResNet cannot judge its own guidance, and
the Inception's 1008-way head does not use ImageNet's class order.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from offshelf.backends.base import Backend, FeatureExtractor, Pretrained, Reference
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
    """Registry name of the paper's weights for a torchvision architecture (``resnet101_v2``)."""
    from offshelf.checkpoints import REGISTRY

    name = f"{network}_v2"
    if name not in REGISTRY:
        raise ValueError(f"no pinned weights for off-the-shelf network {network!r}; "
                         f"known: {', '.join(k[:-3] for k in sorted(REGISTRY) if k.endswith('_v2'))}")
    return name


class ImageNetBackend(Backend):
    """Base of adm128, edm64 and dit256. Options: the config's ``imagenet`` section."""

    num_classes = NUM_CLASSES
    paper_comparable = True
    #: registry name of the diffusion network
    denoiser_checkpoint: str = ""
    #: registry name of the reference batch used by default (``imagenet.reference`` overrides)
    default_reference: str = ""

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
        """The torchvision architecture of a setting's off-the-shelf classifier."""
        return (setting.network if setting is not None and setting.network else
                self.imagenet.get("classifier", "resnet101"))

    def files(self, setting: Setting) -> dict[str, Pretrained]:
        names = {"denoiser": Pretrained(self.denoiser_checkpoint)}
        if setting.method == "guided" and setting.classifier in ("offshelf", "combined"):
            names["offshelf"] = Pretrained(classifier_checkpoint_name(self.network(setting)))
        return names

    def unsupported(self, setting: Setting) -> str | None:
        if setting.method == "guided" and setting.classifier != "offshelf":
            return "this backbone guides with the off-the-shelf classifier only"
        return None

    def load_offshelf(self, files: Mapping[str, str], setting: Setting | None) -> torch.nn.Module | None:
        from offshelf.classifiers.zoo import load_classifier

        if "offshelf" not in files:
            return None
        return load_classifier(self.network(setting), weights_path=files["offshelf"]).to(self.device)

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

    def has_reference_features(self) -> bool:
        return REFERENCE_HAS_IMAGES.get(self.reference_name, True)

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
        from offshelf.metrics import extract_features, load_samples

        images, _ = load_samples(files["reference_stats"], require_labels=False)
        return {"features": extract_features(images, extractor.features, extractor.batch_size)}

    def reference(self, files: Mapping[str, str], reference_features: Mapping[str, np.ndarray] | None) -> Reference:
        from offshelf.metrics import load_reference_stats

        features = None if reference_features is None else np.asarray(reference_features["features"])
        return Reference(features=features, stats=load_reference_stats(files["reference_stats"], expected_dim=2048))
