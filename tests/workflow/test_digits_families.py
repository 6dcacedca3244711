"""The digits workflow with a row per off-the-shelf classifier family (ResNet, MLP, ViT): it trains
exactly the families its settings use, and guides, evaluates and reports each."""

from pathlib import Path

import numpy as np
import pytest

from offshelf.backbones import digits


def family_workflow_config(tmp_path) -> Path:
    """config/ci.yaml cut to one table whose rows guide with each classifier family."""
    import yaml

    from offshelf.config import read_yaml

    config = read_yaml("config/ci.yaml")
    config.update(results=str(tmp_path / "results"), experiment="families", regimes=["uncond"])
    config["sampling"].update(num_samples=32, shard_size=32, batch_size=32)
    # a complete config (config/ci.yaml's, nothing merged in): tables 1-6 are the one ResNet row
    # (one setting, sampled once)
    resnet = {"title": "ResNet", "calibration": False, "columns": ["fid"], "rows": [{"label": "ResNet", "base": "resnet"}]}
    config["tables"] = {f"table{i}": dict(resnet) for i in range(1, 7)}
    config["figures"].update(figure1={"probes": ["offshelf-x0_relu"]}, figure2={"probes": ["offshelf-x0_relu"]})
    config["tables"]["table7"] = {"title": "Off-the-shelf classifier families", "columns": ["fid", "accuracy"], "rows": [
        {"label": "ResNet", "base": "resnet"},
        {"label": "MLP, Softplus beta=3", "base": "resnet", "network": "mlp", "softplus_beta": 3},
        {"label": "ViT (GELU)", "base": "resnet", "network": "vit"}]}
    path = tmp_path / "families.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_workflow_trains_exactly_the_families_its_settings_use(tmp_path):
    from workflow_utils import dry_run_jobs, dry_run_outputs

    assert dry_run_jobs("--configfile", "config/ci.yaml", "--config", f"results={tmp_path / 'r'}")["train_model"] == 4
    config = family_workflow_config(tmp_path)
    outputs = dry_run_outputs("--configfile", str(config))
    models = sorted(Path(o).name for o in outputs if "/models/" in o)
    assert models == ["denoiser.pt", "evaluator.pt", "finetuned.pt", "offshelf.pt", "offshelf_mlp.pt", "offshelf_vit.pt"]


@pytest.mark.slow
def test_workflow_guides_with_each_family_end_to_end(tmp_path):
    """Train (ci sizes), sample, evaluate and report a row per classifier family."""
    import json

    from workflow_utils import snakemake

    config = family_workflow_config(tmp_path)
    snakemake("--configfile", str(config), "--cores", "2", timeout=900)
    exp = tmp_path / "results" / "families"
    metrics = {p.stem: json.loads(p.read_text()) for p in (exp / "metrics").glob("*.json")}
    for network in ("mlp", "vit"):
        mine = [m for name, m in metrics.items() if name.endswith(f"_{network}")]
        assert mine and all(np.isfinite(m["fid"]) and m["judge"].startswith("digits evaluation network") for m in mine)
    _, config_mlp, _ = digits.load_checkpoint(exp / "models" / "offshelf_mlp.pt", "offshelf_mlp")
    assert config_mlp.seed == 4 and config_mlp.steps == 150
    report = (exp / "report" / "README.md").read_text()
    assert "MLP, Softplus beta=3" in report and "ViT (GELU)" in report and "Samples judged by: digits evaluation" in report
