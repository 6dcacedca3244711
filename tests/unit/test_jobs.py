"""Job plumbing: atomic writes that survive kills (one GPU per job: test_devices.py)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from offshelf import atomic
from offshelf.atomic import save_npz


def test_atomic_write_clears_only_provably_dead_writers_leftovers(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid, host, hour_ago = int(dead.stdout), atomic._host(), time.time() - 2 * atomic.STALE_AFTER_S
    names = {
        "killed": f".shard0.npz.{host}.{dead_pid}.abc123.tmp",        # this host, pid gone, idle: removed
        "live": f".shard0.npz.{host}.{os.getpid()}.live12.tmp",       # its writer runs (this process)
        "fresh": f".shard0.npz.{host}.{dead_pid}.fresh1.tmp",         # maybe another pid namespace
        "remote": f".shard0.npz.elsewhere-node.{dead_pid}.rem123.tmp",  # cannot check another host
        "legacy": ".shard0.npz.abc123.tmp",                           # no writer recorded
        "other target": f".shard1.npz.{host}.{dead_pid}.oth123.tmp",
    }
    for what, name in names.items():
        (tmp_path / name).write_bytes(b"half a file")
        if what != "fresh":
            os.utime(tmp_path / name, (hour_ago, hour_ago))

    save_npz(tmp_path / "shard0.npz", arr_0=np.zeros((2, 8, 8, 1), np.uint8), arr_1=np.zeros(2, np.int64))

    kept = {name for what, name in names.items() if what != "killed"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept | {"shard0.npz"})


def test_atomic_write_removes_its_own_temp_file_when_the_writer_fails(tmp_path):
    def fail(tmp):
        Path(tmp).write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic.atomic_write(tmp_path / "out.json", fail)
    assert list(tmp_path.iterdir()) == []


def test_atomic_outputs_are_group_readable(tmp_path):
    path = save_npz(tmp_path / "shard.npz", arr_0=np.zeros((1, 8, 8, 1), np.uint8), arr_1=np.zeros(1, np.int64))
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


JOB_THREADS = """
import os, sys
from offshelf.jobs import job_log
{before}
with job_log(None, threads=1):
    loaded_in_job = "torch" in sys.modules
    import torch
    print(loaded_in_job, torch.get_num_threads(), os.environ["OMP_NUM_THREADS"])
"""


@pytest.mark.parametrize("before, loaded", [("", False), ("import torch", True)])
def test_a_job_gets_its_threads_whether_or_not_it_imported_torch_first(before, loaded):
    """A job that never needs torch (a search round) does not pay its import; one that imports
    torch later, or before the job began, still runs on the job's share of cores."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", JOB_THREADS.format(before=before)], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(loaded), "1", "1"]  # 1 differs from torch's default on any multi-core machine


def test_job_scripts_are_told_from_other_processes():
    from offshelf.jobs import _is_job_script

    assert _is_job_script(["/usr/bin/python3.11", "/w/.snakemake/scripts/tmpab12.search_round.py"])
    assert _is_job_script(["python", "workflow/scripts/sample.py", "--x"])
    assert not _is_job_script(["vim", "workflow/scripts/sample.py"])
    assert not _is_job_script(["bash"]) and not _is_job_script([])
