"""The workflow on a real SLURM cluster, through profiles/slurm.

Needs a running cluster: `sudo .ci/slurm_cluster.sh start` (a one-node cluster on
this machine). Run with `pytest -m slurm tests/workflow/test_slurm.py`; skipped when
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

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
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
        pytest.skip(f"needs root, for a one-node SLURM cluster on this machine: {reason}; as root, `make test-workflow` "
                    f"starts it and runs these tests")


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


def copy_workflow(dest):
    """The workflow alone in its own folder, so the cluster run has its own .snakemake/."""
    dest.mkdir(parents=True)
    for name in WORKFLOW:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    return dest


# Outputs of config/ci.yaml whose jobs, between them, are every rule kind that is not local: a
# searched row's result (train_model, search_round, sample, evaluate, reference_features), a
# calibration profile along unguided and along guided trajectories, and Figure 4's gradients.
CLUSTER_TARGETS = ["ci/search/cond_offshelf-x0_relu_tj1_tm1_g0_ssearch_r1/result.json",
                   "ci/calibration/offshelf-x0_relu.csv",
                   "ci/calibration/guided/cond_offshelf-x0_relu_tj1_tm1_g0_s1_r1.csv",
                   "ci/figures/figure4.png"]
CLUSTER_RULES = {"train_model", "search_round", "sample", "evaluate", "reference_features", "calibrate",
                 "calibrate_guided", "figure_gradients"}


@pytest.fixture(scope="module")
def cluster_run(slurm_cluster, ci_run, tmp_path_factory):
    """Part of config/ci.yaml run from scratch through profiles/slurm: the smallest set of targets
    that still runs every non-local rule kind on the cluster. The whole config runs once per
    session, locally (the ``ci_run`` fixture), and is what the cluster's outputs are compared to."""
    for target in CLUSTER_TARGETS:
        assert (ci_run / target).is_file(), f"config/ci.yaml no longer makes {target}: update CLUSTER_TARGETS"
    workdir = copy_workflow(tmp_path_factory.mktemp("slurm") / "workflow")
    results = workdir / "results"
    start = time.perf_counter()
    output = snakemake(workdir, "--profile", PROFILE, "--configfile", "config/ci.yaml", "--config", f"results={results}",
                       *FAST_POLLING, *(str(results / t) for t in CLUSTER_TARGETS), timeout=3600)
    print(f"config/ci.yaml's cluster targets on SLURM: {time.perf_counter() - start:.0f} s")
    return results, output


def test_every_rule_kind_runs_as_a_slurm_job(cluster_run):
    _, output = cluster_run
    jobs = check_every_job_ran_on_slurm(output)
    rules = {rule for rule, _ in jobs.values()}
    assert CLUSTER_RULES <= rules, sorted(CLUSTER_RULES - rules)
    non_local = {m.group(1) for smk in (REPO / "workflow" / "rules").glob("*.smk")
                 for m in re.finditer(r"^\s*(?:rule|checkpoint) (\w+):", smk.read_text(), flags=re.M)} - local_rules()
    # text2image, text2image_diffusers and tune are targets of their own (their own configs), not of config/ci.yaml
    assert non_local - {"text2image", "text2image_diffusers", "tune"} <= CLUSTER_RULES, sorted(non_local - CLUSTER_RULES)


def test_cluster_outputs_equal_the_local_run(cluster_run, ci_run):
    from compare_results import compare, outputs

    results, _ = cluster_run
    made = outputs(results)
    assert set(CLUSTER_TARGETS) <= made
    # Same seeds, same single-threaded CPU kernels: every file the cluster made is the local one's,
    # bitwise (arrays, values and tables; only wall-clock seconds and the folder's path differ).
    assert compare(results, ci_run, only=made) == []
