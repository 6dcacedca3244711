"""``offshelf resume`` proves that no process of a run lives in its working directory before it
unlocks or starts anything (issue 23, cases 7 and 8). Tiny Snakefiles of ``sleep`` jobs in
tmp_path stand in for the workflow: what matters is Snakemake's process and lock behaviour."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from workflow_utils import SNAKEMAKE, cmdline, descendants

RESUME = [sys.executable, "-m", "offshelf", "resume"]

SNAKEFILE = """
rule slow:
    output: "slow.txt"
    shell: "sleep 120; echo slow > {output}"

rule quick:
    output: "quick.txt"
    shell: "echo quick > {output}"

rule resumed:
    output: "resumed.txt"
    shell: "echo resumed > {output}"

rule orphan:
    output: "orphan.txt"
    script: "job.py"
"""

JOB = """import time
time.sleep(120)
open(snakemake.output[0], "w").write("old config's bytes")
"""


def workdir_with_snakefile(tmp_path: Path) -> Path:
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "job.py").write_text(JOB)
    return tmp_path


def start(workdir: Path, target: str, waits_for: str) -> subprocess.Popen:
    """Snakemake building ``target``, returned once a job process whose command line holds
    ``waits_for`` runs."""
    log = (workdir / f"{target}.log").open("w")
    proc = subprocess.Popen([*SNAKEMAKE, "-c1", target], cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 120
    while not any(waits_for in cmdline(p) for p in descendants(proc.pid)):
        assert proc.poll() is None and time.time() < deadline, (workdir / f"{target}.log").read_text()
        time.sleep(0.2)
    return proc


def stop(proc: subprocess.Popen, *others: int) -> None:
    for pid in others:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def test_resume_refuses_while_a_run_lives_although_another_runs_exit_removed_its_locks(tmp_path):
    """Run A writes slow.txt; run C (other outputs, same directory) starts and exits, and its exit
    removes the lock folder, A's locks included. `offshelf resume` must still see A and refuse."""
    workdir = workdir_with_snakefile(tmp_path)
    run_a = start(workdir, "slow.txt", "sleep 120")
    try:
        run_c = subprocess.run([*SNAKEMAKE, "-c1", "quick.txt"], cwd=workdir, capture_output=True, text=True,
                               timeout=300)
        assert run_c.returncode == 0, run_c.stdout + run_c.stderr
        locks = workdir / ".snakemake" / "locks"
        # the premise (Snakemake 9): C's exit took A's locks with it; resume cannot rely on them
        assert not locks.exists() or not any(locks.iterdir())
        proc = subprocess.run([*RESUME, "-c1", "resumed.txt"], cwd=workdir, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert proc.stderr.count("\n") == 1 and "Snakemake is still running in" in proc.stderr, proc.stderr
        assert f"pid {run_a.pid}" in proc.stderr or str(run_a.pid) in proc.stderr
        assert not (workdir / "resumed.txt").exists()  # nothing started
        assert run_a.poll() is None  # A untouched
    finally:
        stop(run_a)


def test_resume_refuses_while_an_orphaned_job_of_a_killed_snakemake_runs(tmp_path):
    """kill -9 of Snakemake's main process alone leaves its script job running as an orphan:
    `offshelf resume` refuses, naming it, and unlocks nothing; once it is gone, resume runs."""
    workdir = workdir_with_snakefile(tmp_path)
    run = start(workdir, "orphan.txt", ".snakemake/scripts/")
    orphans = [p for p in descendants(run.pid) if ".snakemake/scripts/" in cmdline(p)]
    try:
        os.kill(run.pid, signal.SIGKILL)  # the main process only
        run.wait(timeout=60)
        assert all(cmdline(p) for p in orphans), "the job died with Snakemake: nothing to prove"
        locks = workdir / ".snakemake" / "locks"
        held = sorted(locks.iterdir())
        proc = subprocess.run([*RESUME, "-c1", "orphan.txt"], cwd=workdir, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert proc.stderr.count("\n") == 1 and "jobs of a killed Snakemake are still running" in proc.stderr
        assert any(str(p) in proc.stderr for p in orphans), proc.stderr
        assert sorted(locks.iterdir()) == held  # nothing unlocked
        assert not (workdir / "orphan.txt").exists()
    finally:
        stop(run, *orphans)
