"""The ``offshelf`` command's refusals (issue 23, cases 4, 5, 9): every one is exit status 2, one
line naming the argument, before any work, and nothing written or overwritten.

The tests call the command's entry point (:func:`offshelf.cli.main`, what ``offshelf`` and ``python -m
offshelf`` run) in this process, which saves a torch import per case; ``test_the_installed_command_refuses_alike``
runs the real command in a subprocess. The checkpoint files are placeholders: every refusal here comes
before a model is read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from workflow_utils import REPO

OFFSHELF = [sys.executable, "-m", "offshelf"]
ROLES = ("denoiser", "offshelf", "finetuned")


def offshelf(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``offshelf ARGS`` in ``cwd``, through the command's entry point, run in this process."""
    import contextlib
    import io

    from offshelf.cli import main

    stdout, stderr, here = io.StringIO(), io.StringIO(), os.getcwd()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(list(args))
            except SystemExit as exit_:
                code = exit_.code
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(["offshelf", *args], code, stdout.getvalue(), stderr.getvalue())


def test_the_installed_command_refuses_alike(folder):
    """The real command line (a subprocess): a shard given as its own output, and a role typo."""
    before = snapshot(folder)
    for args, argument in (([*EVALUATE, "--shards", "v.npz", "--out", "v.npz"], "--out: "),
                           ([*SAMPLE, "--checkpoint", "denoisre=/dev/null", "--out", "s.npz"], "--checkpoint: ")):
        proc = subprocess.run([*OFFSHELF, *args], cwd=folder, capture_output=True, text=True, timeout=120)
        refused(proc, args[0], argument)
    assert snapshot(folder) == before


def refused(proc: subprocess.CompletedProcess, command: str, argument: str) -> str:
    """The one error line of a refusal naming ``argument`` (exit 2, no traceback)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"offshelf {command}: error: {argument}"), proc.stderr
    return proc.stderr


@pytest.fixture
def folder(tmp_path):
    """Placeholder checkpoints and a shard; returns the folder and each file's bytes."""
    for name in (*ROLES, "evaluator"):
        (tmp_path / f"{name}.pt").write_bytes(f"{name} weights".encode())
    for name in ("v.npz", "v2.features.npz", "x.png"):
        (tmp_path / name).write_bytes(f"input {name}".encode())
    return tmp_path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


SAMPLE = ["sample", "--backend", "digits", "--setting", "regime=cond,softplus_beta=3,scale=3", "--seeds", "2",
          "--batch-size", "4", *[f"--checkpoint={role}={role}.pt" for role in ROLES]]
EVALUATE = ["evaluate", "--backend", "digits", "--checkpoint", "evaluator=evaluator.pt"]
CALIBRATE = ["calibrate", "--backend", "digits", "--probe", "offshelf-x0_sp3", "--batch-size", "4",
             *[f"--checkpoint={role}={role}.pt" for role in ROLES]]


# ------------------------------------------------------------ case 4: outputs never alias inputs


@pytest.mark.parametrize("args, argument, named", [
    ([*EVALUATE, "--shards", "v.npz", "--out", "v.npz"], "--out: ", "input --shards v.npz"),
    ([*EVALUATE, "--shards", "v2.features.npz", "--out", "v2.json"], "--out (its features file beside it): ",
     "input --shards v2.features.npz"),
    ([*SAMPLE, "--out", "x.png"], "--out (its grid beside it): ", "output of --out"),
    ([*SAMPLE, "--out", "s.npz", "--grid", "s.npz"], "--grid: ", "output of --out"),
    ([*SAMPLE, "--out", "denoiser.pt"], "--out: ", "input --checkpoint denoiser"),
    ([*CALIBRATE, "--num-samples", "8", "--out", "offshelf.pt"], "--out: ", "input --checkpoint offshelf"),
], ids=["evaluate-out-is-shard", "evaluate-features-is-shard", "sample-grid-is-out", "sample-grid-given-as-out",
        "sample-out-is-checkpoint", "calibrate-out-is-checkpoint"])
def test_an_output_that_is_an_input_or_another_output_is_refused(folder, args, argument, named):
    before = snapshot(folder)
    line = refused(offshelf(*args, cwd=folder), args[0], argument)
    assert named in line
    assert snapshot(folder) == before  # no input overwritten, nothing written


def test_an_output_reached_through_a_link_is_the_same_file(folder):
    (folder / "link.npz").symlink_to(folder / "v.npz")
    before = snapshot(folder)
    refused(offshelf(*EVALUATE, "--shards", "v.npz", "--out", "link.npz", cwd=folder), "evaluate", "--out: ")
    assert snapshot(folder) == before


# --------------------------------------------- case 5: unknown roles and options are errors


@pytest.mark.parametrize("args, argument, named", [
    ([*SAMPLE, "--checkpoint", "denoisre=/dev/null", "--out", "s.npz"], "--checkpoint: ",
     "unknown role(s) ['denoisre']: backend 'digits' reads denoiser, finetuned, offshelf"),
    ([*EVALUATE, "--checkpoint", "evaluater=evaluator.pt", "--shards", "v.npz", "--out", "m.json"], "--checkpoint: ",
     "unknown role(s) ['evaluater']: backend 'digits' reads evaluator"),
    ([*SAMPLE, "--option", "split_sed=1", "--out", "s.npz"], "--option: ",
     "unknown option(s) ['split_sed'] of backend 'digits'; its options: split_seed"),
], ids=["sample-role-typo", "evaluate-role-typo", "option-typo"])
def test_unknown_roles_and_options_are_refused_naming_the_valid_ones(folder, args, argument, named):
    before = snapshot(folder)
    assert named in refused(offshelf(*args, cwd=folder), args[0], argument)
    assert snapshot(folder) == before


# ------------------------------ case 9: the command line checks what the workflow checks


@pytest.mark.parametrize("setting, named", [
    ("marginal_temperature=-1", "setting key 'marginal_temperature' = -1: -1 is less than the minimum of 0"),
    ("sine_factor=-0.3", "setting key 'sine_factor' = -0.3"),
    ("scale=1e20", "setting key 'scale' = 1e+20: 1e+20 is greater than the maximum"),
    ("recurrent_steps=2.7", "setting key 'recurrent_steps' = 2.7: 2.7 is not of type 'integer'"),
    ("softplus_beta=yes", "setting key 'softplus_beta' = True is invalid"),
    ("scale=[1", "'scale=[1': the value is not valid YAML"),
])
def test_a_setting_outside_the_schema_is_refused(folder, setting, named):
    args = [a if not a.startswith("regime=") else f"regime=uncond,{setting}" for a in SAMPLE]
    before = snapshot(folder)
    assert named in refused(offshelf(*args, "--out", "s.npz", cwd=folder), "sample", "--setting: ")
    assert snapshot(folder) == before


def test_a_setting_file_with_a_yaml_error_is_one_line_naming_file_and_line(folder):
    (folder / "setting.yaml").write_text("regime: uncond\nscale: [1, 2\n")
    args = [a if not a.startswith("regime=") else "setting.yaml" for a in SAMPLE]
    line = refused(offshelf(*args, "--out", "s.npz", cwd=folder), "sample", "--setting: ")
    assert "setting.yaml:" in line and "not valid YAML" in line
    assert not (folder / "s.npz").exists()


@pytest.mark.parametrize("args, argument, named", [
    ([*SAMPLE, "--sampling", "respacing=0"], "--sampling: ", "'sampling.respacing' = '0': every section needs"),
    ([*SAMPLE, "--batch-size", "0"], "--batch-size: ", "0: must be >= 1"),
    ([*CALIBRATE, "--num-samples", "0"], "--num-samples: ", "'num_samples' = 0: 0 is less than the minimum of 1"),
    ([*CALIBRATE, "--num-samples", "-5"], "--num-samples: ", "'num_samples' = -5: -5 is less than the minimum"),
], ids=["respacing-0", "batch-size-0", "num-samples-0", "num-samples-negative"])
def test_sizes_and_sampling_outside_the_schema_are_refused(folder, args, argument, named):
    before = snapshot(folder)
    out = "c.csv" if args[0] == "calibrate" else "s.npz"
    assert named in refused(offshelf(*args, "--out", out, cwd=folder), args[0], argument)
    assert snapshot(folder) == before


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder no file can be created in: read-only permissions or, for root (whom permissions do
    not stop), a filesystem that refuses new files."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys")):
        try:
            fd, probe = tempfile.mkstemp(dir=candidate)
        except OSError:
            return candidate
        os.close(fd)
        os.unlink(probe)
    pytest.skip("no folder here refuses a new file")


def test_out_into_a_folder_or_an_unwritable_place_is_refused_before_sampling(folder, tmp_path):
    line = refused(offshelf(*SAMPLE, "--out", str(folder), cwd=folder), "sample", "--out: ")
    assert "is a folder" in line
    target = unwritable_folder(tmp_path) / "s.npz"
    line = refused(offshelf(*SAMPLE, "--out", str(target), cwd=folder), "sample", "--out: ")
    assert "cannot write in" in line and not target.exists()


# ------------------------------ case 6: verify compares with the workflow's pins, or says it cannot


def test_verify_without_any_pin_is_an_error_that_says_nothing_was_compared(tmp_path):
    (tmp_path / "random.pt").write_bytes(os.urandom(1000))
    proc = subprocess.run([*OFFSHELF, "checkpoints", "verify", "dit_xl2_256", "random.pt"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "checkpoint 'dit_xl2_256': nothing to compare random.pt with" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["random.pt"]  # nothing pinned: verify never trusts


def test_verify_reads_the_workflows_lock_file_by_default(tmp_path):
    import hashlib
    import json

    from offshelf.checkpoints import DEFAULT_LOCK, REGISTRY

    rules = (Path(__file__).resolve().parents[2] / "workflow" / "rules" / "models.smk").read_text()
    assert f'CHECKPOINTS.get("lock", "{DEFAULT_LOCK}")' in rules  # the same default as the workflow
    pinned, other = os.urandom(1000), os.urandom(1000)
    (tmp_path / DEFAULT_LOCK).write_text(json.dumps({"dit_xl2_256": {
        "url": REGISTRY["dit_xl2_256"].url, "sha256": hashlib.sha256(pinned).hexdigest(), "size": 1000}}))
    (tmp_path / "pinned.pt").write_bytes(pinned)
    (tmp_path / "other.pt").write_bytes(other)
    ok = offshelf("checkpoints", "verify", "dit_xl2_256", "pinned.pt", cwd=tmp_path)
    assert ok.returncode == 0 and f"matches the sha256 and size pinned in {DEFAULT_LOCK}" in ok.stdout, ok.stderr
    bad = offshelf("checkpoints", "verify", "dit_xl2_256", "other.pt", cwd=tmp_path)
    assert bad.returncode == 1 and f"(pinned for 'dit_xl2_256' in {DEFAULT_LOCK})" in bad.stderr, bad.stderr
    assert bad.stderr.count("\n") == 1


# ------------------------------ case 10: config errors at validation, one line naming the key

CI = Path(__file__).resolve().parents[2] / "config" / "ci.yaml"


@pytest.mark.parametrize("overlay, named", [
    ({"experiment": "x" * 300}, "config key 'experiment' = 'xxxxxxxxxxxxxxxxxxxx'... (300 characters): at most 100"),
    ({"figures": {"figure4": {"steps": [9, 50]}}}, "config key 'figures.figure4.steps' = [9, 50]: [50] beyond the 10 "
                                                   "steps of sampling.respacing '10'"),
    ({"grids": {"classes": [0, 99]}}, "config key 'grids.classes': [99] outside the backend's classes 0..9"),
    ({"sampling": {"num_samples": 1, "shard_size": 1}, "search": {"low_fidelity": 1}},
     "config keys 'sampling.num_samples' = 1 and 'evaluation.nhood_size' = 3: an evaluation reads 1 samples"),
    ({"evaluation": {"nhood_size": 1000}}, "config keys 'search.low_fidelity' = 32 and 'evaluation.nhood_size' = "
                                           "1000: an evaluation reads 32 samples"),
    ({"sampling": {"seed_offset": 2 ** 64 - 10}}, "config key 'sampling.seed_offset' = 18446744073709551606: "
                                                  "18446744073709551606 is greater than the maximum"),
    ({"backbone": ".foo:Bar"}, "config key 'backbone' = '.foo:Bar': '.foo' is not an absolute module path"),
], ids=["long-experiment", "figure4-steps", "grid-classes", "one-sample", "nhood-size", "seed-offset",
        "relative-backbone"])
def test_config_errors_are_refused_by_check_config_naming_the_key(tmp_path, overlay, named):
    import yaml

    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump({"base": str(CI), **overlay}))  # a file names its base
    proc = offshelf("check-config", "overlay.yaml", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("offshelf: "), proc.stderr
    assert named in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.yaml"]  # nothing written


# ------------------------------ case 13: check-config says it imports (runs) the backbone's module


def test_check_config_says_it_runs_a_plugin_backbones_module(tmp_path):
    import yaml

    plugin = Path(__file__).resolve().parents[1] / "plugin"
    (tmp_path / "side_effect_backend.py").write_text(
        "import pathlib\npathlib.Path('module-code-ran').write_text('yes')\n"
        "from toy_backend import ToyMixtureBackend\n")
    config = yaml.safe_load(CI.read_text())
    config = {k: v for k, v in config.items() if k != "digits"}
    config.update(backbone="side_effect_backend:ToyMixtureBackend")
    config["figures"]["figure4"]["label"] = 2
    config["grids"]["classes"] = [0, 1, 2]
    (tmp_path / "plugin.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(plugin), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([*OFFSHELF, "check-config", "plugin.yaml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "plugin.yaml: valid (plug-in backbone 'side_effect_backend:ToyMixtureBackend': imported module 'side_effect_backend', whose code ran)" in proc.stdout
    assert (tmp_path / "module-code-ran").read_text() == "yes"  # what the message and docs/backends.md say
    help_text = subprocess.run([*OFFSHELF, "check-config", "--help"], capture_output=True, text=True, timeout=120).stdout
    assert "imports the backbone's module" in " ".join(help_text.split())
    docs = (Path(__file__).resolve().parents[2] / "docs" / "backends.md").read_text()
    assert "### Trust: a plug-in backbone is code that runs" in docs


# --- offshelf sample --classes: declared, recorded in the shard, accepted by offshelf evaluate ------

@pytest.fixture(scope="module")
def digits_results(tmp_path_factory):
    """A results folder with the ci config's networks (tiny, trained here), where --config finds them."""
    import shutil

    from conftest import train_tiny_digits

    results = tmp_path_factory.mktemp("results")
    models = results / "ci" / "models"
    models.mkdir(parents=True)
    for role, path in train_tiny_digits(tmp_path_factory.mktemp("digits"), steps=20, batch_size=32).items():
        shutil.copy(path, models / f"{role}.pt")
    return results


CLASSES_SETTING = "regime=cond,softplus_beta=3,marginal_temperature=0.5,sine_factor=0.3,scale=1"


def test_evaluate_accepts_the_shards_sample_classes_writes_and_checks_their_labels(digits_results, tmp_path):
    """`offshelf sample --classes 3,7` records the classes in its shard; `offshelf evaluate` reads it
    (its labels are the chosen ones, not the ones the seeds draw) and still refuses a shard whose
    labels are not the recorded classes; the workflow's shard reader refuses chosen classes."""
    import numpy as np

    from offshelf.shards import load_shards, save_shard
    from offshelf.backends import create

    common = ["--config", "config/ci.yaml", "--results", str(digits_results)]
    shard = tmp_path / "chosen.npz"
    sampled = offshelf("sample", *common, "--setting", CLASSES_SETTING, "--seeds", "0:6", "--classes", "3,7",
                       "--out", str(shard), cwd=REPO)
    assert sampled.returncode == 0, sampled.stderr
    with np.load(shard) as data:
        assert data["classes"].tolist() == [3, 7] and data["arr_1"].tolist() == [3, 7, 3, 7, 3, 7]
        images, seeds, seconds = data["arr_0"], data["seeds"], float(data["seconds"])
    evaluated = offshelf("evaluate", *common, "--shards", str(shard), "--out", str(tmp_path / "m.json"), cwd=REPO)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "m.json").read_text())["n"] == 6
    # the same images with two labels swapped: refused, naming the file and the first wrong sample
    swapped = tmp_path / "swapped.npz"
    save_shard(swapped, images, np.array([7, 3, 3, 7, 3, 7]), seeds, seconds, classes=[3, 7])
    refused = offshelf("evaluate", *common, "--shards", str(swapped), "--out", str(tmp_path / "s.json"), cwd=REPO)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert f"{swapped}: 2 of 6 labels are not the classes the shard records ([3, 7]" in refused.stderr
    assert "sample 0 has label 7, expected 3" in refused.stderr and not (tmp_path / "s.json").exists()
    # the workflow's samples draw their classes from their seeds: a chosen-class shard is not one of them
    with pytest.raises(ValueError, match=rf"{shard}: holds samples of chosen classes \[3, 7\]"):
        load_shards(create({"name": "digits", "options": {}}), [str(shard)], [[0, 6]])


def test_sample_classes_asks_the_declared_capability(digits_results, tmp_path, monkeypatch):
    """--classes is allowed by the backend's declaration (capability chosen_classes), not by the
    signature of its sample(): digits' sample() takes labels=, but undeclared it is refused."""
    from offshelf.backends.capabilities import Capability
    from offshelf.backends.digits import DigitsBackend

    monkeypatch.setattr(DigitsBackend, "capabilities", DigitsBackend.capabilities - {Capability.CHOSEN_CLASSES})
    err = refused(offshelf("sample", "--config", "config/ci.yaml", "--results", str(digits_results), "--setting",
                                CLASSES_SETTING, "--seeds", "0:2", "--classes", "3", "--out",
                                str(tmp_path / "s.npz"), cwd=REPO), "sample", "--classes")
    assert "backend 'digits' draws each seed's class itself: it does not declare capability 'chosen_classes'" in err
    assert not (tmp_path / "s.npz").exists()
