"""Warm job start: a workflow job hands its script to a fork of a process that has already imported
torch and offshelf, instead of importing them again.

Why: on the tiny configs a job does about 0.5 s of work and spends 1.5-2 s of CPU importing torch
(benchmarks/RESULTS.md, "Job start-up share"). Snakemake starts a fresh interpreter per job, so a
run of 186 jobs paid that import 125 times.

How: the first job that needs it starts a *warm server* (:func:`serve`, in a process of its own):
one process per interpreter, offshelf source and import-relevant environment, which imports the
preloaded modules, checks it is still single-threaded (a fork of a process whose OpenMP pool or
CUDA context has started is not safe) and then waits on a Unix socket. A job's script calls
:func:`hand_off` before its own heavy imports. That sends the server the script's path, argv,
working directory, environment and its stdout/stderr file descriptors; the server forks, and the
fork runs the very same script file (Snakemake's preamble included) with that state, as the job
would have run it cold. The job process waits and exits with the fork's status. Every fork starts
from the pristine server: no job sees another's state.

What stays true:

* a killed job kills its fork (the server sees the job's socket close and SIGKILLs it); a signal
  the job receives (SIGTERM, SIGINT, SIGHUP) is passed on to the fork;
* a job whose hand-off fails for any reason (no server, a server that will not start, a refused
  request) runs cold in its own process, after one line in its log saying why;
* ``OFFSHELF_WARM=0`` turns it off; it is off under SLURM (``SLURM_JOB_ID``: each job has its own
  allocation, and a server outside it would escape its limits) and off where ``fork`` or Unix
  sockets are missing;
* a server serves only jobs that would import what it imported: its socket's name hashes the
  interpreter, the offshelf sources (path, size, mtime) and the environment variables that decide
  imports and thread pools. An edit of offshelf starts a new server; an idle server exits after
  :data:`IDLE_SECONDS`.
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# What a workflow job imports before any work (workflow/scripts/*): loaded once per server.
PRELOAD = ("numpy", "torch", "torchvision", "pandas", "snakemake.script", "snakemake.iocontainers", "snakemake.logging",
           "offshelf.stages", "offshelf.backends", "offshelf.backends.digits", "offshelf.statistics",
           "offshelf.calibration", "offshelf.levers", "offshelf.shards", "offshelf.figures", "offshelf.report",
           "offshelf.tables", "offshelf.pareto")
IDLE_SECONDS = 120.0
START_TIMEOUT = 60.0  # a server's imports on a loaded 2-core machine take ~5 s; a job waits this long at most
# Environment variables that change what an import does or how a thread pool starts: a server is
# shared only by jobs that agree on all of them.
KEY_PREFIXES = ("PYTHON", "LD_", "TORCH", "PYTORCH", "CUDA", "NVIDIA", "OMP_", "MKL_", "KMP_", "OPENBLAS",
                "OFFSHELF", "CONDA_PREFIX", "VIRTUAL_ENV")
ENABLE_VARIABLE = "OFFSHELF_WARM"
# How a job starts a server: an internal process, not a command line (offshelf has one: offshelf.cli)
SERVE = "import sys; from pathlib import Path; from offshelf import warm; sys.exit(warm.serve(Path(sys.argv[1])))"
_IN_FORK = "_OFFSHELF_WARM_FORK"  # set in a fork: its script's own hand_off() call returns at once
_HEADER = struct.Struct("!I")
_started_cpu: float | None = None  # the job process's CPU seconds before the hand-off (a fork's start-up)
# A server's own imports, charged to the first job it serves: start-up paid once is still start-up.
_unbilled_server_cpu = 0.0


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def disabled_reason() -> str | None:
    """Why this process cannot hand its job off, or None when it can."""
    if os.environ.get(ENABLE_VARIABLE, "1") == "0":
        return f"{ENABLE_VARIABLE}=0"
    if os.environ.get("SLURM_JOB_ID"):
        return "a SLURM job (its allocation holds its processes)"
    if not hasattr(os, "fork") or not hasattr(socket, "AF_UNIX") or not hasattr(socket, "send_fds"):
        return "no fork or Unix socket file-descriptor passing on this platform"
    if not Path("/proc/self/task").is_dir():
        return "no /proc to check a server's threads"
    return None


def server_key(environ: dict[str, str] | None = None) -> str:
    """The identity of the server that may run this process's job: interpreter, offshelf sources,
    import-relevant environment and the preload list."""
    environ = os.environ if environ is None else environ
    digest = hashlib.sha256()
    digest.update(f"{sys.executable}\0{sys.version}\0{PRELOAD}\0".encode())
    for name in sorted(environ):
        if name.startswith(KEY_PREFIXES) and name != ENABLE_VARIABLE:
            digest.update(f"{name}={environ[name]}\0".encode())
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:20]


def socket_dir() -> Path:
    """A folder only this user can enter: sockets in it accept this user's jobs only."""
    folder = Path(tempfile.gettempdir()) / f"offshelf-warm-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{folder} is not private to user {os.getuid()}")
    return folder


# ------------------------------------------------------------------------------------- the job side


def hand_off() -> None:
    """Run this job's script in a warm fork and exit with its status; return when that cannot be
    done (the script then runs here, cold) or when called inside the fork itself."""
    if os.environ.get(_IN_FORK):
        return
    reason = disabled_reason()
    if reason is not None:
        print(f"[offshelf] warm start off ({reason}); running cold", file=sys.stderr, flush=True)
        return
    started = cpu_seconds()
    try:
        conn = _connect_or_start()
        pid = _send_job(conn, started)
    except Exception as exc:  # noqa: BLE001 - any failure to hand off means: run cold
        print(f"[offshelf] warm start unavailable ({type(exc).__name__}: {exc}); running cold", file=sys.stderr,
              flush=True)
        return
    sys.exit(_wait_for(conn, pid))


def _connect(path: Path) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        raise
    return conn


def _connect_or_start() -> socket.socket:
    import fcntl

    path = socket_dir() / f"{server_key()}.sock"
    try:
        return _connect(path)
    except OSError:
        pass
    # One job starts the server; the others that arrive meanwhile wait on the lock, then connect.
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _connect(path)
        except OSError:
            pass
        path.unlink(missing_ok=True)  # a dead server's socket
        log = open(path.with_suffix(".log"), "ab")
        server = subprocess.Popen([sys.executable, "-c", SERVE, str(path)], stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=log, start_new_session=True, cwd="/", close_fds=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"the warm server exited ({server.returncode}): see {path.with_suffix('.log')}")
            try:
                return _connect(path)
            except OSError:
                time.sleep(0.05)
        server.kill()
        raise TimeoutError(f"no warm server on {path} after {START_TIMEOUT:.0f} s")


def _send_job(conn: socket.socket, started_cpu: float) -> int:
    script = os.path.abspath(sys.argv[0])
    request = json.dumps({"script": script, "argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ),
                          "startup_cpu": started_cpu}).encode()
    socket.send_fds(conn, [_HEADER.pack(len(request))], [1, 2])
    conn.sendall(request)
    answer = _read_exactly(conn, _HEADER.size)
    if not answer:
        raise ConnectionError("the warm server closed the connection")
    (pid,) = _HEADER.unpack(answer)
    if pid == 0:
        raise ConnectionError("the warm server refused the job: see its log")
    return pid


def _wait_for(conn: socket.socket, pid: int) -> int:
    """The fork's exit status; the signals this job gets are passed on to it meanwhile."""
    def forward(signum, _frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    answer = _read_exactly(conn, _HEADER.size)
    if not answer:  # the server died: so did its forks' report, and the job's result is unknown
        print("[offshelf] the warm server went away before the job finished", file=sys.stderr, flush=True)
        return 1
    (status,) = _HEADER.unpack(answer)
    return status


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        try:
            chunk = conn.recv(size - len(data))
        except InterruptedError:
            continue
        if not chunk:
            return b""
        data += chunk
    return data


def start_kind() -> str:
    """``warm`` in a fork of a warm server, else ``cold``."""
    return "warm" if os.environ.get(_IN_FORK) else "cold"


def startup_cpu_seconds() -> float:
    """CPU seconds this job spent before its work began: in a warm fork, what the job process spent
    to hand off (the fork's own counters start at zero); in a cold job, the whole process so far."""
    return (_started_cpu or 0.0) + cpu_seconds()


# ---------------------------------------------------------------------------------- the server side


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def serve(path: Path) -> int:
    import importlib

    started = time.monotonic()
    import numpy  # noqa: F401 - first: its OpenBLAS pool is the one set of threads allowed (below)

    # numpy's OpenBLAS starts its worker threads at import and shuts them down around fork
    # (pthread_atfork), so they are safe. Any other thread, an OpenMP team above all, is not: a
    # fork would inherit its locks and its pool's state without its threads.
    allowed = _threads()
    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except ImportError as exc:  # an optional module this environment lacks: the jobs import theirs
            print(f"preload: {module} skipped ({exc})", flush=True)
    if _threads() > allowed:
        print(f"refusing to serve: {_threads()} threads after the imports, {allowed} after numpy's", flush=True)
        return 1
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        print("refusing to serve: CUDA was initialised by an import", flush=True)
        return 1
    global _unbilled_server_cpu
    _unbilled_server_cpu = cpu_seconds()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)
    print(f"serving on {path} (pid {os.getpid()}, imports took {time.monotonic() - started:.1f} s)", flush=True)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    jobs: dict[int, socket.socket] = {}  # fork pid -> its job's connection
    idle_since = time.monotonic()
    try:
        while jobs or time.monotonic() - idle_since < IDLE_SECONDS:
            for key, _ in selector.select(timeout=0.05):
                if key.fileobj is listener:
                    conn, _ = listener.accept()
                    pid = _start_job(conn, listener)
                    if pid:
                        jobs[pid] = conn
                        selector.register(conn, selectors.EVENT_READ, pid)
                    else:
                        conn.close()
                else:  # a job's socket is readable only when the job went away: its fork goes too
                    try:
                        os.killpg(key.data, signal.SIGKILL)  # the fork leads its own group: its children too
                    except ProcessLookupError:
                        pass
                    selector.unregister(key.fileobj)
            while jobs:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                conn = jobs.pop(pid, None)
                if conn is None:
                    continue
                code = os.waitstatus_to_exitcode(status)
                try:
                    conn.sendall(_HEADER.pack(code if code >= 0 else 128 - code))
                except OSError:
                    pass
                try:
                    selector.unregister(conn)
                except (KeyError, ValueError):
                    pass
                conn.close()
                idle_since = time.monotonic()
    finally:
        path.unlink(missing_ok=True)
    print("idle: exiting", flush=True)
    return 0


def _start_job(conn: socket.socket, listener: socket.socket) -> int:
    """Fork a job from this pristine process: the fork becomes the job; the server keeps its pid."""
    conn.settimeout(10)
    try:
        message, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 2)
        (size,) = _HEADER.unpack(message)
        request = json.loads(_read_exactly(conn, size))
    except (OSError, ValueError, struct.error) as exc:
        print(f"bad request: {exc}", flush=True)
        try:
            conn.sendall(_HEADER.pack(0))
        except OSError:
            pass
        return 0
    conn.settimeout(None)
    pid = os.fork()
    if pid == 0:
        listener.close()
        conn.close()
        os._exit(_run_job(request, fds))
    global _unbilled_server_cpu
    _unbilled_server_cpu = 0.0
    try:
        os.setpgid(pid, pid)  # set on both sides: whichever runs first, a kill of the group reaches the fork
    except OSError:
        pass
    for fd in fds:
        os.close(fd)
    conn.sendall(_HEADER.pack(pid))
    return pid


def _run_job(request: dict, fds: list[int]) -> int:
    """In the fork: become the job (its environment, folder, argv, stdout and stderr) and run its script."""
    import runpy
    import traceback

    global _started_cpu
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.setpgid(0, 0)
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    for fd in (stdin, *fds):
        os.close(fd)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ[_IN_FORK] = "1"
    os.chdir(request["cwd"])
    sys.argv = list(request["argv"])
    sys.path[0] = os.path.dirname(request["script"])
    _started_cpu = float(request["startup_cpu"]) + _unbilled_server_cpu
    code = 0
    try:
        runpy.run_path(request["script"], run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - as Python itself would: the traceback, then status 1
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            pass
    return code
