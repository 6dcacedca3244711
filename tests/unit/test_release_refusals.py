"""Issue 23 (nothing silently wrong, round two), the cases a config check or the ``offshelf``
command refuses without Snakemake: each through the real entry point, asserting the exit status,
one line naming the key or the file, and that nothing was written."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
OFFSHELF = Path(sys.executable).with_name("offshelf")
CI = REPO / "config" / "ci.yaml"


def check_config(tmp_path: Path, overlay: dict | str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``offshelf check-config config/ci.yaml <overlay>`` with results in ``tmp_path/results``."""
    path = tmp_path / "overlay.yaml"
    text = overlay if isinstance(overlay, str) else yaml.safe_dump(overlay)
    path.write_text(f"results: {tmp_path / 'results'}\n" + text)
    return subprocess.run([str(OFFSHELF), "check-config", str(CI), str(path)], capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path)


def refused_line(proc: subprocess.CompletedProcess) -> str:
    """The one line of a refusal (exit 1, no traceback)."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("offshelf: "), proc.stderr
    return lines[0]


# ------------------------------------------------------------------ case 2: too few resamples


@pytest.mark.parametrize("bootstrap", [1, 2, 40])
def test_too_few_bootstrap_resamples_are_refused(tmp_path, bootstrap):
    line = refused_line(check_config(tmp_path, {"evaluation": {"bootstrap": bootstrap}}))
    assert f"config key 'evaluation.bootstrap' = {bootstrap}: a 95% interval needs at least 41" in line
    assert "use 0 for no intervals" in line
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("bootstrap", [0, 41])
def test_no_intervals_or_enough_resamples_are_accepted(tmp_path, bootstrap):
    proc = check_config(tmp_path, {"evaluation": {"bootstrap": bootstrap}})
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith(": valid"), proc.stderr


# ------------------------------------------------------------------ case 3: a duplicate row label


def test_a_duplicate_row_label_is_refused(tmp_path):
    table1 = yaml.safe_load(CI.read_text())["tables"]["table1"]
    assert len(table1["rows"]) >= 2
    label = table1["rows"][0]["label"]
    table1["rows"][1]["label"] = label
    line = refused_line(check_config(tmp_path, {"tables": {"table1": table1}}))
    assert f"config key 'tables.table1.rows[1].label' = {label!r}: table 'table1' already has a row" in line
    assert not (tmp_path / "results").exists()
