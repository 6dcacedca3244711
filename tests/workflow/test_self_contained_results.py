"""Issue 23 case 1: a results folder is self-contained. A search's ``result.json`` names the
chosen scale's metrics, features and grids relative to the experiment folder, and the report
resolves them inside its own folder: a copied results folder reports its own numbers, never the
ones of the folder it was copied from."""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd

from workflow_utils import REPO, snakemake

CI = REPO / "config" / "ci.yaml"


def test_a_copied_results_folder_reports_its_own_numbers(ci_run, tmp_path):
    # the copy of a copy, its source then removed: a report reading anything outside its own folder fails
    source, copy = tmp_path / "source", tmp_path / "copy"
    shutil.copytree(ci_run, source, symlinks=True)
    shutil.copytree(source, copy, symlinks=True)
    shutil.rmtree(source)
    exp = copy / "ci"
    results = sorted((exp / "search").glob("*/result.json"))
    assert results
    edited = {}
    for path in results:
        record = json.loads(path.read_text())
        for key in ("metrics_file", "features_file"):  # stored relative to the experiment folder
            assert not os.path.isabs(record[key]) and (exp / record[key]).is_file(), (path, record[key])
        metrics = exp / record["metrics_file"]
        stat = metrics.stat()
        values = json.loads(metrics.read_text())
        values["fid"] = 99.0
        values["fid_lo"], values["fid_hi"] = 98.0, 100.0  # its own interval: no cell prints an estimate outside it
        metrics.write_text(json.dumps(values))
        os.utime(metrics, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # only the report reruns (forced)
        edited[record["setting"]] = record["search"]
    proc = snakemake(str(exp / "report" / "README.md"), "--cores", "1", "--configfile", str(CI),
                     "--config", f"results={copy}", "--forcerun", "report")
    out = proc.stdout + proc.stderr
    assert "rule report" in out and "rule search_result" not in out, out  # the result.json files are the copied ones
    assert not source.exists()
    shown = []
    for table in yaml_tables():
        frame = pd.read_csv(exp / "report" / f"{table}.csv")
        shown += frame.loc[frame["setting"].isin(edited), "fid"].tolist()
    assert shown and all(v == 99.0 for v in shown), shown
    assert "99 [" in (exp / "report" / "README.md").read_text()


def yaml_tables() -> list[str]:
    import yaml

    return list(yaml.safe_load(CI.read_text())["tables"])


def test_changing_the_bootstrap_reruns_no_search_round(ci_run, tmp_path):
    """Issue 23 case 15a: search rounds force the bootstrap off, so their params leave
    evaluation.bootstrap out; a new bootstrap size reruns the evaluations (their intervals), never
    a round nor its sampling. A dry run on the finished ci run (read-only: -n writes nothing)."""
    from workflow_utils import dry_run_jobs

    import yaml

    overlay = tmp_path / "bootstrap.yaml"
    config = yaml.safe_load(CI.read_text())
    overlay.write_text(yaml.safe_dump({"base": str(CI), "evaluation": dict(config["evaluation"], bootstrap=100)}))
    jobs = dry_run_jobs("--configfile", str(overlay), "--config", f"results={ci_run}")
    assert jobs.get("evaluate", 0) > 0, jobs  # the change is seen: intervals are redrawn
    assert "search_round" not in jobs and "sample" not in jobs, jobs
