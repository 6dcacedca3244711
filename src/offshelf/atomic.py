"""Atomic file writes: every output appears whole or not at all.

The writer gets a temporary path in the target's folder (same file system, so the final rename is
atomic), named ``.<name>.<host>.<pid>.<random>.tmp``: unique per writer (``mkstemp``), and telling
who made it. A writer removes only its own temporary file, so two writers of the same target (a
rerun racing a live job, two Snakemake instances) never trip each other: the last rename wins and
either way the target holds one writer's complete bytes.

A writer killed mid-write (SIGKILL, OOM, node loss) leaves its temporary file behind. The next
write of the same target removes such a file only when its writer is provably gone: it was made on
this host, no process with its pid exists here, and it has not been written to for
:data:`STALE_AFTER_S`. The age guards against what the pid test cannot see: a live writer in
another pid namespace (a container sharing this folder and host name) whose pid happens to be
free here. Files made on other hosts, or named by older offshelf versions, are never touched: no
test from here can prove their writers dead, and a leftover costs only disk space.

Files get the usual umask permissions (``mkstemp``'s are 0600, unreadable for the rest of a
cluster group).
"""

from __future__ import annotations

import glob
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable

STALE_AFTER_S = 3600  # a live writer touches its file far more often than once an hour


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _host() -> str:
    # File-name safe and short: dots would blur the fields of the temporary name.
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "unknown"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove_dead_writers_files(path: Path) -> None:
    own = re.compile(rf"\.{re.escape(path.name)}\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[a-z0-9_]+\.tmp")
    host, now = _host(), time.time()
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        match = own.fullmatch(candidate.name)
        if match is None or match["host"] != host or _pid_alive(int(match["pid"])):
            continue
        try:
            if now - candidate.stat().st_mtime > STALE_AFTER_S:
                candidate.unlink()
        except FileNotFoundError:  # another writer cleaned it first
            pass


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, then rename ``tmp_path`` onto ``path``. Writers that infer a
    format from the file name must be told the format (the temp name ends in ``.tmp``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_writers_files(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_host()}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # ours alone: the name is unique to this call
            os.unlink(tmp)
    return path


def save_npz(path, **arrays) -> Path:
    """Atomic ``np.savez`` (through a handle: np.savez appends .npz to names without it)."""
    import numpy as np

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)


def save_json(path, data) -> Path:
    import json

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=float)
            f.write("\n")

    return atomic_write(path, write)


def save_text(path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_csv(path, frame) -> Path:
    """Atomic ``DataFrame.to_csv`` without the index."""
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
