"""Plumbing every workflow job shares: its log file, its share of CPU threads, its own GPU."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import torch


class job_log:
    """Context for a workflow job: tee stdout/stderr into its log file, pin torch's threads to the
    job's share of cores (no oversubscription when Snakemake runs jobs in parallel) and, for a job
    that asked for a GPU on a multi-GPU workstation, give it one GPU of its own."""

    def __init__(self, log_path: str | os.PathLike | None, threads: int = 1, gpus: int = 0):
        self.log_path, self.threads, self.gpus = log_path, max(1, int(threads)), int(gpus or 0)

    def __enter__(self):
        torch.set_num_threads(self.threads)
        self._stack = contextlib.ExitStack()
        if self.gpus > 0:
            claim_gpu(self._stack)
        if self.log_path:
            Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
            handle = self._stack.enter_context(open(self.log_path, "a", buffering=1))
            self._stack.enter_context(contextlib.redirect_stdout(handle))
            self._stack.enter_context(contextlib.redirect_stderr(handle))
            print(f"[offshelf] {time.strftime('%Y-%m-%d %H:%M:%S')} threads={self.threads} "
                  f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')} argv={sys.argv}", flush=True)
        return self

    def __exit__(self, *exc):
        self._stack.close()
        return False


def visible_gpu_count() -> int:
    """GPUs the NVIDIA driver exposes, counted without initialising CUDA in this process (after
    CUDA starts, CUDA_VISIBLE_DEVICES no longer has any effect)."""
    folder = Path("/proc/driver/nvidia/gpus")
    return len(list(folder.iterdir())) if folder.is_dir() else 0


def claim_gpu(stack, lock_dir: str | os.PathLike | None = None, count: int | None = None) -> int | None:
    """Pin this job to the first GPU no other offshelf job holds: an exclusive ``flock`` on
    ``offshelf-gpu<i>.lock``, kept until the job exits, then ``CUDA_VISIBLE_DEVICES=i``.

    SLURM (``--gpus``) already sets CUDA_VISIBLE_DEVICES: then nothing is done. Locally,
    ``snakemake --resources gpu=N`` caps concurrent GPU jobs at N, so a free device exists.
    Returns the claimed index, or None (no GPU, or already pinned)."""
    import fcntl

    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        return None
    count = visible_gpu_count() if count is None else count
    lock_dir = Path(lock_dir or tempfile.gettempdir())
    for index in range(count):
        handle = stack.enter_context(open(lock_dir / f"offshelf-gpu{index}.lock", "w"))
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
        return index
    return None
