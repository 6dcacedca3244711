"""bf16 on config/ci.yaml through the workflow: turning the precision lever on reruns exactly the
jobs it changes for one setting (its shards and its evaluation), and that setting's bf16 FID lies
inside the fp32 run's bootstrap interval. Reuses the session's ci run (conftest.py's ci_run): a dry
run on it, the jobs themselves on a copy, so only those few jobs run here."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from workflow_utils import REPO, dry_run_jobs, snakemake

pytestmark = pytest.mark.slow
CI = REPO / "config" / "ci.yaml"


def test_bf16_fid_lies_inside_the_fp32_bootstrap_interval(ci_run, tmp_path):
    exp = ci_run / "ci"
    # the calibrated off-the-shelf finalist of the conditional regime: guided, so both the
    # denoiser's and the classifier's precision act on its samples
    records = [json.loads(p.read_text()) for p in sorted((exp / "search").glob("*/result.json"))]
    record = next(r for r in records if r["setting"].startswith("cond_offshelf-x0_sp3"))
    fp32 = json.loads((exp / record["metrics_file"]).read_text())
    assert fp32["bootstrap"] > 0 and fp32["fid_lo"] <= fp32["fid"] <= fp32["fid_hi"]

    config = yaml.safe_load(CI.read_text())
    config["sampling"]["precision"] = {"denoiser": "bf16", "classifier": "bf16"}
    bf16_config = tmp_path / "bf16.yaml"
    bf16_config.write_text(yaml.safe_dump(config, sort_keys=False))
    # The lever travels as the sample jobs' param: on the ci run itself (a dry run changes nothing;
    # Snakemake's record of each output's params lives under the run's own paths), exactly that
    # setting's shards and its evaluation rerun, nothing else.
    shards = len(list((exp / "samples" / record["setting"]).glob("shard*.npz")))
    jobs = dry_run_jobs(str(exp / record["metrics_file"]), "--configfile", str(bf16_config), "--config",
                        f"results={ci_run}")
    assert jobs == {"sample": shards, "evaluate": 1}

    # Those jobs, run on a copy (the session's ci run stays as other tests read it). The copy has no
    # Snakemake record of its params, so the sample jobs of that one target are forced instead.
    results = tmp_path / "results"
    shutil.copytree(ci_run, results, symlinks=True)
    metrics_path = results / "ci" / record["metrics_file"]
    snakemake(str(metrics_path), "--cores", "2", "--forcerun", "sample", "--configfile", str(bf16_config),
              "--config", f"results={results}")
    bf16 = json.loads(metrics_path.read_text())
    assert bf16["fid"] != fp32["fid"], "the metrics did not change: bf16 was not applied"
    assert fp32["fid_lo"] <= bf16["fid"] <= fp32["fid_hi"], (
        f"{record['setting']}: bf16 FID {bf16['fid']:.4g} outside fp32's 95% interval "
        f"[{fp32['fid_lo']:.4g}, {fp32['fid_hi']:.4g}] (fp32 FID {fp32['fid']:.4g})")
