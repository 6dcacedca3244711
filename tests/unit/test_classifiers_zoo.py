"""The torchvision classifier zoo: paper weights pinned, models built exactly as torchvision does."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm

from offshelf.checkpoints import REGISTRY, CheckpointError, ChecksumError
from offshelf.classifiers.zoo import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    classifier_checkpoint,
    load_classifier,
)


def save_torchvision_style(state_dict: dict, folder: Path, arch: str) -> Path:
    """Save as ``<arch>-<first 8 hex of sha256>.pth``, torch.hub's naming convention."""
    raw = folder / f"{arch}.pth"
    torch.save(state_dict, raw)
    sha = hashlib.sha256(raw.read_bytes()).hexdigest()
    return raw.rename(folder / f"{arch}-{sha[:8]}.pth")


def test_paper_weights_are_the_registry_files():
    assert tvm.ResNet50_Weights.IMAGENET1K_V2.url == REGISTRY["resnet50_v2"].url
    assert tvm.ResNet101_Weights.IMAGENET1K_V2.url == REGISTRY["resnet101_v2"].url
    assert classifier_checkpoint("resnet50") is REGISTRY["resnet50_v2"]
    assert classifier_checkpoint("resnet101") is REGISTRY["resnet101_v2"]


def test_other_torchvision_models_are_registered_from_their_weights():
    checkpoint = classifier_checkpoint("resnet18")
    assert checkpoint.url == tvm.ResNet18_Weights.DEFAULT.url
    assert checkpoint.filename == "resnet18-f37072fd.pth" and checkpoint.hash_prefix == "f37072fd"
    assert REGISTRY["torchvision_resnet18"] is checkpoint


def test_imagenet_normalisation_constants():
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert IMAGENET_STD == (0.229, 0.224, 0.225)


def test_resnet18_from_weights_path_reproduces_the_original_model(tmp_path):
    torch.manual_seed(0)
    original = tvm.resnet18().eval()
    path = save_torchvision_style(original.state_dict(), tmp_path, "resnet18")

    model = load_classifier("resnet18", weights_path=path)

    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), rtol=0, atol=0)


def test_googlenet_matches_torchvisions_own_pretrained_construction(tmp_path, monkeypatch):
    """torchvision builds googlenet differently when given weights (transform_input, aux heads
    dropped after loading); the zoo's weights=None build must be the same network."""
    torch.manual_seed(1)
    weights = tvm.GoogLeNet_Weights.DEFAULT
    source = tvm.googlenet(weights=None, num_classes=1000, aux_logits=True, transform_input=True, init_weights=False)
    state_dict = source.state_dict()
    # torch.hub loads a file already in $TORCH_HOME/hub/checkpoints without downloading it.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    hub_file.parent.mkdir(parents=True)
    torch.save(state_dict, hub_file)
    reference = tvm.googlenet(weights=weights).eval()

    model = load_classifier("googlenet", weights_path=save_torchvision_style(state_dict, tmp_path, "googlenet"))

    assert model.transform_input and model.aux1 is None and model.aux2 is None
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_paper_file_under_another_name_must_match_the_published_hash(tmp_path):
    impostor = tmp_path / "resnet50_weight_V2.pth"  # the paper's name for resnet50-11ad3fa6.pth
    torch.save({"fc.weight": torch.zeros(1)}, impostor)
    with pytest.raises(ChecksumError, match="11ad3fa6"):
        load_classifier("resnet50", weights_path=impostor)


def test_file_whose_name_lies_about_its_hash_is_rejected(tmp_path):
    torch.manual_seed(0)
    path = save_torchvision_style(tvm.resnet18().state_dict(), tmp_path, "resnet18")
    liar = path.rename(tmp_path / "resnet18-00000000.pth")
    with pytest.raises(ChecksumError, match="00000000"):
        load_classifier("resnet18", weights_path=liar)


def test_weights_for_another_architecture_give_an_error_naming_the_file(tmp_path):
    path = save_torchvision_style({"conv1.weight": torch.zeros(1)}, tmp_path, "resnet18")
    with pytest.raises(CheckpointError, match=f"cannot load {path}.*resnet18"):
        load_classifier("resnet18", weights_path=path)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(CheckpointError, match="unknown classifier 'resnet5'.*resnet50.*resnet101"):
        load_classifier("resnet5")


def test_missing_weights_path_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_classifier("resnet50", weights_path=tmp_path / "resnet50_weight_V2.pth")


# --- any torchvision classifier by name, through the registry ------------------------------------

def test_a_torchvision_name_resolves_in_a_fresh_process_and_fetches_offline(tmp_path):
    """A `fetch_checkpoint` job or `offshelf checkpoints fetch` runs in its own process, where no
    setting registered the name: `torchvision_<model>` must resolve from the weights enum there."""
    import subprocess
    import sys

    weights = tvm.ConvNeXt_Tiny_Weights.DEFAULT
    filename = weights.url.rsplit("/", 1)[-1]
    code = ("from offshelf.checkpoints import get; c = get('torchvision_convnext_tiny'); "
            "print(c.url, c.filename, c.hash_prefix)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [weights.url, filename, filename.rsplit("-", 1)[1].split(".")[0]]

    # an offline fetch in a fresh process verifies the cached file against the enum's hash prefix:
    # a file of other weights under the published name is refused
    torch.manual_seed(0)
    ours = save_torchvision_style(tvm.resnet18().state_dict(), tmp_path, "resnet18")
    published = tvm.ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[-1]
    ours.rename(tmp_path / published)
    fetch = [sys.executable, "-m", "offshelf", "checkpoints", "fetch", "torchvision_resnet18", "--offline",
             "--cache", str(tmp_path)]
    result = subprocess.run(fetch, capture_output=True, text=True)
    assert result.returncode == 1
    assert "cached checkpoint 'torchvision_resnet18'" in result.stderr and "is corrupt" in result.stderr
    assert "f37072fd" in result.stderr


def test_which_torchvision_classifiers_softplus_surgery_applies_to():
    from offshelf.classifiers.softplus import count_relus
    from offshelf.classifiers.zoo import classifier_has_relu

    assert classifier_has_relu("resnet50") and classifier_has_relu("vgg11")
    assert not classifier_has_relu("vit_b_16") and not classifier_has_relu("convnext_tiny")
    assert count_relus(tvm.resnet18()) > 0  # the meta-device answer is the real network's


def test_checkpoints_list_says_every_torchvision_classifier_is_known(tmp_path, capsys):
    from offshelf.cli import main

    assert main(["checkpoints", "list", "--cache", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert "resnet101_v2" in listing and "torchvision_<model>: any torchvision classification model" in listing


def test_a_misspelt_torchvision_name_suggests_the_close_ones():
    from offshelf.checkpoints import get

    with pytest.raises(CheckpointError, match="unknown classifier 'convnext_tiniy'; did you mean convnext_tiny"):
        get("torchvision_convnext_tiniy")
    with pytest.raises(CheckpointError, match="unknown checkpoint 'resnet50_v3'"):
        get("resnet50_v3")


def test_imagenet_setting_selects_a_torchvision_classifier_by_name(tmp_path):
    from offshelf.backends.adm128 import ADM128Backend
    from offshelf.backends.base import Pretrained
    from offshelf.settings import Setting

    backend = ADM128Backend({"imagenet": {"classifier": "resnet101", "device": "cpu"}})
    assert backend.files(Setting())["offshelf"] == Pretrained("resnet101_v2")
    assert backend.files(Setting(network="resnet50"))["offshelf"] == Pretrained("resnet50_v2")
    assert backend.files(Setting(network="resnet18"))["offshelf"] == Pretrained("torchvision_resnet18")
    with pytest.raises(ValueError, match=r"setting .*_resnet5: off-the-shelf network 'resnet5': .*did you mean resnet50"):
        backend.files(Setting(network="resnet5"))
    assert backend.files(Setting(network="convnext_tiny"))["offshelf"] == Pretrained("torchvision_convnext_tiny")
    with pytest.raises(ValueError, match=r"softplus_beta = 3, but torchvision 'convnext_tiny' has no ReLU"):
        backend.files(Setting(network="convnext_tiny", softplus_beta=3))
    backend.files(Setting(network="resnet18", softplus_beta=3))

    torch.manual_seed(0)
    original = tvm.resnet18().eval()
    path = save_torchvision_style(original.state_dict(), tmp_path, "resnet18")
    model = backend.load_offshelf({"offshelf": str(path)}, Setting(network="resnet18"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), rtol=0, atol=0)
    assert backend.load_offshelf({}, Setting(method="unguided")) is None
