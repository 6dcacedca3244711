"""The fenced code blocks of README.md and docs/*.md, and the markers that say who runs them.

Every block is run by a test unless a marker says why it cannot be (README.md, "Tests"):

* a ``python`` or ``bash`` block without a marker is run by tests/unit/test_docs.py, in a
  folder that shows the repository (its files linked, new files land beside them);
* ``<!-- runs: workflow; test: FILE::FUNCTION -->`` above a block: it starts Snakemake (or needs a
  workflow's results), so the named test in tests/workflow/ runs it; ``file: NAME`` adds that the
  block is a file the test saves under NAME;
* ``<!-- needs: gpu -->``, ``<!-- needs: download -->`` (weights, data, or packages from a
  registry), ``<!-- needs: root -->`` (a SLURM cluster) or ``<!-- needs: make-run -->`` (the
  results of the default workflow, minutes of CPU); several may be listed (``needs: gpu,
  download``): not run, for that reason;
* ``<!-- file: NAME -->`` on a ``yaml`` block: a file the page's other blocks use; the unit test
  saves it under NAME before it runs them;
* a ``yaml`` or ``json`` block is parsed; a ``text`` block (a diagram, an output) holds no code. A fence
  without a language is an error: say what the block is.

A marker is an HTML comment on the line right above the fence (invisible on GitHub), with
``key: value`` pairs separated by ``;``.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/*.md")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<language>[^\s`]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*(?P<body>[a-z]+:.*?)\s*-->\s*$")
RUNNABLE = {"python", "bash"}
NEEDS = {"gpu", "download", "root", "make-run"}


@dataclass(frozen=True)
class Block:
    path: str  # relative to the repository
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    marks: dict = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def needs(self) -> set[str]:
        return {value.strip() for value in self.marks.get("needs", "").split(",") if value.strip()}


def documents(repo: Path = REPO) -> list[Path]:
    return sorted({p for pattern in DOCUMENTS for p in repo.glob(pattern)})


def parse_marker(line: str) -> dict[str, str] | None:
    match = MARKER.match(line)
    if not match:
        return None
    marks = {}
    for part in match["body"].split(";"):
        key, sep, value = part.partition(":")
        if not sep:
            raise ValueError(f"marker {line.strip()!r}: {part.strip()!r} is not 'key: value'")
        marks[key.strip()] = value.strip()
    return marks


def blocks(path: Path, repo: Path = REPO) -> list[Block]:
    """The fenced blocks of one Markdown file, each with the marker right above it (if any)."""
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence), None)
        if end is None:
            raise ValueError(f"{path.relative_to(repo)}:{i + 1}: code block never closed")
        body = [line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1:end]]
        marks = parse_marker(lines[i - 1]) if i > 0 else None
        found.append(Block(str(path.relative_to(repo)), i + 1, opening["language"], "\n".join(body) + "\n",
                           marks or {}))
        i = end + 1
    return found


def all_blocks(repo: Path = REPO) -> list[Block]:
    return [b for path in documents(repo) for b in blocks(path, repo)]


def claimed_by(test: str, repo: Path = REPO) -> list[Block]:
    """The blocks whose marker names ``test`` (``FILE::FUNCTION``, FILE relative to tests/workflow)."""
    return [b for b in all_blocks(repo) if b.marks.get("runs") == "workflow" and b.marks.get("test") == test]


def repo_view(folder: Path, repo: Path = REPO) -> Path:
    """``folder`` made to look like the repository root: a link to each top-level entry (a new file
    lands in ``folder``, never in the repository) and ``.venv`` linked to the running interpreter's
    environment, so ``.venv/bin/offshelf`` in a block is this test's."""
    folder.mkdir(parents=True, exist_ok=True)
    for entry in repo.iterdir():
        if entry.name not in (".git", ".venv", "results", ".snakemake") and not (folder / entry.name).exists():
            (folder / entry.name).symlink_to(entry)
    venv = Path(sys.prefix)
    if not (folder / ".venv").exists():
        (folder / ".venv").symlink_to(venv)
    return folder


def block_environment(**extra: str) -> dict[str, str]:
    """The environment a block runs in: this interpreter's bin first on PATH (``snakemake``,
    ``offshelf``), one torch thread (the machine is shared), no progress bars in the logs."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1", **extra)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env
