"""Which GPU a workflow job runs on: one device per job, never two jobs on one device.

Snakemake only counts GPUs (a GPU rule asks for ``resources: gpu=1``; ``--resources gpu=N`` caps how
many such jobs run at once); it never says *which* device a job should use. So a job that asked for
a GPU pins itself before CUDA starts in it (:func:`claim_gpu`, called by
:class:`offshelf.jobs.job_log`):

* under SLURM (``SLURM_JOB_ID`` set) with one device in ``CUDA_VISIBLE_DEVICES``, the scheduler's
  choice stands: slurmd already gave the job its own GPU (``--gpus=1``), and nothing here overrides it;
* otherwise the job takes the first device no other offshelf job on this machine holds: an exclusive
  ``flock`` on ``offshelf-gpu<device>.lock`` in the lock folder, kept until the job exits (a process
  that dies releases it with it), then ``CUDA_VISIBLE_DEVICES=<device>``. The devices are those
  ``CUDA_VISIBLE_DEVICES`` lists when set (``CUDA_VISIBLE_DEVICES=2,3 snakemake ...`` runs on GPUs 2
  and 3 only; an empty value means none), else every GPU the driver exposes (:func:`gpu_count`);
* when every device is held the job waits for one to come free, never shares one;
* without a GPU (the digits benchmark, a CPU-only machine) nothing changes: the job runs on the CPU.
"""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
import time
from pathlib import Path

#: where the per-device lock files live: one folder per machine, so that two runs (two results
#: folders, two users) on one machine never share a device either
LOCK_DIR_VARIABLE = "OFFSHELF_GPU_LOCK_DIR"


def gpus_per_job(backend) -> int:
    """GPUs a job that loads ``backend``'s networks asks Snakemake for (``resources: gpu``): one when
    the backend declares it runs on a GPU (capability ``gpu``; an ImageNet backend with
    ``imagenet.device: cpu`` narrows it away), else none, so a CPU run is neither capped nor pinned."""
    from offshelf.backends.capabilities import Capability

    return 1 if Capability.GPU in backend.capabilities else 0


def gpu_count() -> int:
    """The device query: GPUs the NVIDIA driver exposes, counted without initialising CUDA in this
    process (once CUDA has started, CUDA_VISIBLE_DEVICES no longer has any effect on it)."""
    folder = Path("/proc/driver/nvidia/gpus")
    return len(list(folder.iterdir())) if folder.is_dir() else 0


def scheduler_assigned() -> bool:
    """Whether a scheduler already gave this job its own GPU: a SLURM job whose CUDA_VISIBLE_DEVICES
    names one device (``--gpus=1``). A SLURM allocation of several (Snakemake run locally inside
    ``salloc --gpus=8``) is shared by the jobs Snakemake starts in it: they claim among its devices."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "SLURM_JOB_ID" in os.environ and visible is not None and len(visible.split(",")) == 1


def candidate_devices() -> list[str]:
    """The devices a job may claim, as CUDA_VISIBLE_DEVICES spells them (indices or GPU UUIDs):
    those CUDA_VISIBLE_DEVICES lists when it is set, else every GPU :func:`gpu_count` finds."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    return [str(i) for i in range(gpu_count())]


def lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_VARIABLE) or tempfile.gettempdir())


def _try_lock(stack, folder: Path, device: str) -> bool:
    """An exclusive, non-blocking flock on ``device``'s lock file, held by ``stack`` when taken. The
    file is opened read-only and created world-writable, so any user's job can lock it."""
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in device)
    mask = os.umask(0)
    try:
        fd = os.open(folder / f"offshelf-gpu{name}.lock", os.O_RDONLY | os.O_CREAT, 0o666)
    finally:
        os.umask(mask)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    stack.callback(os.close, fd)  # closing the descriptor releases the lock
    return True


def claim_gpu(stack, poll_s: float = 0.5) -> str | None:
    """Pin this process to a GPU no other offshelf job holds, for as long as ``stack`` (a
    contextlib.ExitStack) stays open: sets CUDA_VISIBLE_DEVICES to it and returns it. Waits while
    every device is held. Returns None, changing nothing, under a scheduler's assignment or without
    any GPU (the job runs on the CPU, or where the scheduler put it)."""
    if scheduler_assigned():
        return None
    devices = candidate_devices()
    if not devices:
        return None
    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    waiting_since = None
    while True:
        for device in devices:
            if _try_lock(stack, folder, device):
                os.environ["CUDA_VISIBLE_DEVICES"] = device
                if waiting_since is not None:
                    print(f"[offshelf] GPU {device} came free after {time.monotonic() - waiting_since:.1f} s",
                          file=sys.stderr, flush=True)
                return device
        if waiting_since is None:
            waiting_since = time.monotonic()
            print(f"[offshelf] all {len(devices)} GPUs ({','.join(devices)}) are held by other offshelf jobs "
                  f"(locks in {folder}): waiting for one; cap concurrent GPU jobs with snakemake --resources "
                  f"gpu={len(devices)}", file=sys.stderr, flush=True)
        time.sleep(poll_s)
