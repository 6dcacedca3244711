"""`snakemake --lint` on the default and every ImageNet config: Snakemake's own advice, none left."""

import subprocess
import sys

import pytest

from workflow_utils import REPO


@pytest.mark.parametrize("config", ["config.yaml", "config/imagenet128_ddpm.yaml", "config/imagenet64_edm.yaml",
                                    "config/imagenet256_dit.yaml"])
def test_snakemake_lint_is_clean(config, tmp_path):
    import os

    root = REPO
    env = dict(os.environ, OFFSHELF_CACHE=str(tmp_path / "cache"))  # no checkpoint present, no download
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--configfile", config], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr
