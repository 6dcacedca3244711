"""Job plumbing: one GPU per job on a multi-GPU workstation, atomic writes that survive kills."""

import contextlib
import os

import numpy as np

from offshelf.atomic import save_npz
from offshelf.jobs import claim_gpu


def test_each_job_claims_its_own_gpu(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with contextlib.ExitStack() as first, contextlib.ExitStack() as second:
        assert claim_gpu(first, tmp_path, count=2) == 0
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
        assert claim_gpu(second, tmp_path, count=2) == 1
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
        with contextlib.ExitStack() as third:
            assert claim_gpu(third, tmp_path, count=2) is None  # both held
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with contextlib.ExitStack() as again:
        assert claim_gpu(again, tmp_path, count=2) == 0  # released when the jobs ended


def test_scheduler_pinning_is_respected(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # SLURM --gpus already chose
    with contextlib.ExitStack() as stack:
        assert claim_gpu(stack, tmp_path, count=8) is None
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"


def test_atomic_write_clears_a_killed_writers_leftovers(tmp_path):
    target = tmp_path / "shard0.npz"
    stale = tmp_path / ".shard0.npz.abc123.tmp"
    stale.write_bytes(b"half a file")
    save_npz(target, arr_0=np.zeros((2, 8, 8, 1), np.uint8), arr_1=np.zeros(2, np.int64))
    assert target.is_file() and not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard0.npz"]


def test_atomic_outputs_are_group_readable(tmp_path):
    path = save_npz(tmp_path / "shard.npz", arr_0=np.zeros((1, 8, 8, 1), np.uint8), arr_1=np.zeros(1, np.int64))
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
