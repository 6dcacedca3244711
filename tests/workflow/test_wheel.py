"""The wheel, installed without extras, runs a guided sample (issue 24, item 1).

Building a venv with its own torch would take minutes and gigabytes, so the fresh venv sees the
installed torch, torchvision and numpy, and the packages they require (their dependency closure,
read from their metadata), through a folder of links named by a ``.pth`` file, and nothing else
of this environment. ``pip install --no-index WHEEL`` then resolves the wheel's declared
dependencies against that alone: were anything else required, the install would fail. What this
proves: the wheel's metadata asks for nothing beyond torch, torchvision and numpy (at the tested
versions), its files hold the library, and a guided DDPM sample runs from the installed wheel
without yaml, pandas, scipy, matplotlib, scikit-learn, tqdm, snakemake or clean-fid. What it does
not: the lower bounds of the version ranges (only the pinned versions are installed here).
(Not a Snakemake test; in tests/workflow for its ~1 minute.)"""

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from workflow_utils import REPO

LIBRARY = ("torch", "torchvision", "numpy")


def _closure(names) -> set[str]:
    """The installed distributions that ``names`` require, recursively (requested extras included:
    torch asks for cuda-toolkit[cublas,...])."""
    from packaging.requirements import Requirement

    seen, done, todo = set(), set(), [(name, "") for name in names]
    while todo:
        name, extra = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if (key, extra) in done:
            continue
        done.add((key, extra))
        seen.add(key)
        for line in metadata.distribution(name).requires or []:
            req = Requirement(line)
            if not req.marker or req.marker.evaluate({"extra": extra}):
                todo += [(req.name, "")] + [(req.name, e) for e in req.extras]
    return seen


def _link_library(folder: Path) -> None:
    """Links to the closure's top-level modules and dist-info folders, in one folder."""
    folder.mkdir()
    for name in _closure(LIBRARY):
        dist = metadata.distribution(name)
        for top in {f.parts[0] for f in dist.files or []}:
            if top in ("..", "__pycache__") or top.endswith(".pth") or (folder / top).exists():
                continue
            source = Path(dist.locate_file(top))
            if source.exists():
                (folder / top).symlink_to(source)


def test_wheel_without_extras_runs_a_guided_sample(tmp_path):
    source = tmp_path / "source"  # build from a copy: the build writes build/ and *.egg-info
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("offshelf-*.whl")

    import zipfile
    names = zipfile.ZipFile(wheel).namelist()
    assert "offshelf/schemas/config.schema.yaml" in names and "offshelf/samplers/ddpm.py" in names
    requires = [line for line in zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode().splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert sorted(re.match(r"Requires-Dist: ([\w-]+)", r).group(1) for r in requires) == sorted(LIBRARY), requires

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the venv's own setuptools (ensurepip's, older than torch asks for) would shadow the linked one
    subprocess.run([str(python), "-m", "pip", "uninstall", "--quiet", "--yes", "setuptools"], timeout=300)
    _link_library(tmp_path / "library")
    (site / "library.pth").write_text(f"{tmp_path / 'library'}\n")
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-index", str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr

    run = subprocess.run([str(python), str(REPO / "tests" / "fixtures" / "guided_sample_from_wheel.py"), "--bare"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})  # no PYTHONPATH: the wheel's copy
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"from {site}/offshelf/__init__.py: guided sample (2, 1, 8, 8)" in run.stdout, run.stdout
