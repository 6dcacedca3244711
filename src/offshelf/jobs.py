"""Plumbing every workflow job shares: its log file, its share of CPU threads, its own GPU; and
the safe way back after a killed Snakemake (``offshelf resume``)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from offshelf import warm
from offshelf.devices import claim_gpu


class job_log:
    """Context for a workflow job: tee stdout/stderr into its log file, pin torch's threads to the
    job's share of cores (no oversubscription when Snakemake runs jobs in parallel) and, for a job
    that asked for a GPU, give it one GPU of its own (:func:`offshelf.devices.claim_gpu`)."""

    def __init__(self, log_path: str | os.PathLike | None, threads: int = 1, gpus: int = 0):
        self.log_path, self.threads, self.gpus = log_path, max(1, int(threads)), int(gpus or 0)

    def __enter__(self):
        self._startup_cpu, self._work_started_cpu = warm.startup_cpu_seconds(), warm.cpu_seconds()
        pin_cpu_threads(self.threads)
        self._stack = contextlib.ExitStack()
        self._log = None
        if self.log_path:
            Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
            handle = self._log = self._stack.enter_context(open(self.log_path, "a", buffering=1))
            self._stack.enter_context(contextlib.redirect_stdout(handle))
            self._stack.enter_context(contextlib.redirect_stderr(handle))
        if self.gpus > 0:
            claim_gpu(self._stack)  # after the log opened: a wait for a free GPU is written there
        if self.log_path:
            print(f"[offshelf] {time.strftime('%Y-%m-%d %H:%M:%S')} threads={self.threads} "
                  f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')} argv={sys.argv}", flush=True)
        return self

    def __exit__(self, exc_type, exc, tb):
        # Snakemake's error message sends the user to this log: it must say why the job failed,
        # not just hold its header line. The traceback goes in before the file is closed.
        failed = exc_type is not None and not (exc_type is SystemExit and exc.code in (0, None))
        if failed and self._log is not None:
            traceback.print_exception(exc_type, exc, tb, file=self._log)
            self._log.flush()
        if self._log is not None:  # what benchmarks/job_startup.py sums: the share start-up takes
            print(f"{JOB_CPU_PREFIX} start-up {self._startup_cpu:.3f} s, work "
                  f"{warm.cpu_seconds() - self._work_started_cpu:.3f} s ({warm.start_kind()})", file=self._log, flush=True)
        self._stack.close()
        return False


JOB_CPU_PREFIX = "[offshelf] job CPU:"


# The variables torch's (and numpy's BLAS) thread pools read when they start.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def pin_cpu_threads(threads: int) -> None:
    """Cap this process's compute threads at ``threads``. A job that has imported torch gets
    ``torch.set_num_threads``; one that has not (a search round reads and writes JSON) is not made
    to pay torch's import (seconds, more than the job itself): the environment variables cap whatever
    pool starts later."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


# ------------------------------------------------------------------ after a killed Snakemake
#
# Snakemake locks the outputs it is about to write (.snakemake/locks/ in its working directory)
# and removes the locks when it exits. Killed hard (SIGKILL, a rebooted login node), it leaves
# them behind, and every later run stops with a LockException until `snakemake --unlock`.
# Unlocking is only safe when no Snakemake still runs there: two runs writing the same outputs
# corrupt each other. `resume` checks exactly that before it unlocks.


def _snakemake_workdir(args: list[str]) -> Path:
    """The working directory Snakemake will use: ``--directory``/``-d`` or the current one."""
    for i, arg in enumerate(args):
        if arg in ("-d", "--directory") and i + 1 < len(args):
            return Path(args[i + 1]).resolve()
        if arg.startswith("--directory="):
            return Path(arg.split("=", 1)[1]).resolve()
    return Path.cwd().resolve()


def _is_snakemake(argv: list[str]) -> bool:
    """A Snakemake command line: ``snakemake ...`` or ``python -m snakemake ...``."""
    return any(Path(a).name == "snakemake" for a in argv[:2]) or any(
        a == "-m" and b == "snakemake" for a, b in zip(argv, argv[1:]))


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _is_job_script(argv: list[str]) -> bool:
    """A job Snakemake started: a ``script:`` job runs ``python .snakemake/scripts/tmpXXXX.<name>.py``
    (it outlives a Snakemake killed alone, as an orphan); Python running one of ``workflow/scripts/``
    (a ``shell:`` rule's, or one run by hand) writes the run's outputs too. An editor open on such a
    file is not a job."""
    if any(".snakemake/scripts/" in a for a in argv):
        return True
    return bool(argv) and Path(argv[0]).name.startswith("python") and any(
        "workflow/scripts/" in a and a.endswith(".py") for a in argv[1:])


def _processes_in(workdir: str | os.PathLike, matches) -> list[int]:
    """Ids of the processes on this machine (this one and its ancestors excepted) whose command line
    ``matches`` and whose working directory is ``workdir``. One whose working directory cannot be
    read counts as running there: when in doubt, never unlock."""
    workdir, found, mine = Path(workdir).resolve(), [], _ancestors()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue  # exited meanwhile
        if not matches(argv):
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd")).resolve()
        except OSError:
            cwd = None
        if cwd is None or cwd == workdir:
            found.append(int(entry.name))
    return sorted(found)


def live_snakemake(workdir: str | os.PathLike) -> list[int]:
    """Ids of Snakemake processes on this machine whose working directory is ``workdir``
    (its job subprocesses included)."""
    return _processes_in(workdir, _is_snakemake)


def live_jobs(workdir: str | os.PathLike) -> list[int]:
    """Ids of job processes of a run in ``workdir`` that are not Snakemake itself (:func:`_is_job_script`):
    after a Snakemake killed alone (SIGKILL of its main process), its jobs run on as orphans and
    still write the run's outputs."""
    return _processes_in(workdir, lambda argv: _is_job_script(argv) and not _is_snakemake(argv))


def stale_locks(workdir: str | os.PathLike) -> list[Path]:
    """Snakemake's lock files in ``workdir`` (empty when none is held)."""
    folder = Path(workdir) / ".snakemake" / "locks"
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def resume(args: list[str]) -> int:
    """Run ``snakemake ARGS`` once no process of a run lives in the same working directory on this
    machine: no Snakemake, and no job a killed Snakemake left running (an orphan that finishes later
    would overwrite the resumed job's output). Refuses (exit 1, nothing changed) while one lives,
    whether or not locks exist: another Snakemake's exit removes the whole lock folder, live runs'
    locks included (Snakemake 9's ``_delete_locks``), so locks prove nothing either way. Then, if a
    killed run left its locks behind, ``snakemake --unlock ARGS`` first. Jobs that were running when
    Snakemake died are redone from scratch by ``--rerun-incomplete`` (set in every profile)."""
    workdir = _snakemake_workdir(args)
    snakemake = [sys.executable, "-m", "snakemake"]
    running = live_snakemake(workdir)
    if running:
        print(f"offshelf: Snakemake is still running in {workdir} (pid {', '.join(map(str, running))}); "
              f"its locks are live: wait for it to finish, or stop it, then resume", file=sys.stderr)
        return 1
    orphans = live_jobs(workdir)
    if orphans:
        print(f"offshelf: jobs of a killed Snakemake are still running in {workdir} (pid "
              f"{', '.join(map(str, orphans))}); they would overwrite what a resumed run writes: wait for them "
              f"to finish, or stop them (kill {' '.join(map(str, orphans))}), then resume", file=sys.stderr)
        return 1
    if stale_locks(workdir):
        print(f"offshelf: no Snakemake runs in {workdir}: removing the locks a killed run left "
              f"(snakemake --unlock)", file=sys.stderr, flush=True)
        unlock = subprocess.run([*snakemake, "--unlock", *args])
        if unlock.returncode != 0:
            return unlock.returncode
    return subprocess.run([*snakemake, *args]).returncode
