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
    """``offshelf check-config <overlay>``, the overlay naming config/ci.yaml as its base, with results
    in ``tmp_path/results``."""
    path = tmp_path / "overlay.yaml"
    results = {"base": str(CI), "results": str(tmp_path / "results")}
    text = yaml.safe_dump(results) + overlay if isinstance(overlay, str) else yaml.safe_dump({**results, **overlay})
    path.write_text(text)
    return subprocess.run([str(OFFSHELF), "check-config", str(path)], capture_output=True, text=True,
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
    assert proc.returncode == 0 and ": valid (built-in backbone 'digits')" in proc.stdout, proc.stderr


# ------------------------------------------------------------------ case 3: a duplicate row label


def test_a_duplicate_row_label_is_refused(tmp_path):
    table1 = yaml.safe_load(CI.read_text())["tables"]["table1"]
    assert len(table1["rows"]) >= 2
    label = table1["rows"][0]["label"]
    table1["rows"][1]["label"] = label
    line = refused_line(check_config(tmp_path, {"tables": {"table1": table1}}))
    assert f"config key 'tables.table1.rows[1].label' = {label!r}: table 'table1' already has a row" in line
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------ case 1: the report reads its own folder


def test_a_search_result_names_files_inside_its_experiment_folder(tmp_path):
    """The mechanism of tests/workflow/test_self_contained_results.py: paths relative to the
    experiment folder resolve there; a run-time path of another folder (a result.json of an older
    offshelf) is refused, naming the record and the key."""
    import json

    from offshelf.report import searched_files

    exp = tmp_path / "copy" / "ci"
    (exp / "metrics").mkdir(parents=True)
    (exp / "search" / "s").mkdir(parents=True)
    for name in ("a.json", "a.features.npz"):
        (exp / "metrics" / name).write_text("{}")
    result = exp / "search" / "s" / "result.json"
    result.write_text(json.dumps({"metrics_file": "metrics/a.json", "features_file": "metrics/a.features.npz",
                                  "grid_shards": []}))
    assert searched_files(exp, result) == {"metrics_file": [str(exp / "metrics" / "a.json")],
                                           "features_file": [str(exp / "metrics" / "a.features.npz")]}
    for stale in (str(tmp_path / "source" / "ci" / "metrics" / "a.json"), "../../source/ci/metrics/a.json"):
        result.write_text(json.dumps({"metrics_file": stale, "features_file": "metrics/a.features.npz"}))
        with pytest.raises(ValueError, match=f"^{result}: metrics_file .* is not a path relative to the experiment"):
            searched_files(exp, result)


# ------------------------------------------------------------------ case 12: a linked sub-folder


@pytest.mark.parametrize("linked", ["ci/figures", "ci/report/samples", "ci/search/table1_row0_cond", "logs/ci/evaluate",
                                    "ci/metrics/x.json"])
def test_an_output_folder_linked_outside_results_is_refused(tmp_path, linked):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "results" / linked
    link.parent.mkdir(parents=True)
    link.symlink_to(elsewhere / "x.json" if linked.endswith(".json") else elsewhere)
    line = refused_line(check_config(tmp_path, {}))
    assert f"config key 'results' = '{tmp_path / 'results'}': {link} is a link to " in line
    assert "outside the results folder" in line
    assert not any(elsewhere.iterdir())


def test_a_link_inside_results_is_accepted(tmp_path):
    inside = tmp_path / "results" / "disk2"
    inside.mkdir(parents=True)
    (tmp_path / "results" / "ci").mkdir()
    (tmp_path / "results" / "ci" / "samples").symlink_to(inside)
    proc = check_config(tmp_path, {})
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------ case 11: a YAML alias bomb


def alias_bomb(mapping: bool = False) -> str:
    """1 KB of YAML whose aliases nest 9 deep: 9^9 values once expanded."""
    if mapping:
        lines = ["a: &a {" + ", ".join(f"k{j}: 1" for j in range(9)) + "}"]
    else:
        lines = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        items = [f"k{j}: *{prev}" for j in range(9)] if mapping else [f"*{prev}"] * 9
        lines.append(f"{name}: &{name} " + ("{" if mapping else "[") + ", ".join(items) + ("}" if mapping else "]"))
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("mapping", [False, True])
def test_a_yaml_alias_bomb_is_refused_within_two_seconds(tmp_path, mapping):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb(mapping))
    assert len(bomb.read_bytes()) < 1500
    start = time.perf_counter()
    proc = subprocess.run([str(OFFSHELF), "check-config", str(bomb)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert time.perf_counter() - start < 2.0
    line = refused_line(proc)
    assert line.startswith(f"offshelf: {bomb}: ") and "aliases expand to" in line and "more than 100,000" in line


def test_aliases_within_the_budget_still_read(tmp_path):
    from offshelf.config import check_config_values_finite, read_yaml

    path = tmp_path / "ok.yaml"
    path.write_text("bases: &b {x: {scale: 1.0}}\nother: *b\n")
    data = read_yaml(path)
    assert data["other"] is data["bases"]
    shared = [1.0] * 9  # the walk of the values visits one object once, however often it is aliased
    for _ in range(9):
        shared = [shared] * 9
    start = time.perf_counter()
    check_config_values_finite({"deep": shared})
    assert time.perf_counter() - start < 1.0
