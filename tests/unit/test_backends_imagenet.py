"""The ImageNet configs plan their whole job graph with no checkpoint present, and the adm128
backend samples deterministically with tiny stand-in networks."""

import hashlib

import numpy as np
import pytest
import torch

from offshelf.config import load_config
from offshelf.backends.adm128 import ADM128Backend
from offshelf.backends.base import Pretrained
from offshelf.seeding import draw_labels
from offshelf.shards import save_shard
from offshelf.stages import sample_shard
from offshelf.planning.plan import build_plan
from offshelf.planning.rows import table_rows
from offshelf.settings import Setting
from workflow_utils import REPO


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
    assert not any(s.method == "cfg" for s in build_plan(config).settings.values())
    evaluations = build_plan(config).evaluations
    assert evaluations[ours.name] == (ours.name, 50_000)
    assert evaluations[f"{ours.name}+n10000"] == (ours.name, 10_000)


def test_edm_rows_carry_steps_and_scales():
    config = load_config(REPO / "config" / "imagenet64_edm.yaml")
    names = sorted(build_plan(config).settings)
    assert "cond_unguided_n10" in names and "cond_unguided_n36" in names
    guided = {s.num_steps: s for s in build_plan(config).settings.values() if s.method == "guided"}
    assert {n: s.scale for n, s in guided.items()} == {10: 0.004, 18: 0.004, 36: 0.0018, 256: 0.001}
    assert all((s.softplus_beta, s.marginal_temperature, s.sine_factor, s.input) == (5.0, 0.0, 0.3, "xt")
               for s in guided.values())
    # Table C.1: EDM's stochastic sampler (NVlabs' ImageNet-64 churn) for both rows, Table 8 none
    churn = {(s.method, s.num_steps): s.churn() for s in build_plan(config).settings.values()}
    edm_sde = {"S_churn": 40.0, "S_min": 0.05, "S_max": 50.0, "S_noise": 1.003}
    assert {k for k, c in churn.items() if c["S_churn"]} == {("unguided", 256), ("guided", 256)}
    assert churn[("unguided", 256)] == churn[("guided", 256)] == edm_sde
    assert "cond_unguided_churn40-0.05-50-1.003_n256" in names


def test_dit_sweeps_scale_and_gamma_on_10k_samples():
    """Appendix C.1's Algorithm 3 values are not legible: the DiT config sweeps scale x gamma on the
    paper's ablation size, and the report's table says the sweep picks them."""
    from offshelf.report import table_heading

    config = load_config(REPO / "config" / "imagenet256_dit.yaml")
    sweep = [r for r in table_rows(config) if r.table == "table9_sweep"]
    grid = {(s.scale, s.sine_factor) for r in sweep for s in r.candidates}
    scales, gammas = {s for s, _ in grid}, {g for _, g in grid}
    assert len(scales) >= 3 and len(gammas) >= 3 and grid == {(s, g) for s in scales for g in gammas}
    assert {r.num_samples for r in sweep} == {10_000} and all(r.sweep_key == "scale" for r in sweep)
    assert all(s.method == "guided" and s.input == "x0" for r in sweep for s in r.candidates)
    title = config["tables"]["table9_sweep"]["title"]
    assert "not legible" in title and "picks" in title
    assert table_heading("table9_sweep") == "Table 9 (sweep)" and table_heading("table9") == "Table 9"
    assert table_heading("tableC1") == "Table C.1"  # the paper's appendix tables
    # Table 9's guided row is one point of the grid, evaluated on all 50k samples
    (guided,) = [r for r in table_rows(config) if r.table == "table9" and r.label == "DiT ResNet101 guided"]
    assert (guided.candidates[0].scale, guided.candidates[0].sine_factor) in grid and guided.num_samples == 50_000


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
    from offshelf.backends.capabilities import unavailable

    assert unavailable(tiny_adm(), Setting(method="cfg")) == "needs a CFG-trained model"
    # EDM's churn on a DDPM sampler: reported, not run deterministic under a stochastic name
    assert "S_churn" in unavailable(tiny_adm(), Setting(method="unguided", S_churn=40))


def test_adm_writes_uint8_as_guided_diffusion_truncating():
    """classifier_sample.py stores ((x+1)*127.5).clamp(0, 255).to(uint8): truncation, not rounding,
    so a value between two levels lands on the lower one (half of all pixels, on average)."""
    x = torch.tensor([-1.0, -0.999, 0.0, 0.9999, 1.0, 1.5]).view(1, 1, 2, 3).repeat(1, 3, 1, 1)
    stored = tiny_adm().to_uint8(x)
    assert stored[0, :, :, 0].ravel().tolist() == [0, 0, 127, 254, 255, 255]
    rounded = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)[0, 0].ravel().tolist()
    assert rounded == [0, 0, 128, 255, 255, 255]  # the old convention, one level higher on three pixels


# --------------------------------------------------------------------------- FID protocols

@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
def test_both_fid_protocols_are_wired_and_named_in_every_metrics_file(tmp_path, monkeypatch):
    """Stand-ins for both extractors (clean-fid's TorchScript TF-Inception interface and pytorch-fid's
    state dict), verified through the registry (sha256 pinned by an override file, as a mirror would),
    evaluated on the same shard against the same reference batch: each metrics file names its
    protocol and the sha256 of the files it used, and both FIDs are finite."""
    import yaml

    from offshelf import stages
    from offshelf.atomic import save_npz
    from offshelf.checkpoints import file_sha256
    from offshelf.tables import markdown, table_frame
    from offshelf.planning.rows import Row
    from rehearsal.standins import build_inception
    from test_metrics import _random_fid_inception_state

    monkeypatch.setenv("OFFSHELF_CACHE", str(tmp_path / "cache"))  # digest records stay in the test's folder
    rng = np.random.default_rng(5)
    paths = {"inception_cleanfid_legacy_tf": tmp_path / "inception-2015-12-05.pt",
             "inception_pytorch_fid": tmp_path / "pt_inception-2015-12-05-6726825d.pth",
             "ref_imagenet128": tmp_path / "VIRTUAL_imagenet128_labeled.npz"}
    build_inception(paths["inception_cleanfid_legacy_tf"], seed=1)
    torch.save(_random_fid_inception_state(seed=2), paths["inception_pytorch_fid"])
    reference_images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    # a point-mass reference (sigma = 0) keeps sqrtm of the 2048x2048 product cheap: this test is about
    # wiring; the Frechet distance has its closed-form tests in test_metrics.py
    save_npz(paths["ref_imagenet128"], arr_0=reference_images, mu=np.zeros(2048), sigma=np.zeros((2048, 2048)))
    sha = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in paths.items()}
    # the stand-ins cannot carry the real files' hashes: pin theirs, and drop torch.hub's name prefix
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump({name: {"sha256": digest, "hash_prefix": None} for name, digest in sha.items()}))
    shard = tmp_path / "shard.npz"
    # the labels the seeds draw, as the sampler writes them (load_shards checks them against the seeds)
    save_shard(shard, rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8),
               draw_labels(range(6), ADM128Backend.num_classes).numpy(), range(6), 1.0)

    results = {}
    for protocol in ("adm_tf", "pytorch_fid"):
        backend = tiny_adm(fid_protocol=protocol)
        sources = backend.evaluation_files()
        files = stages.verified_files({role: str(paths[source.name]) for role, source in sources.items()}, sources,
                                      {"registry": str(registry), "cache": str(tmp_path / "cache")})
        features = tmp_path / f"reference-{protocol}.npz"
        save_npz(features, **stages.reference_features(backend, files, {}))
        judge = stages.load_judge(backend, files, str(features))
        results[protocol] = result = stages.evaluate(backend, judge, [str(shard)], {"nhood_size": 3},
                                                     expected_seeds=[[0, 6]])
        extractor = {"adm_tf": "inception_cleanfid_legacy_tf", "pytorch_fid": "inception_pytorch_fid"}[protocol]
        assert result["fid_protocol"] == protocol and protocol in result["judge"]
        assert result["feature_extractor"] == extractor
        assert result["feature_extractor_sha256"] == sha[extractor] == file_sha256(paths[extractor])
        assert result["reference_stats"] == "ref_imagenet128"
        assert result["reference_stats_sha256"] == sha["ref_imagenet128"]
        assert np.isfinite([result["fid"], result["precision"], result["recall"]]).all() and result["fid"] > 0
    assert results["adm_tf"]["feature_extractor_sha256"] != results["pytorch_fid"]["feature_extractor_sha256"]
    assert results["adm_tf"]["fid"] != results["pytorch_fid"]["fid"]

    # ... and every report row (CSV) and table (Markdown) carries them
    rows = [Row(table="table7", label=f"row {p}", regime="cond", candidates=[Setting(method="unguided", num_steps=i)],
                probe=None, paper={"fid": 2.0})
            for i, p in enumerate(results)]
    frame = table_frame(rows, {r.candidates[0].name: results[p] for r, p in zip(rows, results)}, {})
    assert list(frame["fid_protocol"]) == ["adm_tf", "pytorch_fid"]
    assert list(frame["feature_extractor_sha256"]) == [sha["inception_cleanfid_legacy_tf"], sha["inception_pytorch_fid"]]
    assert set(frame["reference_stats_sha256"]) == {sha["ref_imagenet128"]}
    text = markdown(frame, ["fid"], "Table 7")
    assert f"FID protocol `adm_tf`: extractor `inception_cleanfid_legacy_tf` (sha256 `{sha['inception_cleanfid_legacy_tf']}`)" in text
    assert f"FID protocol `pytorch_fid`: extractor `inception_pytorch_fid` (sha256 `{sha['inception_pytorch_fid']}`)" in text
    assert "for rows row pytorch_fid" in text  # a table mixing protocols says which row used which


def test_fid_protocol_is_a_validated_config_key():
    import copy

    from offshelf.config import ConfigError, validate_config

    config = load_config(REPO / "config" / "imagenet128_ddpm.yaml")
    assert config["imagenet"]["fid_protocol"] == "adm_tf"
    assert ADM128Backend({"imagenet": {}}).evaluation_files()["inception"] == Pretrained("inception_cleanfid_legacy_tf")
    assert (ADM128Backend({"imagenet": {"fid_protocol": "pytorch_fid"}}).evaluation_files()["inception"]
            == Pretrained("inception_pytorch_fid"))
    bad = copy.deepcopy(config)
    bad["imagenet"]["fid_protocol"] = "clean"
    with pytest.raises(ConfigError, match=r"'imagenet\.fid_protocol' = 'clean'; allowed values: adm_tf, pytorch_fid"):
        validate_config(bad)
    mixed = copy.deepcopy(config)
    mixed["imagenet"].update(fid_protocol="pytorch_fid", fid_mode="legacy_tensorflow")
    with pytest.raises(ConfigError, match=r"'imagenet\.fid_mode' is not allowed here: .*adm_tf"):
        validate_config(mixed)
    local = copy.deepcopy(config)
    local["checkpoints"]["local"] = {"inception_pytorch_fid": "/data/pt_inception-2015-12-05-6726825d.pth"}
    validate_config(local)  # the extractor can be given as a local file like every other registry entry


def test_adm_g_baseline_classifier_runs_in_fp32_whatever_the_unet_does(tiny_files, monkeypatch):
    """guided-diffusion's ImageNet-128 command sets use_fp16 for the UNet but not classifier_use_fp16:
    the noise-aware classifier stays fp32. (fp16 conversion itself only happens on CUDA, so the
    request is what is checked here.)"""
    from offshelf.backends import adm128

    requested = {}
    real = adm128.load_adm_network

    def recording(path, arch, device, fp16):
        requested[path] = fp16
        return real(path, arch, device, fp16)

    monkeypatch.setattr(adm128, "load_adm_network", recording)
    tiny_adm(fp16=True).load(tiny_files, {"respacing": "3"}, Setting(classifier="finetuned", input="xt"))
    assert requested == {tiny_files["denoiser"]: True, tiny_files["finetuned"]: False}
