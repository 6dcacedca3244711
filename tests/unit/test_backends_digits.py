"""The embedded digits benchmark: data, the four networks, checkpoints, and one experiment pass."""

import numpy as np
import pytest
import torch

from offshelf.backbones import digits
from offshelf.backends.ddpm import build_guidance
from offshelf.backends.digits import DigitsBackend
from offshelf.classifiers.softplus import count_relus, softplus_surgery
from offshelf.guidance import ClassifierGuidance, SwitchedGuidance
from offshelf.images import from_uint8_nhwc
from offshelf.settings import Setting
from conftest import train_tiny_digits


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return train_tiny_digits(tmp_path_factory.mktemp("digits"), steps=20, batch_size=32)


def test_split_is_fixed_stratified_and_in_range():
    x_train, y_train = digits.load_digits_split("train")
    x_test, y_test = digits.load_digits_split("test")
    assert len(x_train) + len(x_test) == 1797 and x_train.shape[1:] == (1, 8, 8)
    assert x_train.min() >= -1 and x_train.max() <= 1
    assert set(y_test.tolist()) == set(range(10))
    again, _ = digits.load_digits_split("train")
    assert torch.equal(x_train, again)
    with pytest.raises(ValueError, match="split must be"):
        digits.load_digits_split("val")


def test_uint8_round_trip_to_the_nearest_level():
    x = torch.tensor([-1.0, 0.0, 1.0, 0.5]).view(1, 1, 2, 2)
    stored = DigitsBackend().to_uint8(x)
    assert stored.dtype == np.uint8 and stored.shape == (1, 2, 2, 1)
    assert stored.ravel().tolist() == [0, 128, 255, 191]  # round((x+1)*127.5)
    assert torch.allclose(from_uint8_nhwc(stored), x, atol=1 / 127.5)


def test_classifier_relus_are_modules_softplus_catches_every_call():
    model = digits.DigitsResNet(width=8)
    assert count_relus(model) == 4
    smooth = softplus_surgery(model, 3.0)
    assert count_relus(smooth) == 0 and count_relus(model) == 4
    calls = []
    for m in smooth.modules():
        if isinstance(m, torch.nn.Softplus):
            m.register_forward_hook(lambda *_: calls.append(1))
    smooth(torch.zeros(2, 1, 8, 8))
    assert len(calls) == 7  # 2 per residual block × 3 blocks + the head


def test_checkpoint_round_trip_and_clear_errors(checkpoints, tmp_path):
    model, config, metrics = digits.load_checkpoint(checkpoints["offshelf"], "offshelf")
    assert config.role == "offshelf" and config.width == 8 and "test_accuracy" in metrics
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="holds a 'offshelf' network, expected 'denoiser'"):
        digits.load_checkpoint(checkpoints["offshelf"], "denoiser")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(open(checkpoints["offshelf"], "rb").read()[:100])
    with pytest.raises(ValueError, match="broken.pt: not a readable offshelf digits checkpoint"):
        digits.load_checkpoint(broken)
    with pytest.raises(FileNotFoundError, match="train_model"):
        digits.load_checkpoint(tmp_path / "missing.pt")


def test_training_is_reproducible():
    config = digits.TrainConfig(role="offshelf", steps=5, width=8, seed=3, batch_size=16)
    a, _ = digits.train(config)
    b, _ = digits.train(config)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_guidance_built_from_settings(checkpoints):
    models = DigitsBackend().load(checkpoints, {"respacing": "10"})
    assert build_guidance(Setting(method="unguided"), models) is None
    g = build_guidance(Setting(softplus_beta=3, marginal_temperature=0.5), models)
    assert isinstance(g, ClassifierGuidance) and g.marginal_temperature == 0.5
    assert count_relus(g.classifier) == 0 and count_relus(models.offshelf) > 0
    ft = build_guidance(Setting(classifier="finetuned", input="xt"), models)
    assert ft.time_conditioned and ft.input == "xt"
    combined = build_guidance(Setting(classifier="combined", switch_step=4), models)
    assert isinstance(combined, SwitchedGuidance)
    assert combined.at(4) is combined.early and combined.at(3) is combined.late


def test_shards_are_reproducible_alone_and_evaluate(checkpoints, tmp_path):
    from offshelf.atomic import save_npz
    from offshelf.shards import save_shard
    from offshelf.stages import evaluate, load_judge, reference_features, sample_shard

    backend = DigitsBackend()
    models = backend.load(checkpoints, {"respacing": "10"})
    setting = Setting(regime="uncond", softplus_beta=3, marginal_temperature=0.5, sine_factor=0.3, scale=3)
    both, labels, _ = sample_shard(backend, models, setting, list(range(8)), batch_size=4)
    first, _, _ = sample_shard(backend, models, setting, list(range(4)), batch_size=4)
    second, labels2, _ = sample_shard(backend, models, setting, list(range(4, 8)), batch_size=4)
    assert np.array_equal(both, np.concatenate([first, second]))
    assert np.array_equal(labels[4:], labels2)
    unguided, _, _ = sample_shard(backend, models, Setting(regime="uncond", method="unguided"), list(range(4)), 4)
    assert not np.array_equal(unguided, first)

    shard = tmp_path / "shard0.npz"
    save_shard(shard, both, labels, range(8), 1.5)
    ref = tmp_path / "ref.npz"
    save_npz(ref, **reference_features(backend, checkpoints, {"reference_split": "test"}))
    result = evaluate(backend, load_judge(backend, checkpoints, ref), [str(shard)], expected_seeds=[[0, 8]])
    assert result["n"] == 8 and result["seconds"] == 1.5
    for key in ("fid", "precision", "recall", "accuracy"):
        assert np.isfinite(result[key])


# --------------------------------------------------------------------------- classifier families

@pytest.fixture(scope="module")
def family_checkpoints(tmp_path_factory, checkpoints):
    """The benchmark's networks plus each off-the-shelf family, trained a few steps and saved
    under its own role, as the workflow's ``train_model`` rule writes them."""
    folder = tmp_path_factory.mktemp("families")
    paths = dict(checkpoints)
    for role in digits.FAMILY_ROLES:
        config = digits.TrainConfig(role=role, steps=8, width=8, seed=5, batch_size=32)
        model, metrics = digits.train(config)
        assert 0.0 <= metrics["test_accuracy"] <= 1.0 and np.isfinite(metrics["final_loss"])
        paths[role] = str(folder / f"{role}.pt")
        digits.save_checkpoint(model, config, metrics, paths[role])
    return paths


def test_family_activations_are_what_softplus_surgery_expects():
    mlp, vit = digits.DigitsMLP(width=8), digits.DigitsViT(width=8)
    assert count_relus(mlp) == 2 and count_relus(softplus_surgery(mlp, 3.0)) == 0
    assert count_relus(vit) == 0 and any(isinstance(m, torch.nn.GELU) for m in vit.modules())
    assert softplus_surgery(vit, float("inf")) is not vit  # ReLU baseline: a plain copy, no error
    from offshelf.classifiers.softplus import NoReLUError
    with pytest.raises(NoReLUError, match=r"network 'DigitsViT' has no nn.ReLU .*activations: GELU.*softplus_beta: inf"):
        softplus_surgery(vit, 3.0)
    for name, (role, has_relu) in digits.CLASSIFIER_FAMILIES.items():
        assert (count_relus(digits.build(role, 8)) > 0) == has_relu, name


@pytest.mark.parametrize("network", ["mlp", "vit"])
def test_family_checkpoint_loads_and_guides_a_tiny_run(family_checkpoints, network):
    backend = DigitsBackend()
    beta = 3.0 if network == "mlp" else float("inf")
    setting = Setting(regime="uncond", network=network, softplus_beta=beta, marginal_temperature=0.5, scale=3)
    sources = backend.files(setting)
    role = digits.CLASSIFIER_FAMILIES[network][0]
    assert sources["offshelf"].role == role and sources["denoiser"].role == "denoiser"
    files = {key: family_checkpoints[source.role] for key, source in sources.items()}
    models = backend.load(files, {"respacing": "5"}, setting)
    assert type(models.offshelf) is type(digits.build(role, 8))
    model, config, _ = digits.load_checkpoint(files["offshelf"], role)
    assert config.role == role and not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match=f"holds a '{role}' network, expected 'offshelf'"):
        backend.load(files, {"respacing": "5"}, Setting())

    guidance = build_guidance(setting, models)
    x = torch.randn(4, *digits.IMAGE_SHAPE)
    grad, logits = guidance.gradient(x, torch.arange(4))
    assert logits.shape == (4, digits.NUM_CLASSES)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0
    images, labels = backend.sample(models, setting, [0, 1, 2])
    assert images.shape == (3, *digits.IMAGE_SHAPE) and torch.isfinite(images).all()
    unguided, _ = backend.sample(models, Setting(regime="uncond", method="unguided"), [0, 1, 2])
    assert not torch.equal(images, unguided)  # the family's gradient moved the samples


def test_family_settings_are_checked_when_planned():
    backend = DigitsBackend()
    assert backend.files(Setting())["offshelf"].role == "offshelf"
    assert backend.files(Setting(network="mlp"))["offshelf"].role == "offshelf_mlp"
    with pytest.raises(ValueError, match=r"network 'vit' \(offshelf_vit\) has no ReLU.*softplus_beta: inf"):
        backend.unsupported(Setting(network="vit", softplus_beta=3))
    with pytest.raises(ValueError, match="network 'resnet50' is not a digits classifier family; known: 'mlp', 'vit'"):
        backend.files(Setting(network="resnet50"))
    assert backend.unsupported(Setting(network="vit")) is None


def test_families_train_only_when_a_setting_uses_them():
    from offshelf.config import load_config

    config = load_config("config/ci.yaml")
    training = DigitsBackend.training_from_config(config)
    assert set(digits.FAMILY_ROLES) <= set(training)
    del config["digits"]["models"]["offshelf_vit"]  # absent: the offshelf budget, a seed of its own
    derived = DigitsBackend.training_from_config(config)["offshelf_vit"]
    offshelf = config["digits"]["models"]["offshelf"]
    assert derived == dict(offshelf, seed=offshelf["seed"] + 200, split_seed=0)


def test_config_with_a_family_row_validates_and_softplus_on_vit_is_refused():
    import copy

    from offshelf.config import ConfigError, read_yaml, validate_config
    from offshelf.planning.plan import build_plan

    config = read_yaml("config/ci.yaml")
    config["tables"]["table4"]["rows"].append({"label": "MLP", "base": "resnet", "network": "mlp", "softplus_beta": 3})
    validated = validate_config(copy.deepcopy(config))
    # a guided row's setting is searched (its scale comes from the search)
    validated_plan = build_plan(validated)
    settings = list(validated_plan.settings.values()) + [plan.setting for plan in validated_plan.searches.values()]
    mlp = [s for s in settings if s.network == "mlp"]
    assert mlp and all(DigitsBackend().files(s)["offshelf"].role == "offshelf_mlp" for s in mlp)
    config["tables"]["table4"]["rows"].append({"label": "ViT", "base": "resnet", "network": "vit", "softplus_beta": 3})
    with pytest.raises(ConfigError, match=r"tables.*network 'vit' \(offshelf_vit\) has no ReLU"):
        validate_config(config)
    config["tables"]["table4"]["rows"][-1]["network"] = "ViT/B"
    with pytest.raises(ConfigError, match="network"):
        validate_config(config)


def test_a_family_has_its_own_calibration_probe():
    from offshelf.settings import probe_setting

    for network in ("", "mlp", "vit", "convnext_tiny", "clip:ViT-B-32/openai"):
        setting = Setting(network=network, classifier="combined", switch_step=4)
        assert probe_setting(setting.probe) == Setting(network=network, classifier="combined", switch_step=4)
    assert Setting(network="mlp", softplus_beta=3).probe == "offshelf-x0_sp3_net-mlp"
    assert Setting(softplus_beta=3).probe == "offshelf-x0_sp3"  # default names unchanged
    assert DigitsBackend().files(probe_setting("offshelf-x0_relu_net-vit"))["offshelf"].role == "offshelf_vit"


def test_offshelf_calibrate_prints_the_ice_of_each_variant_and_the_file(checkpoints, tmp_path, capsys):
    """`offshelf calibrate --probe A --probe B`: one line per variant with its ICE, and where the
    per-step table went (one probe: the workflow's table; several: a `probe` column first)."""
    import shutil

    import pandas as pd

    from offshelf.cli import main

    models = tmp_path / "results" / "ci" / "models"
    models.mkdir(parents=True)
    for role, path in checkpoints.items():
        shutil.copy(path, models / f"{role}.pt")
    out = tmp_path / "ece.csv"
    assert main(["calibrate", "--config", "config/ci.yaml", "--results", str(tmp_path / "results"), "--probe",
                 "offshelf-x0_sp3", "--probe", "offshelf-x0_relu", "--num-samples", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    table = pd.read_csv(out)
    assert list(table.columns[:2]) == ["probe", "step"] and set(table["probe"]) == {"offshelf-x0_sp3", "offshelf-x0_relu"}
    for probe in ("offshelf-x0_sp3", "offshelf-x0_relu"):
        ice = table.loc[table["probe"] == probe, "ece"].mean()
        assert any(line.split() == [probe, "ICE", f"{ice:.4f}", "over", "10", "steps"] for line in printed), printed
    assert printed[-1].endswith(f"-> {out}"), printed


def test_offshelf_sample_classes_chooses_the_class_and_keeps_the_seeds_noise(checkpoints, tmp_path, capsys):
    """`offshelf sample --classes 3,7`: the classes cycle over the seeds; a seed sampled with its
    own class is the workflow's image (the seed's noise is the same); a class out of range is one line."""
    import shutil

    from offshelf.cli import main
    from offshelf.seeding import draw_labels
    from offshelf.shards import load_samples

    models = tmp_path / "results" / "ci" / "models"
    models.mkdir(parents=True)
    for role, path in checkpoints.items():
        shutil.copy(path, models / f"{role}.pt")
    common = ["sample", "--config", "config/ci.yaml", "--results", str(tmp_path / "results"), "--setting",
              "regime=cond,softplus_beta=3,marginal_temperature=0.5,sine_factor=0.3,scale=1"]
    assert main([*common, "--seeds", "0:4", "--classes", "3,7", "--out", str(tmp_path / "chosen.npz")]) == 0
    _, labels = load_samples(tmp_path / "chosen.npz")
    assert labels.tolist() == [3, 7, 3, 7]
    own = int(draw_labels([5], 10)[0])
    assert main([*common, "--seeds", "5:6", "--out", str(tmp_path / "default.npz")]) == 0
    assert main([*common, "--seeds", "5:6", "--classes", str(own), "--out", str(tmp_path / "own.npz")]) == 0
    default, own_images = load_samples(tmp_path / "default.npz"), load_samples(tmp_path / "own.npz")
    assert (default[0] == own_images[0]).all() and default[1].tolist() == own_images[1].tolist() == [own]
    capsys.readouterr()
    assert main([*common, "--seeds", "0:2", "--classes", "10", "--out", str(tmp_path / "bad.npz")]) == 2
    assert "--classes" in capsys.readouterr().err and not (tmp_path / "bad.npz").exists()
