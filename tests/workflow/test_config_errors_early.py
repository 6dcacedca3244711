"""Config errors that used to surface late (a job's traceback, after old outputs were removed) stop
Snakemake before it plans any job, with the line ``offshelf check-config`` prints for the same file
(issue 23, case 10; one validation path: offshelf.config.validate_config)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from test_config_refusals import CI, one_line, refused


@pytest.mark.parametrize("overlay, key", [
    ({"figures": {"figure4": {"steps": [9, 50]}}}, r"'figures\.figure4\.steps' = \[9, 50\]: \[50\] beyond the 10 steps"),
    ({"grids": {"classes": [0, 99]}}, r"'grids\.classes': \[99\] outside the backend's classes 0\.\.9"),
    ({"evaluation": {"nhood_size": 1000}}, r"'evaluation\.nhood_size' = 1000: an evaluation reads 32 samples"),
    ({"experiment": "x" * 300}, r"'experiment' = 'x+'\.\.\. \(300 characters\): at most 100 characters"),
], ids=["figure4-steps", "grid-classes", "nhood-size", "long-experiment"])
def test_snakemake_and_check_config_refuse_alike(tmp_path, overlay, key):
    line = one_line(refused(tmp_path, overlay), key)
    check = subprocess.run([sys.executable, "-m", "offshelf", "check-config", str(tmp_path / "overlay.yaml")],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 1 and check.stderr.strip() == line.strip(), (check.stderr, line)
    assert yaml.safe_load((tmp_path / "overlay.yaml").read_text()) == {"base": str(CI), **overlay}
