"""The README's blocks that start Snakemake (marked ``runs: workflow``, tests/doc_blocks.py), run as
written in a folder that shows the repository, whose ``results`` is the session's ci run (the
``ci_run`` fixture): the tiny workflow is not run a second time, and the blocks write nothing into
that run's folder (their own files land in the test's folder)."""

import json
import math
import os
import subprocess

import pytest
import yaml

from doc_blocks import REPO, block_environment, claimed_by, repo_view
from offshelf.results_doc import BEGIN, END
from workflow_utils import dry_run_jobs, snakemake

pytestmark = pytest.mark.slow


def ci_view(folder, ci_run):
    repo_view(folder)
    (folder / "results").symlink_to(ci_run)
    return folder


def run_block(block, folder, extra: str = "") -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block.text.rstrip("\n") + extra], cwd=folder, env=block_environment(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{block.where} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_readme_tiny_workflow_is_the_ci_run(ci_run, tmp_path):
    """The README's tiny workflow is the run the ci_run fixture made (config/ci.yaml, every table
    and figure): in a folder whose results are that run, Snakemake has nothing left to do."""
    (block,) = claimed_by("test_docs_workflow.py::test_readme_tiny_workflow_is_the_ci_run")
    folder = ci_view(tmp_path, ci_run)
    dry = run_block(block, folder, extra=" --dry-run")  # first a dry run: a real one must not write into ci_run
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-3000:]
    proc = run_block(block, folder)
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert (ci_run / "ci" / "report" / "README.md").is_file()


def test_readme_cli_block_runs(ci_run, tmp_path):
    """The README's `offshelf` commands, as written: the networks (already trained by the ci run),
    one shard of the calibrated design, its metrics, and a tuned `bases:` entry."""
    (block,) = claimed_by("test_docs_workflow.py::test_readme_cli_block_runs")
    folder = ci_view(tmp_path, ci_run)
    run_block(block, folder)
    assert (folder / "shard.png").stat().st_size > 500
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["n"] == 64 and math.isfinite(metrics["fid"]) and 0 <= metrics["accuracy"] <= 1
    assert metrics["judge"].startswith("digits evaluation network")
    (tuned,) = yaml.safe_load((folder / "tune" / "tuned.yaml").read_text()).values()
    assert tuned["method"] == "guided" and tuned["marginal_temperature"] in (0.2, 0.5, 1.0)
    assert not any(p.name in ("shard.npz", "metrics.json", "tune") for p in ci_run.rglob("*")), "wrote into ci_run"


def test_the_workflow_refreshes_the_results_page(ci_run, tmp_path):
    """Config key ``results_doc`` (config.yaml: docs/results.md, so ``make run`` refreshes it): the
    publish_results job copies the report's tables between the page's markers and leaves every
    hand-written line as it was. Here on the ci run, whose report is current: that job alone runs."""
    page = tmp_path / "results.md"
    before, after = f"# Results\n\nWritten by hand.\n\n{BEGIN}\n", f"{END}\n\n## Findings, by hand\n"
    page.write_text(f"{before}the tables of an older run\n{after}")
    os.utime(page, (0, 0))  # older than the report, as a page checked out before the run
    args = ("--configfile", str(REPO / "config" / "ci.yaml"), "--config", f"results={ci_run}", f"results_doc={page}")
    assert dry_run_jobs(*args) == {"publish_results": 1, "all": 1}
    snakemake("--cores", "1", *args)
    text = page.read_text()
    assert text.startswith(before) and text.endswith(after) and "an older run" not in text
    report = (ci_run / "ci" / "report" / "README.md").read_text()
    for heading in [line for line in report.splitlines() if line.startswith("**Table ")]:
        assert heading in text, heading
    assert "![" not in text and "CSV: [" not in text
