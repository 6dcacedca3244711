"""`snakemake pareto` (offshelf.pareto) on config/ci.yaml, on a copy of the ci run: the methods the
tables share with it (unguided, CFG, calibrated guidance and its search) are reused, the rest run
(recurrent and through-the-denoiser searches, Best-of-2, SMC's λ search), in the cond regime only
to stay within the workflow tests' budget; `all` does not wait on the target."""

from __future__ import annotations

import math
import shutil

import pandas as pd
import yaml

from offshelf.compute import ddpm_work
from offshelf.planning.plan import build_plan
from workflow_utils import REPO, dry_run_jobs, snakemake

CI = REPO / "config" / "ci.yaml"


def test_pareto_target_reports_every_method_with_its_work_and_front(ci_run, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(ci_run, results, symlinks=True)  # mtimes kept: the ci run's jobs are done
    config = ("--configfile", str(CI), "--config", f"results={results}", "regimes=[cond]")
    assert "pareto_report" not in dry_run_jobs(*config)  # not in ci's `all` (pareto_in_all: false)
    snakemake("pareto", "--cores", "2", *config, timeout=900)

    out = results / "ci" / "pareto"
    frame = pd.read_csv(out / "pareto.csv")
    rows = yaml.safe_load(CI.read_text())["pareto"]["rows"]
    assert list(frame["row"]) == [r["label"] for r in rows] and set(frame["regime"]) == {"cond"}
    assert (frame["status"] == "ok").all(), frame[["row", "status"]]
    ci = dict(yaml.safe_load(CI.read_text()), regimes=["cond"])
    steps = int(ci["sampling"]["respacing"])
    # each row's setting from the plan (a searched row's work does not depend on the scale it finds)
    planned = {r.label: (r.search.setting if r.search else r.candidates[0]) for r in build_plan(ci).pareto.rows}
    for _, line in frame.iterrows():
        work = ddpm_work(planned[line["row"]], steps)
        assert line["denoiser"] == work.denoiser and line["classifier_forward"] == work.classifier_forward, line["row"]
        # the printed estimate lies in its interval: the plain FID, or where FID's bias puts it outside,
        # the bias-corrected one, marked (offshelf.tables.add_reported_estimates)
        assert math.isfinite(line["fid"]) and line["fid_lo"] <= line["fid_shown"] <= line["fid_hi"], line["row"]
        assert line["fid_corrected"] == (not line["fid_lo"] <= line["fid"] <= line["fid_hi"]), line["row"]
        assert 0 <= line["accuracy"] <= 1 and line["seconds_per_sample"] > 0, line["row"]
    baseline = frame[frame["baseline"]].iloc[0]
    assert baseline["row"] == "calibrated guidance" and baseline["fid_diff"] == 0
    assert frame["fid_diff"].notna().all()  # every row paired against calibrated guidance, same seeds
    front = frame[frame["front"]]
    assert not front.empty and front["fid_shown"].min() == frame["fid_shown"].min()  # the best FID is always on the front
    text = (out / "README.md").read_text()
    assert "pareto.png" in text and "| yes |" in text and (out / "pareto.png").stat().st_size > 1000
