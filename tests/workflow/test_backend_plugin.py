"""A diffusion family added without editing offshelf, exactly as docs/backends.md shows it: the
page's module (``toy_backend.py``), its config (``toy.yaml``) and its command, copied verbatim into
a folder outside the repository, run the whole DAG (sample → calibrate → evaluate → figures →
report) for real through Snakemake. Nothing but the config names the backend."""

import math
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml

from doc_blocks import REPO, block_environment, claimed_by

pytestmark = pytest.mark.slow
PLUGIN = REPO / "tests" / "plugin"
THIS_TEST = "test_backend_plugin.py::test_the_documented_plugin_runs_verbatim"


def test_the_documented_plugin_runs_verbatim(tmp_path):
    blocks = claimed_by(THIS_TEST)
    files = {b.marks["file"]: b.text for b in blocks if "file" in b.marks}
    commands = [b for b in blocks if "file" not in b.marks]
    assert sorted(files) == ["toy.yaml", "toy_backend.py"] and len(commands) == 1, [b.where for b in blocks]
    assert all(b.path == "docs/backends.md" for b in blocks)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    # the page's command as written, from the user's folder; OFFSHELF is the clone it names
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", commands[0].text], cwd=tmp_path,
                          env=block_environment(OFFSHELF=str(REPO)), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{commands[0].where}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"

    config = yaml.safe_load(files["toy.yaml"])
    exp = tmp_path / config["results"] / config["experiment"]
    report = (exp / "report" / "README.md").read_text()
    assert f"Backbone `{config['backbone']}`" in report
    for table, spec in config["tables"].items():
        frame = pd.read_csv(exp / "report" / f"{table}.csv")
        assert len(frame) == len(spec["rows"]) * len(config["regimes"]), table
        assert (frame["status"] == "ok").all(), frame[["row", "status"]]
        for column in spec["columns"]:
            guided = frame[frame["row"] != "unguided"]  # an unguided row has no classifier, so no ice
            assert np.isfinite(guided[column].astype(float)).all(), (table, column, guided[column].tolist())
    for figure in config["figures"]:
        assert (exp / "figures" / f"{figure}.png").stat().st_size > 1000, figure
    with np.load(exp / "samples" / "uncond_unguided" / "shard0.npz") as shard:
        n = config["sampling"]["num_samples"]
        assert shard["arr_0"].shape == (n, 4, 4, 1) and shard["seeds"].tolist() == list(range(n))
    # guidance is the only class signal here: unguided samples hit their class by chance (1/3), the
    # exact clean classifier on x̂0 steers them to it. The judge (nearest class mean) guides nothing.
    unguided = yaml.safe_load((exp / "metrics" / "uncond_unguided.json").read_text())
    guided_name = next(p.stem for p in (exp / "metrics").glob("uncond_offshelf-x0_relu_*.json"))
    guided = yaml.safe_load((exp / "metrics" / f"{guided_name}.json").read_text())
    assert unguided["accuracy"] < 0.6 < 0.9 < guided["accuracy"], (unguided["accuracy"], guided["accuracy"])
    assert unguided["judge"] == guided["judge"] == "nearest class mean"
    assert math.isfinite(guided["fid"])
    # the family lives outside offshelf, and nothing in offshelf or the workflow knows its name
    assert not (PLUGIN / "toy_backend.py").resolve().is_relative_to((REPO / "src").resolve())
    for folder in ("src/offshelf", "workflow"):
        for source in (REPO / folder).rglob("*"):
            if source.suffix in (".py", ".smk", ".yaml"):
                assert "toy_backend" not in source.read_text(), source
    assert "toy_backend" not in (REPO / "Snakefile").read_text()
