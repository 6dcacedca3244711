"""Issue 11 through the real entry point: every config an adversarial user might write is refused
by `snakemake` (a dry run on config/ci.yaml plus an overlay) before any job, in one line naming
the key or the file, with nothing written to the results folder; a failed job's log says why; a
killed Snakemake is recovered by the documented command."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from workflow_utils import REPO, SNAKEMAKE, cmdline, descendants, snakemake

CI = REPO / "config" / "ci.yaml"


def refused(tmp_path: Path, overlay: dict | str | None = None, *args: str, cwd: Path = REPO) -> str:
    """Dry-run config/ci.yaml with ``overlay`` (a dict dumped to YAML, or raw YAML text, in a file
    whose ``base:`` is config/ci.yaml) on top and
    results in ``tmp_path/results``; assert Snakemake fails before planning any job and writes
    nothing into the results folder; return what it printed."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    results = tmp_path / "results"
    configfile = str(CI)
    if overlay is not None:  # a file naming its base: config/ci.yaml
        path = tmp_path / "overlay.yaml"
        path.write_text(f"base: {CI}\n" + (overlay if isinstance(overlay, str) else yaml.safe_dump(overlay)))
        configfile = str(path)
    proc = snakemake("-s", str(REPO / "Snakefile"), "-n", "--configfile", configfile,
                     "--config", f"results={results}", *args, cwd=cwd, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Job stats" not in out and "Building DAG" not in out, out  # stopped before planning jobs
    assert not results.exists() or not any(results.iterdir()), sorted(results.rglob("*"))
    return out


def one_line(out: str, pattern: str) -> str:
    """The offshelf error line matching ``pattern`` (one line: no traceback around it)."""
    lines = [line for line in out.splitlines() if line.startswith("offshelf: ")]
    assert any(re.search(pattern, line) for line in lines), out
    assert "Traceback" not in out and 'File "' not in out, out
    return next(line for line in lines if re.search(pattern, line))


# ------------------------------------------------------------------ case 1: NaN / inf / 1e300


@pytest.mark.parametrize("overlay, key", [
    ("scales: {cond: [.nan]}\n", r"'scales\.cond\.0' = nan: not a finite number"),
    ("bases: {calibrated: {marginal_temperature: .inf}}\n", r"'bases\.calibrated\.marginal_temperature' = inf"),
    ("figures: {figure4: {scale: -.inf}}\n", r"'figures\.figure4\.scale' = -inf"),
    # softplus_beta's ReLU is the *string* inf; a float inf is refused with the spelling that works
    ("bases: {resnet: {softplus_beta: .inf}}\n", r"'bases\.resnet\.softplus_beta' = inf.*write the string 'inf'"),
    # finite but absurd: overflows inside the sampler exactly like inf
    ("scales: {uncond: [3, 1.0e+300]}\n", r"'scales\.uncond\.1' = 1e\+300: .*maximum of 1000000"),
    ("cfg_scales: [2, 1.0e+300]\n", r"'cfg_scales\.1' = 1e\+300"),
])
def test_non_finite_and_absurd_numbers_are_refused(tmp_path, overlay, key):
    one_line(refused(tmp_path, overlay), key)


# ------------------------------------------------------------------ case 2: outputs stay in results/


@pytest.mark.parametrize("experiment", ["..", "../escaped", ".hidden", "-rf", "a/b"])
def test_experiment_must_be_a_plain_folder_name(tmp_path, experiment):
    out = refused(tmp_path, {"experiment": experiment})
    one_line(out, r"config key 'experiment' = .*expected a plain folder name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.yaml"]  # nothing beside results either


@pytest.mark.parametrize("results, expected", [
    ("", r"config key 'results' = '': must not be empty"),
    ("/", r"config key 'results' = '/' is the filesystem root"),
    ("/tmp/..", r"config key 'results' = '/tmp/\.\.' is the filesystem root"),
])
def test_results_is_never_the_filesystem_root(tmp_path, results, expected):
    # the overlay (not --config) sets results: refused() points --config results at tmp
    cfg = tmp_path / "root.yaml"
    cfg.write_text(yaml.safe_dump({"base": str(CI), "results": results}))
    proc = snakemake("-n", "--configfile", str(cfg), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Building DAG" not in out, out
    one_line(out, expected)


def test_results_that_is_a_file_is_refused_before_any_job(tmp_path):
    results = tmp_path / "results"
    results.write_text("not a folder\n")
    proc = snakemake("-n", "--configfile", str(CI), "--config", f"results={results}", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Building DAG" not in out, out
    one_line(out, rf"config key 'results' = '{re.escape(str(results))}': {re.escape(str(results))} exists and is not a folder")
    assert results.read_text() == "not a folder\n"


def test_experiment_folder_linked_outside_results_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    results = tmp_path / "results"
    results.mkdir()
    (results / "ci").symlink_to(elsewhere)
    proc = snakemake("-n", "--configfile", str(CI), "--config", f"results={results}", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Building DAG" not in out, out
    one_line(out, r"config key 'experiment' = 'ci': .* outside the results folder")
    assert not any(elsewhere.iterdir())


def test_an_output_folder_linked_outside_results_is_refused(tmp_path):
    """Issue 23 case 12: the figures folder linked outside results; refused before any job."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "results" / "ci").mkdir(parents=True)
    (tmp_path / "results" / "ci" / "figures").symlink_to(elsewhere)
    proc = snakemake("-n", "--configfile", str(CI), "--config", f"results={tmp_path / 'results'}", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Building DAG" not in out, out
    one_line(out, r"config key 'results' = .*/ci/figures is a link to .*elsewhere, outside the results folder")
    assert not any(elsewhere.iterdir())


def test_a_yaml_alias_bomb_is_refused_by_the_dry_run(tmp_path):
    """Issue 23 case 11: 1 KB of list aliases nesting 9 deep (9^9 values) hung the config check; the
    Snakefile reads each --configfile with offshelf's bounded reader, which names the file. (A
    bomb of *mappings* is expanded by Snakemake's own config merge before the Snakefile runs:
    `offshelf check-config` refuses it, tests/unit/test_release_refusals.py.)"""
    lines = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi")]
    start = time.perf_counter()
    out = refused(tmp_path, "\n".join(lines) + "\n")
    assert time.perf_counter() - start < 60
    one_line(out, rf"^offshelf: {re.escape(str(tmp_path / 'overlay.yaml'))}: .*aliases expand to .* more than 100,000")


# ------------------------------------------------------------------ case 6: late errors made early


@pytest.mark.parametrize("respacing, expected", [
    ("0", r"'sampling\.respacing' = '0': every section needs at least 1 step"),
    ("10,0", r"'sampling\.respacing' = '10,0': every section needs at least 1 step"),
    ("1001", r"'sampling\.respacing' = '1001': not possible with the 1000-step schedule of backbone 'digits'"),
    ("ddim999", r"'sampling\.respacing' = 'ddim999': not possible"),
])
def test_respacing_beyond_the_schedule_is_refused(tmp_path, respacing, expected):
    one_line(refused(tmp_path, {"sampling": {"respacing": respacing}}), expected)


def test_unknown_backbone_is_named_before_anything_else(tmp_path):
    # Before: "'imagenet' is a required property", about a section the user never meant to write.
    out = refused(tmp_path, {"backbone": "digitz"})
    line = one_line(out, r"config key 'backbone' = 'digitz': expected one of digits, adm128, edm64, dit256")
    assert "imagenet" not in line
    out = refused(tmp_path / "b", {"backbone": "nosuchpkg.backends:Mine"})
    one_line(out, r"config key 'backbone' = 'nosuchpkg\.backends:Mine': cannot import module 'nosuchpkg\.backends'")


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    # config.yaml, read by the Snakefile itself (a user's first run): offshelf's loader reads it
    # first, so Snakemake stops with file:line. (Snakemake reads config.yaml from its working
    # directory: a broken copy in tmp_path, next to nothing else.)
    lines = CI.read_text().splitlines()
    line_no = next(i for i, line in enumerate(lines) if line.startswith("  shard_size: ")) + 1
    lines[line_no - 1] = lines[line_no - 1].replace("shard_size: ", "shard_size: [")
    (tmp_path / "config.yaml").write_text("\n".join(lines) + "\n")
    proc = snakemake("-s", str(REPO / "Snakefile"), "-n", cwd=tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    one_line(out, rf"offshelf: config\.yaml:{line_no + 1}:\d+: not valid YAML")  # PyYAML marks the next line
    assert not (tmp_path / "results").exists()

    # --configfile is parsed by Snakemake before the Snakefile runs, and its message names neither
    # file nor line: the documented check (docs/scaling.md) does.
    bad = tmp_path / "overlay.yaml"
    bad.write_text("sampling:\n  num_samples: 10\n  shard_size: [5\nexperiment: x\n")
    proc = snakemake("-n", "--configfile", str(CI), str(bad), check=False)
    assert proc.returncode != 0
    check = subprocess.run([sys.executable, "-m", "offshelf", "check-config", str(CI), str(bad)], capture_output=True, text=True)
    assert check.returncode == 1
    assert re.fullmatch(rf"offshelf: {re.escape(str(bad))}:4:\d+: not valid YAML: .* \(while parsing a flow sequence "
                        rf"at line 3\)\n", check.stderr), check.stderr


# ------------------------------------------------------------------ case 6: failed job logs say why


def test_failed_job_log_holds_the_traceback(tmp_path):
    """A real job failure: the sample job loads a corrupt model. Snakemake sends the user to the
    job's log, so the log (not only Snakemake's stderr) must hold the traceback and the error."""
    results = tmp_path / "results"
    models = results / "ci" / "models"
    models.mkdir(parents=True)
    for role in ("denoiser", "offshelf", "finetuned"):  # existing outputs without metadata: not retrained
        (models / f"{role}.pt").write_bytes(os.urandom(300))
    shard = results / "ci" / "samples" / "cond_unguided" / "shard0.npz"
    proc = snakemake("--cores", "1", "--configfile", str(CI), "--config", f"results={results}", "--", str(shard),
                     check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and not shard.exists(), out
    log = results / "logs" / "ci" / "sample" / "cond_unguided" / "shard0.log"
    assert f"log: {log}" in out  # where Snakemake tells the user to look
    text = log.read_text()
    assert text.startswith("[offshelf] ")  # the header line, then why it failed:
    assert "Traceback (most recent call last)" in text
    last = text.rstrip().splitlines()[-1]
    assert re.match(r"^[\w.]*(Error|Exception)\b", last) or re.search(r"^[\w.]*Error: ", text, re.M), text
    assert str(models / "denoiser.pt") in text  # the error names the file that broke it


# ------------------------------------------------------------------ case 7: recovery after a kill


def test_documented_recovery_after_a_killed_snakemake(tmp_path):
    """SIGKILL a real run mid-job: a plain rerun stops with Snakemake's LockException; the command
    docs/scaling.md gives (`offshelf resume <same args>`) refuses while Snakemake
    still runs, and after the kill unlocks and completes the run."""
    workdir = tmp_path / "work"  # Snakemake's locks live in its working directory: keep them here
    workdir.mkdir()
    results = tmp_path / "results"
    targets = [str(results / "ci" / "models" / f"{role}.pt") for role in ("denoiser", "offshelf")]
    args = ["-s", str(REPO / "Snakefile"), "--profile", str(REPO / "profiles" / "local"), "--cores", "1",
            "--configfile", str(CI), "--config", f"results={results}", "--", *targets]
    resume = [sys.executable, "-m", "offshelf", "resume", *args]

    log = tmp_path / "killed.log"
    proc = subprocess.Popen([*SNAKEMAKE, *args], cwd=workdir, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while not any("train_model" in cmdline(p) for p in descendants(proc.pid)):
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.2)
        assert any((workdir / ".snakemake" / "locks").iterdir())
        # while Snakemake runs, its locks are live: the recovery command must not touch them
        live = subprocess.run(resume, cwd=workdir, capture_output=True, text=True, timeout=60)
        assert live.returncode == 1 and "Snakemake is still running" in live.stderr, live.stderr
        assert proc.poll() is None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not all(Path(t).exists() for t in targets)
    assert any((workdir / ".snakemake" / "locks").iterdir()), "the kill left no lock: nothing to prove"

    # what docs/scaling.md used to promise ("just rerun") fails
    plain = subprocess.run([*SNAKEMAKE, *args], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert plain.returncode != 0 and "LockException" in plain.stdout + plain.stderr

    done = subprocess.run(resume, cwd=workdir, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "removing the locks a killed run left" in done.stderr
    assert all(Path(t).stat().st_size > 0 for t in targets)
    locks = workdir / ".snakemake" / "locks"
    assert not locks.exists() or not any(locks.iterdir())  # the finished run released its own locks


# ------------------------------------------------------------------ case 8: bounded job count


def test_the_plan_states_its_job_count(tmp_path):
    proc = snakemake("-n", "--configfile", str(CI), "--config", f"results={tmp_path / 'results'}")
    config = yaml.safe_load(CI.read_text())
    m = re.search(r"^offshelf: (\d+) jobs planned \((\d+) sample: (\d+) settings x up to (\d+) shards?;", proc.stderr,
                  re.M)
    assert m, proc.stderr
    assert int(m.group(4)) == config["sampling"]["num_samples"] // config["sampling"]["shard_size"]
    assert int(m.group(2)) == int(m.group(3)) * int(m.group(4))
    assert int(m.group(2)) == sum(1 for line in proc.stdout.splitlines() if re.match(r"^rule sample:", line))


@pytest.mark.parametrize("sampling", [
    {"num_samples": 2000, "shard_size": 1},      # 20 settings x 2000 shards: counted exactly
    {"num_samples": 10**9, "shard_size": 1},     # the shards alone exceed the bound: arithmetic only
])
def test_too_many_jobs_are_refused_naming_the_keys(tmp_path, sampling):
    start = time.perf_counter()
    out = refused(tmp_path, {"sampling": {**sampling, "batch_size": 1}})
    line = one_line(out, r"config keys 'sampling\.num_samples' = \d+ / 'sampling\.shard_size' = 1 plan \d+ jobs")
    assert "above max_jobs = 20000" in line and "set the config key 'max_jobs'" in line
    assert time.perf_counter() - start < 30  # refused before Snakemake builds a DAG of them


def test_max_jobs_raises_the_bound_explicitly():
    from offshelf.config import ConfigError, validate_config

    config = yaml.safe_load(CI.read_text())
    config["sampling"].update(num_samples=2000, shard_size=1)
    with pytest.raises(ConfigError, match="max_jobs"):
        validate_config(config)
    config["max_jobs"] = 50_000
    validate_config(config)


def test_snakemake_stops_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: {REPO / 'config.yaml'}\n"
                   "sampling: {respacing: '50', num_samples: 10, shard_size: 5, batch_size: 5, seeds: 3}\n")
    proc = snakemake("-n", "--configfile", str(bad), check=False)
    assert proc.returncode != 0
    assert "unknown key(s) ['seeds']" in proc.stdout + proc.stderr
    assert "Job stats" not in proc.stdout
