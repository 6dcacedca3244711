"""Atomic file writes: every output appears whole or not at all.

The writer gets a temporary path in the target's folder (same file system, so the final rename is
atomic); a writer killed mid-write leaves only a hidden ``.<name>.*.tmp`` file, which the next
write of the same target removes. Files get the usual umask permissions (``mkstemp``'s are 0600,
unreadable for the rest of a cluster group).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, then rename ``tmp_path`` onto ``path``. Writers that infer a
    format from the file name must be told the format (the temp name ends in ``.tmp``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer killed mid-write
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
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
