"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest
import torch

# The golden fixtures produced by the original implementations, shipped in the repository
# (tests/fixtures/reference, README.md there); $OFFSHELF_REFERENCE_DIR overrides the folder.
SHIPPED_REFERENCE_DIR = Path(__file__).resolve().parent / "fixtures" / "reference"
REFERENCE_DIR = Path(os.environ.get("OFFSHELF_REFERENCE_DIR") or SHIPPED_REFERENCE_DIR)


WORKFLOW_TESTS = Path(__file__).resolve().parent / "workflow"


def pytest_collection_modifyitems(items):
    """Every test that starts Snakemake lives in tests/workflow/ and is slow (run with -m slow),
    unless it is a rehearsal or needs the SLURM cluster, which have their own markers."""
    for item in items:
        if WORKFLOW_TESTS in Path(str(item.fspath)).resolve().parents and not (
                item.get_closest_marker("rehearsal") or item.get_closest_marker("slurm")):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def reference_dir() -> Path:
    """The golden fixtures produced by the original implementations (tests/fixtures/reference).
    They are part of the repository: a missing folder is an error, not a skip."""
    assert REFERENCE_DIR.is_dir(), f"golden fixtures folder {REFERENCE_DIR} is absent"
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def ci_run(tmp_path_factory) -> Path:
    """The whole ci workflow (config/ci.yaml) run for real, once per session: the results folder
    that the end-to-end tests (tests/workflow: test_workflow_e2e.py, test_report_html.py, and
    test_slurm.py, which compares the cluster's outputs with it) read; ``snakemake.log`` in it holds
    what Snakemake printed."""
    import time

    from workflow_utils import REPO, snakemake

    results = tmp_path_factory.mktemp("ci_results")
    start = time.perf_counter()
    proc = snakemake("--cores", "2", "--configfile", str(REPO / "config" / "ci.yaml"), "--config", f"results={results}",
                     timeout=1800)
    # what the run printed (the plan's job count, then each job): a log, which results comparisons skip
    (results / "snakemake.log").write_text(proc.stdout + proc.stderr)
    print(f"ci workflow: {time.perf_counter() - start:.0f} s")
    return results


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The test networks are tiny: intra-op threads only add synchronisation, which on a shared
    2-core machine costs up to 30x. Workflow subprocesses pin their own threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_tiny_digits(folder: Path, steps: int, batch_size: int) -> dict[str, str]:
    """The benchmark's four networks at toy sizes (seconds on one core), saved as the workflow would."""
    from offshelf.backbones import digits

    paths = {}
    for role, width in (("denoiser", 16), ("offshelf", 8), ("finetuned", 8), ("evaluator", 16)):
        config = digits.TrainConfig(role=role, steps=steps, width=width, seed=1, batch_size=batch_size)
        model, metrics = digits.train(config)
        paths[role] = str(folder / f"{role}.pt")
        digits.save_checkpoint(model, config, metrics, paths[role])
    return paths
