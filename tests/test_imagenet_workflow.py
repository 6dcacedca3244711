"""The ImageNet configs plan their whole job graph with no checkpoint present, and the adm128
backend samples deterministically with tiny stand-in networks."""

import hashlib

import numpy as np
import pytest
import torch

from offshelf.config import load_config
from offshelf.backends.adm128 import ADM128Backend
from offshelf.backends.base import Pretrained
from offshelf.stages import sample_shard
from offshelf.plan import all_evaluations, all_settings, table_rows
from offshelf.settings import Setting
from workflow_utils import REPO, dry_run_jobs

# Jobs per config: fetches (networks + reference batch + Inception), 50k samples in 1k shards
# (ablations read the first 10), one evaluation per (setting, sample count).
# imagenet128_ddpm: Table 5 at gamma = 0.3 shares its tau2=0.5 row with Table 6's gamma=0.3 row instead
# of Table 6's gamma=0 row, and its tau2=1.0 row no longer equals Table 4's beta=3 row: one more
# 10k-sample setting (10 shards, 1 evaluation) than at gamma = 0 (370 -> 380, 22 -> 23).
EXPECTED_JOBS = {
    "imagenet128_ddpm": {"fetch_checkpoint": 6, "figure_analytic": 1, "calibrate": 8, "reference_features": 1,
                         "sample": 380, "evaluate": 23, "figure_calibration": 2, "report": 1, "all": 1},
    "imagenet64_edm": {"fetch_checkpoint": 4, "sample": 300, "evaluate": 6, "report": 1, "all": 1},
    "imagenet256_dit": {"fetch_checkpoint": 4, "reference_features": 1, "sample": 100, "evaluate": 2, "report": 1,
                        "all": 1},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_JOBS))
def test_dry_run_lists_the_full_graph_without_any_file(name, tmp_path, monkeypatch):
    monkeypatch.setenv("OFFSHELF_CACHE", str(tmp_path / "empty-cache"))  # nothing downloaded, no network
    jobs = dry_run_jobs("--configfile", f"config/{name}.yaml", "--config", f"results={tmp_path / 'results'}")
    assert jobs == EXPECTED_JOBS[name]


def test_ddpm_config_rows_follow_the_paper():
    config = load_config(REPO / "config" / "imagenet128_ddpm.yaml")
    rows = table_rows(config)
    assert {r.num_samples for r in rows if r.table != "table7"} == {10_000}  # Appendix A.2
    table7 = {r.label: r for r in rows if r.table == "table7"}
    assert table7["Classifier-free"].unavailable == "needs a CFG-trained model"
    assert table7["Classifier-free"].paper["fid"] == 2.43
    assert {r.num_samples for r in table7.values()} == {50_000}
    ours = table7["ResNet-101 guided (ours)"].candidates[0]
    assert (ours.softplus_beta, ours.marginal_temperature, ours.sine_factor, ours.scale) == (3.0, 0.5, 0.3, 1.0)
    assert table7["ResNet-50 guided (ours)"].candidates[0].name.endswith("_resnet50")
    assert ours.network == ""  # the default classifier keeps the plain name
    # no CFG job is planned, and ablations shared with Table 7 are evaluated twice (10k and 50k)
    assert not any(s.method == "cfg" for s in all_settings(config).values())
    evaluations = all_evaluations(config)
    assert evaluations[ours.name] == (ours.name, 50_000)
    assert evaluations[f"{ours.name}+n10000"] == (ours.name, 10_000)


def test_edm_rows_carry_steps_and_scales():
    config = load_config(REPO / "config" / "imagenet64_edm.yaml")
    names = sorted(all_settings(config))
    assert "cond_unguided_n10" in names and "cond_unguided_n36" in names
    guided = {s.num_steps: s for s in all_settings(config).values() if s.method == "guided"}
    assert {n: s.scale for n, s in guided.items()} == {10: 0.004, 18: 0.004, 36: 0.0018}
    assert all((s.softplus_beta, s.marginal_temperature, s.sine_factor, s.input) == (5.0, 0.0, 0.3, "xt")
               for s in guided.values())


def test_new_setting_fields_leave_existing_names_alone():
    assert Setting(num_steps=0, network="").name == Setting().name
    assert Setting(method="guided", cfg_scale=1.5).name.endswith("_w1.5")
    assert Setting(method="unguided", num_steps=18).name == "cond_unguided_n18"


# --------------------------------------------------------------------------- tiny ADM stand-ins

UNET_FLAGS = dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="16",
                  class_cond=True, learn_sigma=True, num_heads=1, use_fp16=False)
CLASSIFIER_FLAGS = dict(image_size=64, classifier_width=32, classifier_depth=1, classifier_attention_resolutions="1",
                        classifier_pool="adaptive")


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    import torchvision

    from offshelf.backbones import adm

    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    torch.save(adm.create_unet(**UNET_FLAGS).state_dict(), folder / "unet.pt")
    torch.save(adm.create_classifier(**CLASSIFIER_FLAGS).state_dict(), folder / "classifier.pt")
    resnet = folder / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), resnet)
    # torch.hub naming: <arch>-<sha256 prefix>.pth vouches for the file's own bytes
    named = folder / f"resnet18-{hashlib.sha256(resnet.read_bytes()).hexdigest()[:8]}.pth"
    resnet.rename(named)
    return {"denoiser": str(folder / "unet.pt"), "finetuned": str(folder / "classifier.pt"), "offshelf": str(named)}


def tiny_adm(**imagenet) -> ADM128Backend:
    return ADM128Backend({"imagenet": {"device": "cpu", "classifier": "resnet18",
                                       "adm_flags": {"denoiser": UNET_FLAGS, "finetuned": CLASSIFIER_FLAGS}, **imagenet}})


def test_adm_backend_samples_a_shard_deterministically(tiny_files):
    backend = tiny_adm()
    setting = Setting(classifier="combined", softplus_beta=3, marginal_temperature=0.5, sine_factor=0.3,
                      switch_step=1)
    assert tiny_adm(classifier="resnet101").files(setting) == {
        "denoiser": Pretrained("adm_imagenet128_cond_diffusion"), "offshelf": Pretrained("resnet101_v2"),
        "finetuned": Pretrained("adm_imagenet128_classifier")}
    models = backend.load(tiny_files, {"respacing": "3", "variance": "learned_range"}, setting)
    assert models.image_shape == (3, 32, 32) == backend.image_shape and models.null_label is None
    assert models.diffusion.num_steps == 3
    # ResNet for the noisy steps, the noise-aware classifier (called with t) for the last one
    images, labels, seconds = sample_shard(backend, models, setting, [5, 6], batch_size=2)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (2,) and ((0 <= labels) & (labels < 1000)).all() and seconds > 0
    again, labels_again, _ = sample_shard(backend, models, setting, [5, 6], batch_size=1)  # batch split: same samples
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, labels_again)
    unguided, _, _ = sample_shard(backend, models, Setting(method="unguided"), [5, 6], batch_size=2)
    assert not np.array_equal(unguided, images)  # guidance moved the samples


def test_adm_backend_names_bad_input(tiny_files):
    from offshelf.backends import UnknownBackendError, resolve

    with pytest.raises(UnknownBackendError, match="expected one of digits, adm128, edm64, dit256"):
        resolve("adm64")
    with pytest.raises(ValueError, match="does not match|unknown"):  # the official preset does not fit the tiny file
        ADM128Backend({"imagenet": {"device": "cpu"}}).load({"denoiser": tiny_files["denoiser"]}, {"respacing": "3"})
    assert tiny_adm().unsupported(Setting(method="cfg")) == "needs a CFG-trained model"


def test_adm_writes_uint8_as_guided_diffusion_truncating():
    """classifier_sample.py stores ((x+1)*127.5).clamp(0, 255).to(uint8): truncation, not rounding,
    so a value between two levels lands on the lower one (half of all pixels, on average)."""
    x = torch.tensor([-1.0, -0.999, 0.0, 0.9999, 1.0, 1.5]).view(1, 1, 2, 3).repeat(1, 3, 1, 1)
    stored = tiny_adm().to_uint8(x)
    assert stored[0, :, :, 0].ravel().tolist() == [0, 0, 127, 254, 255, 255]
    rounded = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)[0, 0].ravel().tolist()
    assert rounded == [0, 0, 128, 255, 255, 255]  # the old convention, one level higher on three pixels
