"""The workflow on a real SLURM cluster, through profiles/slurm.

Needs a running cluster: `sudo .ci/slurm_cluster.sh start` (a one-node cluster on
this machine). Run with `pytest -m slurm tests/test_slurm.py`; skipped when
`sinfo` is missing or no node accepts jobs.

Without an accounting database there is no `sacct`, so a job's SLURM identity is
checked against slurmctld itself: the id the plugin logged at submission must be
known to `squeue` as a COMPLETED job of this run (its job name is the run's
uuid, its comment names the rule), and the job must have seen that id in
SLURM_JOB_ID.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm"
VENV_BIN = Path(sys.executable).parent
READY_STATES = {"idle", "mixed", "allocated", "completing"}

# Poll slurmctld every few seconds instead of the profile's cluster-friendly 40 s.
FAST_POLLING = ["--slurm-init-seconds-before-status-checks", "2", "--slurm-keep-successful-logs"]

SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")
FINISHED = re.compile(r"Finished jobid: (\d+) \(Rule: (\w+)\)")


def cluster_down_reason():
    if shutil.which("sinfo") is None:
        return "sinfo not found: SLURM is not installed (run `sudo .ci/slurm_cluster.sh start`)"
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo timed out: slurmctld does not answer (run `sudo .ci/slurm_cluster.sh start`)"
    if out.returncode != 0:
        return f"slurmctld does not answer ({out.stderr.strip()}); run `sudo .ci/slurm_cluster.sh start`"
    states = {state.rstrip("*~#!%$@^-") for state in out.stdout.split()}
    if not states & READY_STATES:
        return f"no SLURM node accepts jobs (node states: {sorted(states) or 'none'})"
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    reason = cluster_down_reason()
    if reason:
        pytest.skip(reason)


def snakemake(workdir, *args, timeout=900):
    """Run the venv's snakemake in `workdir`; return its combined output, failing with its tail."""
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(
        [str(VENV_BIN / "snakemake"), *map(str, args)],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake {' '.join(map(str, args))} failed in {workdir}:\n{output[-6000:]}"
    return output


def squeue_records(job_ids):
    """{id: (job name, state, comment)} of these jobs, from slurmctld (MinJobAge keeps finished ones)."""
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%j|%T|%k"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout
    records = {}
    for line in out.splitlines():
        job_id, name, state, comment = line.strip().split("|", 3)
        records[job_id] = (name, state, comment)
    return records


def local_rules() -> set[str]:
    """Rules marked `localrule: True` in the workflow (downloads, figures, report)."""
    names = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        rule = None
        for line in smk.read_text().splitlines():
            m = re.match(r"^\s*(?:rule|checkpoint) (\w+):", line)
            if m:
                rule = m.group(1)
            elif rule and line.strip() == "localrule: True":
                names.add(rule)
    return names


def check_every_job_ran_on_slurm(output):
    """Every non-local job was submitted, and each SLURM id is a COMPLETED job of this run.

    Returns {snakemake job id: (rule, SLURM job id)}.
    """
    submitted = {job: (slurm_id, log) for job, slurm_id, log in SUBMITTED.findall(output)}
    finished = dict(FINISHED.findall(output))
    assert submitted, f"no job was submitted to SLURM:\n{output[-3000:]}"
    local = local_rules() | {"all"}  # `all` has no action; local rules run on the submit host
    remote = {job: rule for job, rule in finished.items() if rule not in local}
    assert set(remote) == set(submitted), f"finished {sorted(remote)} but submitted {sorted(submitted)}"

    slurm_ids = sorted({slurm_id for slurm_id, _ in submitted.values()}, key=int)
    assert len(slurm_ids) == len(submitted), "two snakemake jobs share one SLURM id"
    records = squeue_records(slurm_ids)
    assert set(records) == set(slurm_ids), f"slurmctld does not know jobs {set(slurm_ids) - set(records)}"
    run_names = {name for name, _, _ in records.values()}
    assert len(run_names) == 1, f"jobs of one run carry different names: {run_names}"
    jobs = {}
    for job, (slurm_id, log) in submitted.items():
        rule = remote[job]
        _, state, comment = records[slurm_id]
        assert state == "COMPLETED", f"SLURM job {slurm_id} ({rule}) is {state}"
        assert comment.startswith(f"rule_{rule}"), f"SLURM job {slurm_id} has comment {comment!r}, not rule {rule}"
        assert f"/rule_{rule}/" in log and Path(log).name == f"{slurm_id}.log", log
        jobs[job] = (rule, slurm_id)
    return jobs


TWO_RULES = """
rule all:
    input: "b.txt"

rule a:
    output: "a.txt"
    threads: 1
    shell: "echo $SLURM_JOB_ID > {output}"

rule b:
    input: "a.txt"
    output: "b.txt"
    threads: 1
    shell: "cat {input} > {output} && echo $SLURM_JOB_ID >> {output}"
"""


def test_two_rule_workflow_runs_as_slurm_jobs(slurm_cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(TWO_RULES)
    output = snakemake(tmp_path, "--profile", PROFILE, *FAST_POLLING)

    jobs = check_every_job_ran_on_slurm(output)
    assert sorted(rule for rule, _ in jobs.values()) == ["a", "b"]
    # Each job saw its own SLURM id: the shell really ran inside that allocation.
    seen_ids = (tmp_path / "b.txt").read_text().split()
    slurm_id = {rule: sid for rule, sid in jobs.values()}
    assert seen_ids == [slurm_id["a"], slurm_id["b"]]
    for rule, sid in jobs.values():
        assert (tmp_path / ".snakemake" / "slurm_logs" / f"rule_{rule}" / f"{sid}.log").exists()


WORKFLOW = ["Snakefile", "config.yaml", "config", "workflow", "envs"]
TIMING_COLUMNS = ["seconds"]  # wall time of sampling: differs between any two runs


def copy_workflow(dest):
    """The workflow alone in its own folder, so each run has its own results/ and .snakemake/."""
    dest.mkdir(parents=True)
    for name in WORKFLOW:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    return dest


def report_tables(workdir):
    tables = sorted((workdir / "results" / "ci" / "report").glob("table*.csv"))
    assert tables, f"no report tables in {workdir}/results/ci/report"
    return {path.name: pd.read_csv(path).drop(columns=TIMING_COLUMNS, errors="ignore") for path in tables}


@pytest.fixture(scope="module")
def ci_runs(slurm_cluster, tmp_path_factory):
    """config/ci.yaml run twice from scratch: through profiles/slurm, then locally with --cores 2."""
    if not (REPO / "config" / "ci.yaml").is_file():
        pytest.skip("config/ci.yaml is missing")
    root = tmp_path_factory.mktemp("ci_runs")
    slurm_dir, local_dir = copy_workflow(root / "slurm"), copy_workflow(root / "local")

    start = time.perf_counter()
    output = snakemake(slurm_dir, "--profile", PROFILE, "--configfile", "config/ci.yaml", *FAST_POLLING, timeout=3600)
    slurm_seconds = time.perf_counter() - start
    start = time.perf_counter()
    snakemake(local_dir, "--cores", "2", "--configfile", "config/ci.yaml", timeout=3600)
    local_seconds = time.perf_counter() - start
    print(f"config/ci.yaml: SLURM {slurm_seconds:.0f} s, local --cores 2 {local_seconds:.0f} s")
    return slurm_dir, local_dir, output


def test_ci_workflow_runs_every_job_on_slurm(ci_runs):
    _, _, output = ci_runs
    jobs = check_every_job_ran_on_slurm(output)
    rules = {rule for rule, _ in jobs.values()}
    assert {"train_model", "sample", "calibrate", "evaluate", "reference_features", "figure_gradients"} <= rules, sorted(rules)


def test_ci_report_tables_equal_a_local_run(ci_runs):
    slurm_dir, local_dir, _ = ci_runs
    on_slurm, local = report_tables(slurm_dir), report_tables(local_dir)
    assert sorted(on_slurm) == sorted(local)
    for name, frame in local.items():
        assert (frame["status"] == "ok").all(), f"{name}: {frame['status'].tolist()}"
        # Same seeds, same single-threaded CPU kernels: the numbers are bitwise identical.
        pd.testing.assert_frame_equal(on_slurm[name], frame, check_exact=True, obj=name)
