"""The workflow's `snakemake tune` on ci-sized networks, its report, then a table row on the tuned base."""

import numpy as np
import pandas as pd
import pytest
import yaml

from workflow_utils import REPO


TINY_TUNE = {"regime": "uncond", "num_images": 40, "guided_samples": 20, "softplus_betas": ["inf", 3], "marginal_temperatures": [0.2, 0.5, 1.0],
             "search": {"initial": [1, 3], "low_fidelity": 16, "full_fidelity": 32, "max_extensions": 0,
                        "refinements": 0, "finalists": 1}}


@pytest.mark.slow
def test_snakemake_tune_then_a_row_on_the_tuned_base(tmp_path):
    """`snakemake tune` on ci-sized networks, then the evaluation of a table row on the tuned base.
    (The config is config/ci.yaml's, complete, with the tune section added, so it targets the one
    row's metrics file, not `all`: the other tables stay in the config.)"""
    from offshelf.settings import Setting
    from workflow_utils import snakemake

    config = yaml.safe_load((REPO / "config" / "ci.yaml").read_text())
    config.update(tune=TINY_TUNE, regimes=["uncond"], results=str(tmp_path / "results"))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    snakemake("tune", "--cores", "2", "--configfile", str(path), timeout=900)
    folder = tmp_path / "results" / "ci" / "tune" / "offshelf_uncond"
    summary = yaml.safe_load((folder / "summary.json").read_text())
    assert summary["judge"].startswith("digits evaluation network") and summary["judge_files"]["evaluator"].endswith("evaluator.pt")
    assert summary["chosen"]["marginal_temperature"] in (0.2, 0.5, 1.0) and summary["scale"] in (1.0, 3.0)
    curves = pd.read_csv(folder / "calibration_curves.csv")
    assert len(curves) == 2 * 3 * 10 and np.isfinite(curves[["ece", "nll"]].to_numpy()).all()
    trace = pd.read_csv(folder / "search_trace.csv")
    assert list(trace.columns) == ["scale", "num_samples", "value"] and len(trace) == 3  # 2 screened, 1 finalist
    assert summary["stage2_denoiser_evaluations"] == (16 + 32) * 10
    guided = pd.read_csv(folder / "guided_calibration.csv")  # both β along their own trajectories, every step
    assert len(guided) == 2 * 10 and summary["stage1_guided_denoiser_evaluations"] == 2 * 20 * 10
    html = tmp_path / "tune.html"  # the evidence in the report
    snakemake("tune", "--configfile", str(path), "--report", str(html), timeout=900)
    text = html.read_text(errors="replace")
    assert all(name in text for name in ("Tuning", "calibration_curves.png", "guided_calibration.csv",
                                         "search_trace.csv"))

    tuned = yaml.safe_load((folder / "tuned.yaml").read_text())
    (name,) = tuned
    config["bases"].update(tuned)
    config["tables"]["table1"]["rows"] = [{"label": "tuned", "base": name}]
    path.write_text(yaml.safe_dump(config))
    setting = Setting.from_dict(dict(tuned[name], regime="uncond",
                                     softplus_beta=float(tuned[name]["softplus_beta"])))
    metrics = tmp_path / "results" / "ci" / "metrics" / f"{setting.name}.json"
    snakemake(str(metrics), "--cores", "2", "--configfile", str(path), timeout=900)
    result = yaml.safe_load(metrics.read_text())
    assert result["n"] == 64 and np.isfinite(result["fid"]) and result["judge"].startswith("digits evaluation network")
