"""offshelf.warm: a job handed to a warm fork behaves as the same job run cold (output, status,
environment, folder, signals, a kill), and every way a hand-off can fail runs the job cold."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from offshelf import warm

SRC = Path(__file__).resolve().parents[2] / "src"

JOB = textwrap.dedent("""
    import os, sys, time
    from offshelf.warm import hand_off, start_kind, startup_cpu_seconds
    hand_off()
    import torch
    print(f"kind={start_kind()} pid={os.getpid()} cwd={os.getcwd()} marker={os.environ.get('JOB_MARKER')} "
          f"argv1={sys.argv[1:]} startup={startup_cpu_seconds():.3f} torch_threads={torch.get_num_threads()}")
    print("to stderr", file=sys.stderr)
    print("matmul", float((torch.ones(64, 64) @ torch.ones(64, 64)).sum()))
    mode = os.environ.get("JOB_MODE", "")
    if mode == "raise":
        raise ValueError("the job's own error")
    if mode == "sleep":
        open(os.environ["JOB_PIDFILE"], "w").write(str(os.getpid()))
        import signal
        signal.signal(signal.SIGTERM, lambda *_: (open(os.environ["JOB_PIDFILE"] + ".term", "w").write("1"), sys.exit(7)))
        time.sleep(120)
    sys.exit(int(os.environ.get("JOB_CODE", "0")))
""")


def _private_root():
    """A short private temporary folder (Unix socket paths are limited to ~107 bytes); the warm
    servers started under it are stopped afterwards."""
    root = Path(tempfile.mkdtemp(prefix="ow", dir="/tmp"))
    yield root
    for log in root.rglob("*.log"):
        for pid in re.findall(r"\(pid (\d+),", log.read_text()):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


# one server for the tests that run warm (a server's imports take seconds); its own for each test
# that must see none, or a broken one
server_root = pytest.fixture(scope="module")(_private_root)
tmp_root = pytest.fixture(_private_root)


def run_job(tmp_root: Path, cwd: Path, *args: str, env: dict | None = None, **kwargs):
    script = tmp_root / "job.py"
    script.write_text(JOB)
    environment = {**os.environ, "PYTHONPATH": str(SRC), "TMPDIR": str(tmp_root)}
    environment.pop("SLURM_JOB_ID", None)
    environment.pop(warm.ENABLE_VARIABLE, None)
    environment.update(env or {})
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=180, **kwargs)


def fields(stdout: str) -> dict:
    line = next(line for line in stdout.splitlines() if line.startswith("kind="))
    return dict(re.findall(r"(\w+)=(\S+)", line))


def test_a_warm_job_runs_as_its_cold_run_would(server_root, tmp_path):
    first = run_job(server_root, tmp_path, "a", "b", env={"JOB_MARKER": "one"})
    second = run_job(server_root, tmp_path, "c", env={"JOB_MARKER": "two", "JOB_CODE": "3"})
    cold = run_job(server_root, tmp_path, "c", env={"JOB_MARKER": "two", "JOB_CODE": "3", warm.ENABLE_VARIABLE: "0"})
    assert first.returncode == 0, first.stderr
    assert fields(first.stdout)["kind"] == "warm"  # the first job starts the server, then runs in it
    assert second.returncode == 3 == cold.returncode
    warm_fields, cold_fields = fields(second.stdout), fields(cold.stdout)
    assert warm_fields["kind"] == "warm" and cold_fields["kind"] == "cold"
    for key in ("cwd", "marker", "argv1", "torch_threads"):
        assert warm_fields[key] == cold_fields[key], key
    assert warm_fields["marker"] == "two" and warm_fields["cwd"] == str(tmp_path)
    assert "matmul 262144.0" in second.stdout and "to stderr" in second.stderr
    # the fork does not import torch again: its start-up is the job process's hand-off
    assert float(warm_fields["startup"]) < float(cold_fields["startup"])


def test_an_exception_in_a_warm_job_fails_it_with_its_traceback(server_root, tmp_path):
    result = run_job(server_root, tmp_path, env={"JOB_MODE": "raise"})
    assert result.returncode == 1
    assert "ValueError: the job's own error" in result.stderr and "Traceback" in result.stderr
    assert fields(result.stdout)["kind"] == "warm"


def _wait_for(path: Path, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not path.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie waiting for its parent is dead for our purposes
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _start_sleeper(tmp_root: Path, cwd: Path, name: str):
    script = tmp_root / "job.py"
    script.write_text(JOB)
    pidfile = tmp_root / f"{name}.pid"
    environment = {**os.environ, "PYTHONPATH": str(SRC), "TMPDIR": str(tmp_root), "JOB_MODE": "sleep",
                   "JOB_PIDFILE": str(pidfile)}
    environment.pop("SLURM_JOB_ID", None)
    environment.pop(warm.ENABLE_VARIABLE, None)
    job = subprocess.Popen([sys.executable, str(script)], cwd=cwd, env=environment, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    _wait_for(pidfile)
    return job, int(pidfile.read_text()), pidfile


def test_killing_a_warm_job_kills_its_fork(server_root, tmp_path):
    job, fork, _ = _start_sleeper(server_root, tmp_path, "kill")
    assert fork != job.pid  # it runs in a fork of the server, not in the job process
    job.kill()
    job.wait()
    deadline = time.time() + 10
    while _alive(fork) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(fork), "the fork outlived its killed job"


def test_a_signal_to_a_warm_job_reaches_its_fork(server_root, tmp_path):
    job, fork, pidfile = _start_sleeper(server_root, tmp_path, "term")
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=30) == 7  # the fork's own SIGTERM handler's status
    assert Path(f"{pidfile}.term").exists()


@pytest.mark.parametrize("env", [{warm.ENABLE_VARIABLE: "0"}, {"SLURM_JOB_ID": "123"}], ids=["switched-off", "slurm"])
def test_jobs_run_cold_where_warm_start_is_off(tmp_root, tmp_path, env):
    result = run_job(tmp_root, tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert fields(result.stdout)["kind"] == "cold"
    assert not list(tmp_root.glob("offshelf-warm-*/*.sock"))  # no server was started
    reason = "OFFSHELF_WARM=0" if env.get(warm.ENABLE_VARIABLE) == "0" else "a SLURM job"
    assert f"[offshelf] warm start off ({reason}" in result.stderr and "running cold" in result.stderr


def test_a_hand_off_that_cannot_happen_runs_the_job_cold_and_says_why(tmp_root, tmp_path):
    shared = tmp_root / f"offshelf-warm-{os.getuid()}"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # a folder others could plant a socket in is never used
    result = run_job(tmp_root, tmp_path)
    assert result.returncode == 0, result.stderr
    assert fields(result.stdout)["kind"] == "cold"
    assert "warm start unavailable (PermissionError" in result.stderr and "running cold" in result.stderr


def test_the_server_key_follows_the_import_relevant_environment_only():
    base = {"PATH": "/bin", "PYTHONPATH": "/a", "HOME": "/h"}
    assert warm.server_key(base) == warm.server_key({**base, "HOME": "/elsewhere", "JOB_MARKER": "x"})
    for name, value in (("PYTHONPATH", "/b"), ("OMP_NUM_THREADS", "1"), ("CUDA_VISIBLE_DEVICES", "1"),
                        ("OFFSHELF_FAULT", "1")):
        assert warm.server_key(base) != warm.server_key({**base, name: value}), name
    # switching warm start off is not an import difference
    assert warm.server_key(base) == warm.server_key({**base, warm.ENABLE_VARIABLE: "1"})
