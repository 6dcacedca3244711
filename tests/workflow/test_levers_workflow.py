"""bf16 on config/ci.yaml through the workflow: turning the precision lever on reruns exactly the
jobs it changes for one setting (its shards and its evaluation), and that setting's bf16 FID lies
inside the fp32 run's bootstrap interval. Reuses the session's ci run (conftest.py's ci_run) on a
copy, so only those few jobs run here."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from workflow_utils import REPO, dry_run_jobs, snakemake

pytestmark = pytest.mark.slow
CI = REPO / "config" / "ci.yaml"


def test_bf16_fid_lies_inside_the_fp32_bootstrap_interval(ci_run, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(ci_run, results, symlinks=True)
    exp = results / "ci"
    # the calibrated off-the-shelf finalist of the conditional regime: guided, so both the
    # denoiser's and the classifier's precision act on its samples
    records = [json.loads(p.read_text()) for p in sorted((exp / "search").glob("*/result.json"))]
    record = next(r for r in records if r["setting"].startswith("cond_offshelf-x0_sp3"))
    metrics_path = exp / record["metrics_file"]
    fp32 = json.loads(metrics_path.read_text())
    assert fp32["bootstrap"] > 0 and fp32["fid_lo"] <= fp32["fid"] <= fp32["fid_hi"]

    config = yaml.safe_load(CI.read_text())
    config["sampling"]["precision"] = {"denoiser": "bf16", "classifier": "bf16"}
    bf16_config = tmp_path / "bf16.yaml"
    bf16_config.write_text(yaml.safe_dump(config, sort_keys=False))
    common = ["--configfile", str(bf16_config), "--config", f"results={results}"]
    shards = len(list((exp / "samples" / record["setting"]).glob("shard*.npz")))
    # the lever travels as the sample jobs' param: those shards and that evaluation rerun, nothing else
    assert dry_run_jobs(str(metrics_path), *common) == {"sample": shards, "evaluate": 1}

    snakemake(str(metrics_path), "--cores", "2", *common)
    bf16 = json.loads(metrics_path.read_text())
    assert bf16["fid"] != fp32["fid"], "the metrics did not change: bf16 was not applied"
    assert fp32["fid_lo"] <= bf16["fid"] <= fp32["fid_hi"], (
        f"{record['setting']}: bf16 FID {bf16['fid']:.4g} outside fp32's 95% interval "
        f"[{fp32['fid_lo']:.4g}, {fp32['fid_hi']:.4g}] (fp32 FID {fp32['fid']:.4g})")
