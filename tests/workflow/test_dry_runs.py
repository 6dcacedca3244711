"""Dry runs (`snakemake -n`): each config plans the job graph it should, with no file present."""

import pytest

from workflow_utils import REPO, dry_run_jobs


# Jobs per config: fetches (networks + reference batch + Inception), 50k samples in 1k shards
# (ablations read the first 10), one evaluation per (setting, sample count); the report draws the sample grids.
# imagenet128_ddpm: Table 5 at gamma = 0.3 shares its tau2=0.5 row with Table 6's gamma=0.3 row instead
# of Table 6's gamma=0 row, and its tau2=1.0 row no longer equals Table 4's beta=3 row: one more
# 10k-sample setting (10 shards, 1 evaluation) than at gamma = 0 (370 -> 380, 22 -> 23).
EXPECTED_JOBS = {
    "imagenet128_ddpm": {"fetch_checkpoint": 6, "figure_analytic": 1, "calibrate": 8, "reference_features": 1,
                         "sample": 380, "evaluate": 23, "figure_calibration": 2, "report": 1, "all": 1},
    "imagenet64_edm": {"fetch_checkpoint": 4, "sample": 400, "evaluate": 8, "report": 1, "all": 1},
    # imagenet256_dit: Table 9's two 50k rows (100 shards) plus table9_sweep's scale x gamma grid, 4 x 5
    # settings of 10 shards each, one of which, (1.0, 0.3), is Table 9's guided row: 100 + 19 x 10 = 290
    # sample jobs; 2 + 20 evaluations
    "imagenet256_dit": {"fetch_checkpoint": 4, "reference_features": 1, "sample": 290, "evaluate": 22,
                        "report": 1, "all": 1},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_JOBS))
def test_dry_run_lists_the_full_graph_without_any_file(name, tmp_path, monkeypatch):
    monkeypatch.setenv("OFFSHELF_CACHE", str(tmp_path / "empty-cache"))  # nothing downloaded, no network
    jobs = dry_run_jobs("--configfile", f"config/{name}.yaml", "--config", f"results={tmp_path / 'results'}")
    assert jobs == EXPECTED_JOBS[name]
    # no search here: the plan's count (what `offshelf plan` and the run print) is the whole graph, exactly
    assert planned_jobs(REPO / "config" / f"{name}.yaml") == {"total": sum(jobs.values()), "first_dag": sum(jobs.values())}


def test_dry_run_lists_every_stage(tmp_path):
    jobs = dry_run_jobs("--config", f"results={tmp_path}")
    for rule in ("train_model", "calibrate", "sample", "reference_features", "evaluate", "search_round",
                 "search_result", "figure_calibration", "figure_analytic", "figure_gradients", "report",
                 "all"):
        assert jobs.get(rule, 0) >= 1, f"stage {rule} missing from the dry run: {jobs}"
    assert jobs["train_model"] == 4
    # with searches, Snakemake's first graph lacks what their rounds (checkpoints) add: the plan says how many it lists
    assert planned_jobs(REPO / "config.yaml")["first_dag"] == sum(jobs.values())


def planned_jobs(config_file):
    """The plan's total job count and the part of it Snakemake's first dry run lists."""
    from offshelf.config import read_config, validated_plan

    counts = validated_plan(read_config(config_file)).job_counts
    return {"total": counts["total"], "first_dag": counts["first_dag"]}


def test_snakemake_builds_the_plan_once(tmp_path):
    """The Snakefile builds one Plan (validation reads its rows, the rules the rest): a dry run of
    config.yaml appends exactly one line to OFFSHELF_COUNT_PLAN_BUILDS, from Snakemake's own process."""
    import os
    import subprocess
    import sys

    from offshelf.planning.plan import COUNT_BUILDS

    counter = tmp_path / "builds.txt"
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--config", f"results={tmp_path}"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **{COUNT_BUILDS: str(counter)}))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "jobs planned" in err and "Job stats" in out
    assert counter.read_text().split() == [str(proc.pid)]  # one build, in the main process


def test_snakemake_plan_and_check_config_read_a_config_the_same_way(tmp_path):
    """One reading (offshelf.config.read_config): a file naming its base (`base:`, relative to the
    file) plans the same jobs in Snakemake as in `offshelf plan`, and passes check-config; the same
    keys without `base:` are refused by all three, since nothing is merged in implicitly."""
    import subprocess
    import sys

    import yaml

    from workflow_utils import snakemake

    overlay = {"experiment": "one", "regimes": ["uncond"], "results": str(tmp_path / "results")}
    based = tmp_path / "based.yaml"
    based.write_text(yaml.safe_dump({"base": str(REPO / "config" / "ci.yaml"), **overlay}))
    alone = tmp_path / "alone.yaml"
    alone.write_text(yaml.safe_dump(overlay))

    def offshelf(*args):
        return subprocess.run([sys.executable, "-m", "offshelf", *args], cwd=REPO, capture_output=True, text=True)

    smk = snakemake("-n", "--configfile", str(based))
    planned = [line for line in smk.stderr.splitlines() if " jobs planned " in line]
    plan = offshelf("plan", "--config", str(based))
    assert plan.returncode == 0, plan.stderr
    assert planned == [plan.stdout.splitlines()[0]], (planned, plan.stdout)
    assert offshelf("check-config", str(based)).returncode == 0

    refusals = [snakemake("-n", "--configfile", str(alone), check=False), offshelf("plan", "--config", str(alone)),
                offshelf("check-config", str(alone))]
    lines = [proc.stderr.strip().splitlines()[-1] for proc in refusals]
    assert all(proc.returncode != 0 for proc in refusals), lines
    assert all("Job stats" not in proc.stdout for proc in refusals)
    messages = {line[line.find("config key 'backbone'"):] for line in lines}  # the prefix names the command
    assert len(messages) == 1 and "config key 'backbone' is missing" in messages.pop(), lines
