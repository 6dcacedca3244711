"""One GPU per job: concurrent jobs on one machine get distinct devices, and wait rather than share.

The device query (offshelf.devices.gpu_count) is the one thing stood in for: a machine with four
GPUs is pretended. The claims, the lock files and the processes are real."""

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from offshelf import devices
from offshelf.devices import claim_gpu

# A job as the workflow runs one: its own process, claiming a GPU, holding it until told to let go.
JOB = r"""
import contextlib, json, os, sys, time
from pathlib import Path
import offshelf.devices as devices

devices.gpu_count = lambda: int(os.environ["STAND_IN_GPU_COUNT"])  # the stand-in for the driver's device query
record, release = Path(sys.argv[1]), Path(sys.argv[2])
with contextlib.ExitStack() as stack:
    device = devices.claim_gpu(stack, poll_s=0.05)
    start = time.time()
    record.with_suffix(".claimed").write_text(json.dumps({"device": device, "env": os.environ["CUDA_VISIBLE_DEVICES"]}))
    while not release.exists():
        time.sleep(0.02)
    time.sleep(0.1)  # hold the device a moment after the release, so later claims overlap earlier ones
    record.write_text(json.dumps({"device": device, "start": start, "end": time.time()}))
"""  # the device is released when the stack closes, after the record is written


def job_environment(tmp_path, gpus: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    src = Path(devices.__file__).resolve().parents[1]  # this checkout's offshelf, whatever is installed
    env.update(STAND_IN_GPU_COUNT=str(gpus), PYTHONPATH=os.pathsep.join([str(src), env.get("PYTHONPATH", "")]),
               **{devices.LOCK_DIR_VARIABLE: str(tmp_path / "locks")}, **extra)
    return env


def wait_for(condition, what: str, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def run_jobs(tmp_path, env: dict, jobs: int, holders: int):
    """Starts ``jobs`` job processes; once ``holders`` of them hold a device and the others say they
    wait, lets them all go. Returns what each claimed first (the holders) and every job's record."""
    release = tmp_path / "release"
    records = [tmp_path / f"job{i}.json" for i in range(jobs)]
    logs = [open(tmp_path / f"job{i}.log", "w") for i in range(jobs)]
    procs = [subprocess.Popen([sys.executable, "-c", JOB, str(r), str(release)], env=env, stderr=log)
             for r, log in zip(records, logs)]
    try:
        claimed = lambda: [r for r in records if r.with_suffix(".claimed").exists()]  # noqa: E731
        wait_for(lambda: len(claimed()) >= holders, f"{holders} jobs to claim a device")
        waiting = lambda: [p for p in (tmp_path / f"job{i}.log" for i in range(jobs))  # noqa: E731
                           if "held by other offshelf jobs" in p.read_text()]
        wait_for(lambda: len(waiting()) == jobs - holders, f"{jobs - holders} jobs to wait for a device")
        first = [json.loads(r.with_suffix(".claimed").read_text()) for r in claimed()]
        release.touch()
        for proc in procs:
            assert proc.wait(timeout=60) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for log in logs:
            log.close()
    return first, [json.loads(r.read_text()) for r in records]


def assert_never_shared(records):
    for i, a in enumerate(records):
        for b in records[i + 1:]:
            if a["start"] < b["end"] and b["start"] < a["end"]:  # both held a device at once
                assert a["device"] != b["device"], (a, b)


def test_concurrent_jobs_take_distinct_gpus_and_queue_beyond_them(tmp_path):
    """Six jobs on a machine with four GPUs: four hold GPUs 0-3, one each, while two wait; after the
    release the two take freed GPUs; no two jobs ever held one device at the same time."""
    first, records = run_jobs(tmp_path, job_environment(tmp_path, gpus=4), jobs=6, holders=4)
    assert sorted(c["device"] for c in first) == ["0", "1", "2", "3"]
    assert all(c["env"] == c["device"] for c in first)  # the job sees only its own device
    assert len(records) == 6 and {r["device"] for r in records} <= {"0", "1", "2", "3"}
    assert_never_shared(records)


def test_jobs_claim_among_the_devices_cuda_visible_devices_lists(tmp_path):
    """CUDA_VISIBLE_DEVICES=2,5 on a four-GPU machine: the jobs use GPUs 2 and 5 only, the third waits."""
    first, records = run_jobs(tmp_path, job_environment(tmp_path, gpus=4, CUDA_VISIBLE_DEVICES="2,5"), jobs=3,
                              holders=2)
    assert sorted(c["device"] for c in first) == ["2", "5"]
    assert {r["device"] for r in records} <= {"2", "5"}
    assert_never_shared(records)


def test_each_job_claims_its_own_gpu_and_releases_it(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv(devices.LOCK_DIR_VARIABLE, str(tmp_path))
    monkeypatch.setattr(devices, "gpu_count", lambda: 2)
    with contextlib.ExitStack() as first, contextlib.ExitStack() as second:
        assert claim_gpu(first) == "0"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
        assert claim_gpu(second) == "1"
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with contextlib.ExitStack() as again:
        assert claim_gpu(again) == "0"  # released when the jobs ended


def test_scheduler_pinning_is_respected(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # SLURM --gpus already chose
    monkeypatch.setenv(devices.LOCK_DIR_VARIABLE, str(tmp_path))
    monkeypatch.setattr(devices, "gpu_count", lambda: 8)
    with contextlib.ExitStack() as stack:
        assert claim_gpu(stack) is None
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3" and list(tmp_path.iterdir()) == []
    # Snakemake run locally inside one SLURM allocation of several GPUs: its jobs claim among them
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    with contextlib.ExitStack() as first, contextlib.ExitStack() as second:
        assert claim_gpu(first) == "4"
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
        assert claim_gpu(second) == "6"


@pytest.mark.parametrize("visible", [None, ""])
def test_without_a_gpu_nothing_changes(tmp_path, monkeypatch, visible):
    """A CPU-only machine (no GPU found), or CUDA_VISIBLE_DEVICES='' (none allowed): no claim, no wait."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setenv(devices.LOCK_DIR_VARIABLE, str(tmp_path))
    monkeypatch.setattr(devices, "gpu_count", lambda: 0)
    with contextlib.ExitStack() as stack:
        assert claim_gpu(stack) is None
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == visible and list(tmp_path.iterdir()) == []


def test_a_job_asks_for_a_gpu_exactly_when_its_backend_runs_on_one():
    """The rules' resources.gpu: ImageNet backends on CUDA ask for one, on the CPU none; digits none."""
    from offshelf.backends import create
    from offshelf.devices import gpus_per_job

    assert gpus_per_job(create({"name": "adm128", "options": {}})) == 1  # imagenet.device defaults to cuda
    assert gpus_per_job(create({"name": "dit256", "options": {"imagenet": {"device": "cuda"}}})) == 1
    assert gpus_per_job(create({"name": "edm64", "options": {"imagenet": {"device": "cpu"}}})) == 0
    assert gpus_per_job(create({"name": "digits", "options": {}})) == 0


# A workflow job: job_log (what every GPU script enters) with one GPU asked for, its log on disk.
WORKFLOW_JOB = r"""
import os, sys
import offshelf.devices as devices

devices.gpu_count = lambda: int(os.environ["STAND_IN_GPU_COUNT"])  # the stand-in for the driver's device query
from offshelf.jobs import job_log

with job_log(sys.argv[1], threads=1, gpus=1):
    print("job ran with CUDA_VISIBLE_DEVICES=" + os.environ["CUDA_VISIBLE_DEVICES"])
"""


def test_a_workflow_job_waits_for_its_gpu_in_its_log(tmp_path):
    """job_log(gpus=1) on a one-GPU machine whose GPU another job holds: the job's log says it
    waits, then the job runs on the GPU once it is free, the device in the log's header."""
    env = job_environment(tmp_path, gpus=1)
    release, holder_record, log = tmp_path / "release", tmp_path / "holder.json", tmp_path / "job.log"
    with open(tmp_path / "holder.log", "w") as holder_log:
        holder = subprocess.Popen([sys.executable, "-c", JOB, str(holder_record), str(release)], env=env,
                                  stderr=holder_log)
        job = None
        try:
            wait_for(lambda: holder_record.with_suffix(".claimed").exists(), "the holder to claim GPU 0")
            job = subprocess.Popen([sys.executable, "-c", WORKFLOW_JOB, str(log)], env=env)
            wait_for(lambda: log.exists() and "held by other offshelf jobs" in log.read_text(), "the job to wait")
            assert job.poll() is None and "job ran" not in log.read_text()  # waiting, not sharing
            release.touch()
            assert job.wait(timeout=60) == 0 and holder.wait(timeout=60) == 0
        finally:
            for proc in (holder, job):
                if proc is not None and proc.poll() is None:
                    proc.kill()
    text = log.read_text()
    # the job's own last line, before the CPU summary job_log closes every log with
    job_lines = [line for line in text.splitlines() if not line.startswith("[offshelf] job CPU:")]
    assert "CUDA_VISIBLE_DEVICES=0 argv=" in text and job_lines[-1] == "job ran with CUDA_VISIBLE_DEVICES=0"
    assert text.index("held by other offshelf jobs") < text.index("came free") < text.index("job ran")
