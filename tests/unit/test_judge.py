"""Judge ≠ guide: the network that evaluates samples is never a classifier that guides them, and
every metrics file and report names the network that judged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from offshelf.backends.base import Pretrained, Trained
from offshelf.judge import JudgeIsGuideError, check_judge_is_not_a_guide
from offshelf.backends.digits import DigitsBackend
from offshelf.config import ConfigError, read_yaml, validate_config
from offshelf.settings import Setting

REPO = Path(__file__).resolve().parents[2]


def imagenet_config(tmp_path, local: dict) -> dict:
    config = read_yaml(REPO / "config" / "imagenet128_ddpm.yaml")
    config["results"] = str(tmp_path / "results")
    config["checkpoints"] = dict(config.get("checkpoints", {}), local=local)
    return config


def test_shipped_imagenet_config_has_a_judge_apart_from_its_guides(tmp_path, monkeypatch):
    monkeypatch.setenv("OFFSHELF_CACHE", str(tmp_path / "cache"))
    validate_config(imagenet_config(tmp_path, {}))


def test_config_pointing_the_guide_and_the_judge_at_one_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("OFFSHELF_CACHE", str(tmp_path / "cache"))
    shared = str(tmp_path / "weights.pth")
    config = imagenet_config(tmp_path, {"resnet101_v2": shared, "inception_cleanfid_legacy_tf": shared})
    with pytest.raises(ConfigError, match=r"guiding classifier 'offshelf' \(registry file 'resnet101_v2'\) and the "
                                          r"evaluation network 'inception' \(registry file "
                                          r"'inception_cleanfid_legacy_tf'\) are the same file .*weights.pth"):
        validate_config(config)


def test_config_with_a_copy_of_the_judge_as_guide_is_refused_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("OFFSHELF_CACHE", str(tmp_path / "cache"))
    judge, guide, other = tmp_path / "inception.pth", tmp_path / "copy.pth", tmp_path / "other.pth"
    judge.write_bytes(b"the same network" * 64)
    guide.write_bytes(judge.read_bytes())
    other.write_bytes(b"another network!" * 64)  # same size, other bytes: not the judge
    validate_config(imagenet_config(tmp_path, {"resnet101_v2": str(other), "inception_cleanfid_legacy_tf": str(judge)}))
    config = imagenet_config(tmp_path, {"resnet101_v2": str(guide), "inception_cleanfid_legacy_tf": str(judge)})
    with pytest.raises(ConfigError, match=r"'resnet101_v2'.*'inception_cleanfid_legacy_tf'.*identical files "
                                          r".*copy.pth and .*inception.pth \(sha256 [0-9a-f]{64}\)"):
        validate_config(config)


class JudgedByItsGuide(DigitsBackend):
    """A (wrong) digits backend whose evaluation network is the off-the-shelf classifier."""

    def evaluation_files(self):
        return {"evaluator": Trained("offshelf")}


def test_a_backend_judging_with_its_guide_is_refused():
    settings = [Setting(method="unguided"), Setting(classifier="finetuned", input="xt"), Setting()]
    check_judge_is_not_a_guide(DigitsBackend(), settings)  # the shipped digits backend: four roles apart
    with pytest.raises(JudgeIsGuideError, match=r"setting cond_offshelf-x0_relu.*guiding classifier 'offshelf' "
                                                r"\(trained role 'offshelf'\) and the evaluation network 'evaluator' "
                                                r"\(trained role 'offshelf'\) are the same source"):
        check_judge_is_not_a_guide(JudgedByItsGuide(), settings)
    # the MLP family guides from its own file: apart from the judge as well
    check_judge_is_not_a_guide(DigitsBackend(), [Setting(network="mlp")])


def test_registry_pins_of_the_same_sha256_are_one_network(tmp_path):
    from offshelf.backends.adm128 import ADM128Backend

    registry = tmp_path / "registry.yaml"
    digest = "ab" * 32
    registry.write_text(f"resnet101_v2: {{sha256: {digest}, hash_prefix: null}}\n"
                        f"inception_cleanfid_legacy_tf: {{sha256: {digest}, hash_prefix: null}}\n")
    backend = ADM128Backend({"imagenet": {"classifier": "resnet101"}})
    with pytest.raises(JudgeIsGuideError, match=f"pinned to the same sha256 {digest}"):
        check_judge_is_not_a_guide(backend, [Setting()], lambda s: str(tmp_path / s.name), registry)


def test_metrics_and_report_name_the_judge(tmp_path):
    """The digits judge's name carries its role, architecture and the hash of its weights (not of
    its training's wall time: two runs that train the same network name the same judge); the
    report prints it."""
    import torch

    from conftest import train_tiny_digits
    from offshelf.backbones import digits
    from offshelf.report import write_report

    models = train_tiny_digits(tmp_path / "models", steps=3, batch_size=16)
    extractor = DigitsBackend().feature_extractor(models)
    payload = torch.load(models["evaluator"], map_location="cpu", weights_only=True)
    assert extractor.name.startswith("digits evaluation network (role evaluator: DigitsResNet width 16")
    assert f"sha256 {digits.weights_sha256(payload['config'], payload['state_dict'])[:12]}" in extractor.name
    retrained = train_tiny_digits(tmp_path / "again", steps=3, batch_size=16)  # same network, another wall time
    assert DigitsBackend().feature_extractor(retrained).name == extractor.name
    assert np.isfinite(extractor.features(np.zeros((2, 8, 8, 1), np.uint8))).all()

    config = validate_config(read_yaml(REPO / "config" / "ci.yaml"))
    metrics = tmp_path / "cond_unguided.json"
    metrics.write_text(json.dumps({"fid": 1.0, "n": 64, "judge": extractor.name}))
    out = tmp_path / "report" / "README.md"
    write_report(config, [str(metrics)], [], [], str(out), "ci")
    assert f"Samples judged by: {extractor.name}." in out.read_text()
    assert digits.ROLES[:4] == ("denoiser", "offshelf", "finetuned", "evaluator")
