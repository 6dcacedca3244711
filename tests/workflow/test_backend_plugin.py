"""A diffusion family added without editing offshelf: ``tests/plugin/toy_backend.py`` (outside
``src/offshelf``) is named by import path in a ci-size config, and the whole DAG (sample →
calibrate → evaluate → report) runs for real through Snakemake."""

import math
import os
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml

from workflow_utils import REPO, SNAKEMAKE

pytestmark = pytest.mark.slow
PLUGIN = REPO / "tests" / "plugin"


def plugin_config(tmp_path):
    """config/ci.yaml with the third-party backend instead of digits: every table and figure kept,
    the conditional regime alone (the unconditional one runs the same rules on other settings)."""
    config = yaml.safe_load((REPO / "config" / "ci.yaml").read_text())
    del config["digits"]
    config.update(backbone="toy_backend:ToyMixtureBackend", backend_options={"std": 0.2}, experiment="toy",
                  results=str(tmp_path / "results"), regimes=["cond"])
    config["sampling"].update(num_samples=48, shard_size=24, batch_size=24)
    config["search"]["low_fidelity"] = 24  # one shard, as in ci.yaml
    config["calibration"]["num_samples"] = 24
    config["figures"]["figure4"]["label"] = 2  # the toy has 3 classes
    config["grids"]["classes"] = [0, 1, 2]
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(config))
    return config, path


def test_a_backend_named_by_import_path_runs_the_whole_workflow(tmp_path):
    config, path = plugin_config(tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PLUGIN), os.environ.get("PYTHONPATH", "")]))
    # the workflow is run from outside the repository: nothing but the config names the backend
    proc = subprocess.run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--cores", "2", "--configfile", str(path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    exp = tmp_path / "results" / "toy"
    report = (exp / "report" / "README.md").read_text()
    assert "Backbone `toy_backend:ToyMixtureBackend`" in report
    for table, spec in config["tables"].items():
        frame = pd.read_csv(exp / "report" / f"{table}.csv")
        assert len(frame) == len(spec["rows"]) * len(config["regimes"]), table
        for _, row in frame.iterrows():
            if row["status"] != "ok":  # only classifier-free rows: the toy has no label-dropout model
                assert row["status"] == "not run (no label-dropout model)", (table, row["row"], row["status"])
                continue
            for column in spec.get("columns", ["fid"]):
                assert math.isfinite(row[column]), (table, row["row"], column, row[column])
    with np.load(next((exp / "samples" / "cond_unguided").glob("shard0.npz"))) as shard:
        assert shard["arr_0"].shape == (24, 4, 4, 1) and shard["seeds"].tolist() == list(range(24))
    # the exact conditional model hits its class; the judge (nearest class mean, not a guide) says so
    metrics = yaml.safe_load((exp / "metrics" / "cond_unguided.json").read_text())
    assert metrics["accuracy"] > 0.9 and metrics["judge"] == "nearest class mean"
    # the family lives outside offshelf, and nothing in offshelf or the workflow knows its name
    assert not (PLUGIN / "toy_backend.py").resolve().is_relative_to((REPO / "src").resolve())
    for folder in ("src/offshelf", "workflow"):
        for source in (REPO / folder).rglob("*"):
            if source.suffix in (".py", ".smk", ".yaml"):
                assert "toy_backend" not in source.read_text(), source
    assert "toy_backend" not in (REPO / "Snakefile").read_text()
