"""The rehearsal stand-ins (tests/rehearsal/standins.py) are what the real downloads look like,
only tiny: every file loads through offshelf's real loader, with the flags in manifest.json,
its bytes are deterministic, and the local server hands out exactly those bytes."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch
import yaml

from rehearsal import standins
from rehearsal.server import serve

PROMPTS = ["Van Gogh style cat", "ice frog"]


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    # shipped in tests/fixtures/reference: absent is an error, not a skip
    assert (standins.REFERENCE_DIR / standins.EDM_REFERENCE_PICKLE).is_file(), "NVlabs-written EDM fixture is absent"
    out = tmp_path_factory.mktemp("standins")
    start = time.perf_counter()
    result = standins.build(out)
    result["wall_s"] = time.perf_counter() - start
    result["out"] = out
    return result


def _manifest(built):
    return json.loads((built["out"] / "manifest.json").read_text())


def _registry(built):
    return yaml.safe_load((built["out"] / "registry.yaml").read_text())["checkpoints"]


def test_registry_yaml_pins_every_file_under_its_real_name(built):
    from offshelf.checkpoints import REGISTRY, hash_prefix_from_filename

    entries = _registry(built)
    assert built["wall_s"] < 60, f"building the stand-ins took {built['wall_s']:.1f} s"
    on_disk = {p.relative_to(built["out"]).as_posix() for p in built["out"].rglob("*") if p.is_file()}
    assert on_disk - {e["filename"] for e in entries} == {"registry.yaml", "manifest.json"}
    for e in entries:
        path = built["out"] / e["filename"]
        assert (e["sha256"], e["size"]) == (_sha256(path), path.stat().st_size), e["name"]
        assert e["url"] == "{base_url}/" + e["filename"]
        assert standins.registry_url(e, "http://h:1/") == f"http://h:1/{e['filename']}"
        if e["name"] in ("resnet50_v2", "resnet101_v2"):  # torch.hub name: its own hash prefix
            assert hash_prefix_from_filename(e["filename"]) == e["hash_prefix"] == e["sha256"][:8]
        elif e["registered"]:
            assert e["filename"] == REGISTRY[e["name"]].filename
    names = {e["name"] for e in entries if e["registered"]}
    assert names == {"adm_imagenet128_cond_diffusion", "adm_imagenet128_classifier", "adm_imagenet256_uncond_diffusion",
                     "edm_imagenet64_cond", "dit_xl2_256", "resnet50_v2", "resnet101_v2", "inception_cleanfid_legacy_tf",
                     "ref_imagenet128", "ref_imagenet256", "ref_imagenet64_edm"}


def test_adm_state_dicts_load_strictly_with_the_manifest_flags(built):
    from offshelf.backbones import adm

    manifest = _manifest(built)
    expected = {"adm_imagenet128_cond_diffusion": (6, 128), "adm_imagenet256_uncond_diffusion": (6, 256)}
    for name in ("adm_imagenet128_cond_diffusion", "adm_imagenet128_classifier", "adm_imagenet256_uncond_diffusion"):
        flags = manifest[name]["flags"]
        model = adm.create_from_flags(flags).eval()
        model.load_state_dict(adm.read_state_dict(built["files"][name]), strict=True)
        size = flags["image_size"]
        x, t = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
        with torch.no_grad():
            if name in expected:
                out = model(x, t, torch.tensor([3]) if flags["class_cond"] else None)
                assert tuple(out.shape) == (1, *expected[name][:1], size, size)
            else:
                out = model(x, t)
                assert tuple(out.shape) == (1, standins.NUM_CLASSES)
        assert torch.isfinite(out).all() and out.std() > 0, name
        # the official preset does not fit: the stand-in is tiny, and the loader says so
        with pytest.raises(ValueError, match="does not match"):
            adm.load_adm(built["files"][name], name)


def test_adm128_workflow_loading_path(built):
    """The adm128 backend's loader with the manifest's flags as ``imagenet.adm_flags`` and the
    hub-named ResNet-101 as the off-the-shelf classifier."""
    from offshelf.backends.adm128 import ADM128Backend
    from offshelf.settings import Setting

    manifest, files = _manifest(built), built["files"]
    backend = ADM128Backend({"imagenet": {
        "device": "cpu", "classifier": "resnet101",
        "adm_flags": {"denoiser": manifest["adm_imagenet128_cond_diffusion"]["flags"],
                      "finetuned": manifest["adm_imagenet128_classifier"]["flags"]}}})
    models = backend.load(
        {"denoiser": str(files["adm_imagenet128_cond_diffusion"]),
         "finetuned": str(files["adm_imagenet128_classifier"]), "offshelf": str(files["resnet101_v2"])},
        {"respacing": "2"}, Setting(classifier="combined"))
    assert models.image_shape == (3, 128, 128) == backend.image_shape
    assert models.offshelf is not None and models.finetuned is not None


def test_edm_pickle_loads_through_the_restricted_unpickler(built):
    from offshelf.backbones.edm import load_edm_pickle, read_edm_pickle

    path = built["files"]["edm_imagenet64_cond"]
    net = load_edm_pickle(path)
    assert (net.img_resolution, net.img_channels, net.label_dim) == (64, 3, 1000)
    assert _manifest(built)["edm_imagenet64_cond"]["init_kwargs"]["img_resolution"] == 64
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    labels = torch.nn.functional.one_hot(torch.tensor([1, 999]), 1000).float()
    with torch.no_grad():
        out = net(x, torch.tensor([2.0, 0.5]), labels)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # NVlabs' structure: same persistent classes and module-state keys as the NVlabs-written fixture
    def records(obj, acc):
        if hasattr(obj, "class_name"):
            acc.add((obj.class_name, tuple(sorted(obj.state))))
        children = obj.state.get("_modules", {}) if hasattr(obj, "state") else {}
        for child in children.values():
            if child is not None:
                records(child, acc)
        return acc
    ours, reference = read_edm_pickle(path), read_edm_pickle(standins.REFERENCE_DIR / standins.EDM_REFERENCE_PICKLE)
    assert records(ours["ema"], set()) == records(reference["ema"], set())
    assert set(ours) == set(reference) and ours["augment_pipe"] is None
    # new weights, not the fixture's
    assert not torch.equal(ours["ema"].state["_modules"]["model"].state["_modules"]["out_conv"].state["_parameters"]["weight"],
                           reference["ema"].state["_modules"]["model"].state["_modules"]["out_conv"].state["_parameters"]["weight"])


def test_dit_original_checkpoint_and_vae_folder_load_offline(built, monkeypatch):
    pytest.importorskip("diffusers")
    from offshelf.backbones.dit import LATENT_SCALE, DiTDenoiser, diffusers_to_original, load_dit, load_vae

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = built["files"]["dit_xl2_256"]
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert list(state) == list(standins.dit_original_shapes())  # DiT's own key order, no "ema" wrapper
    model = load_dit(path)  # a file: the original-format path (load_dit_original)
    denoiser = DiTDenoiser(model)
    assert (denoiser.in_channels, denoiser.latent_size, denoiser.num_classes) == (4, 32, 1000)
    # offshelf's converter maps the loaded network back to exactly the file's tensors
    back = diffusers_to_original(model.state_dict(), state["pos_embed"])
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    z = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = denoiser(z, torch.tensor([999]), torch.tensor([1000]))  # null class: CFG's branch
        image = load_vae(built["out"] / standins.VAE_FOLDER).decode(z / LATENT_SCALE).sample
    assert out.shape == (1, 8, 32, 32) and torch.isfinite(out).all()
    assert image.shape == (1, 3, 256, 256) and torch.isfinite(image).all()


@pytest.mark.parametrize("arch", ["resnet50", "resnet101"])
def test_hub_named_resnets_load_through_load_classifier(built, arch, tmp_path):
    from offshelf.checkpoints import ChecksumError
    from offshelf.classifiers.zoo import load_classifier

    path = built["files"][f"{arch}_v2"]
    start = time.perf_counter()
    model = load_classifier(arch, weights_path=path)  # the prefix in the name is verified
    load_s = time.perf_counter() - start
    assert load_s < 10, f"{arch} stand-in took {load_s:.1f} s to load"
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    logits = model(x)
    grad, = torch.autograd.grad(logits.log_softmax(-1)[:, 0].sum(), x)
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all() and torch.isfinite(grad).all()
    assert 1e-3 < logits.std() < 1e3, "eval-mode activations neither vanish nor explode"
    tampered = tmp_path / path.name  # same name, one byte changed: the name no longer vouches for it
    data = bytearray(path.read_bytes())
    data[-100] ^= 1
    tampered.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="hash prefix"):
        load_classifier(arch, weights_path=tampered)


def test_inception_torchscript_loads_in_both_clean_fid_modes(built):
    from offshelf.metrics import cleanfid_feature_fn, load_inception

    images, _ = standins.reference_images(3, 128, seed=5)
    features = {}
    for mode in ("legacy_tensorflow", "clean"):
        model = load_inception(built["files"]["inception_cleanfid_legacy_tf"], mode)
        features[mode] = cleanfid_feature_fn(model, mode)(images)
        assert features[mode].shape == (3, 2048) and np.isfinite(features[mode]).all()
        assert features[mode].std(axis=0).max() > 0, "features vary across images"
    probs = model.base(torch.zeros(1, 3, 64, 64))  # the un-featured call: 1008-way softmax
    assert probs.shape == (1, 1008) and torch.allclose(probs.sum(), torch.tensor(1.0))


def test_reference_batches_load_and_give_a_real_fid(built):
    from offshelf.metrics import extract_features, feature_statistics, inception_feature_fn, load_reference_stats
    from offshelf.shards import load_samples

    files = built["files"]
    for name, size in (("ref_imagenet128", 128), ("ref_imagenet256", 256)):
        images, labels = load_samples(files[name], require_labels=False)
        assert images.dtype == np.uint8 and images.shape == (standins.REFERENCE_IMAGES, size, size, 3)
        assert labels.shape == (standins.REFERENCE_IMAGES,)
    stats = load_reference_stats(files["ref_imagenet64_edm"], expected_dim=2048)
    assert stats.sigma.shape == (2048, 2048)
    with np.load(files["ref_imagenet64_edm"]) as data:
        assert sorted(data) == ["mu", "sigma"]  # EDM's fid-refs: statistics only

    # The statistics are the stand-in Inception's features of arr_0 (so a rehearsal FID is a real
    # FID); compared directly, since a 2048-d sqrtm costs ~40 s on one core.
    feature_fn = inception_feature_fn("legacy_tensorflow", files["inception_cleanfid_legacy_tf"])
    reference = load_reference_stats(files["ref_imagenet128"], expected_dim=2048)
    own = feature_statistics(extract_features(load_samples(files["ref_imagenet128"], require_labels=False)[0], feature_fn))
    np.testing.assert_allclose(reference.mu, own.mu, rtol=1e-6, atol=1e-6 * np.abs(own.mu).max())
    np.testing.assert_allclose(reference.sigma, own.sigma, rtol=1e-5, atol=1e-6 * np.abs(own.sigma).max())
    other_images, _ = standins.reference_images(8, 128, seed=99)
    other = feature_statistics(extract_features(255 - other_images, feature_fn))
    assert np.abs(other.mu - reference.mu).max() > 1e-3 * np.abs(reference.mu).max()


def test_clip_folder_loads_offline_through_load_clip(built, monkeypatch):
    pytest.importorskip("open_clip")
    from offshelf.classifiers.clip import CLIPPromptClassifier, load_clip

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = built["out"] / standins.CLIP_FOLDER
    # text2image.run_config's call: load_clip(clip.model, clip.pretrained, cache_dir=clip.cache_dir)
    model, tokenizer = load_clip(f"local-dir:{folder}", None, cache_dir=None)
    saved = torch.load(folder / "open_clip_pytorch_model.bin", map_location="cpu", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())  # the file's weights, not random init
    classifier = CLIPPromptClassifier(model, tokenizer, PROMPTS)
    with torch.no_grad():
        logits = classifier(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


def test_bytes_are_deterministic_across_builds(tmp_path):
    """Two builds, each in a fresh process with its own string-hash seed (TorchScript and pickle
    output can follow set order), write the same bytes. Fresh processes both: a build inside the
    test session would inherit whatever global torch state earlier tests left."""
    for hash_seed, folder in (("1", "first"), ("12345", "second")):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=os.pathsep.join(sys.path))
        subprocess.run([sys.executable, standins.__file__, str(tmp_path / folder)], env=env, check=True,
                       capture_output=True, timeout=300)
    first, second = ({e["filename"]: e["sha256"]
                      for e in yaml.safe_load((tmp_path / f / "registry.yaml").read_text())["checkpoints"]}
                     for f in ("first", "second"))
    assert first == second
    for name in ("registry.yaml", "manifest.json"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes()


def test_server_hands_out_identical_bytes(built, tmp_path):
    from offshelf.checkpoints import download

    entries = _registry(built)
    with serve(built["out"]) as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        for e in entries:
            with urllib.request.urlopen(standins.registry_url(e, base_url), timeout=30) as response:
                assert hashlib.sha256(response.read()).hexdigest() == e["sha256"], e["filename"]
        # offshelf's own downloader, verifying the pinned hash and the hub-name prefix
        resnet = next(e for e in entries if e["name"] == "resnet101_v2")
        dest = tmp_path / resnet["filename"]
        assert download(standins.registry_url(resnet, base_url), dest, resnet["sha256"], resnet["hash_prefix"],
                        progress=False) == resnet["sha256"]
    with pytest.raises(OSError):  # shut down: the port no longer answers
        urllib.request.urlopen(base_url, timeout=2)
    shutil.rmtree(tmp_path)
