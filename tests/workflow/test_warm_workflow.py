"""Warm job start in the workflow (offshelf.warm): the ci run's torch jobs ran warm, and the same
jobs run cold (OFFSHELF_WARM=0) write bitwise the same outputs. (test_slurm.py compares a whole
cold run on the cluster with the ci run too, where a SLURM cluster can be started.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from compare_results import compare
from workflow_utils import REPO, SNAKEMAKE

pytestmark = pytest.mark.slow

CI = REPO / "config" / "ci.yaml"
JOB_CPU = re.compile(r"^\[offshelf\] job CPU: start-up [\d.]+ s, work [\d.]+ s \((warm|cold)\)$", re.M)


def job_kinds(logs):
    """log path (relative) -> warm|cold, from the line each job's log ends with."""
    kinds = {}
    for log in logs.rglob("*.log"):
        found = JOB_CPU.findall(log.read_text(errors="replace"))
        if found:
            kinds[str(log.relative_to(logs))] = found[-1]
    return kinds


def test_the_ci_runs_torch_jobs_ran_warm(ci_run):
    kinds = job_kinds(ci_run / "logs")
    torch_jobs = {name: kind for name, kind in kinds.items()
                  if name.startswith(("ci/sample/", "ci/evaluate/", "ci/calibrate/", "ci/train_model/"))}
    assert len(torch_jobs) >= 40, sorted(kinds)
    assert set(torch_jobs.values()) == {"warm"}, {n: k for n, k in torch_jobs.items() if k != "warm"}
    rounds = {name: kind for name, kind in kinds.items() if re.search(r"^ci/search/[^/]+/round\d+\.log$", name)}
    assert rounds and set(rounds.values()) == {"warm"}, rounds  # each draws and judges its evaluations
    # a search's result imports no torch: it runs cold, in its own small process
    light = {name: kind for name, kind in kinds.items() if re.search(r"^ci/search/[^/]+/result\.log$", name)}
    assert light and set(light.values()) == {"cold"}, light


def test_jobs_rerun_cold_write_what_the_warm_run_wrote(ci_run, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(ci_run, results, ignore=shutil.ignore_patterns("logs", "snakemake.log"))
    setting = "cond_cfg-w2"
    redone = [f"ci/samples/{setting}/shard0.npz", f"ci/metrics/{setting}.json", f"ci/metrics/{setting}.features.npz",
              "ci/calibration/offshelf-x0_sp3.csv", "ci/models/offshelf.pt"]
    redone = [name for name in redone if (results / name).exists()]
    assert len(redone) == 5, redone
    for name in redone:
        (results / name).unlink()
    env = {**os.environ, "OFFSHELF_WARM": "0"}
    targets = [str(results / name) for name in redone]
    proc = subprocess.run([*SNAKEMAKE, *targets, "--cores", "2", "--configfile", str(CI), "--config",
                           f"results={results}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert set(job_kinds(results / "logs").values()) == {"cold"}
    assert compare(ci_run, results, only=set(redone)) == []
