"""The whole DAG for real on config/ci.yaml: the report has a number in every row, a config edit
reruns exactly the jobs that depend on it, and a killed sampling job loses only its shard."""

import math
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from workflow_utils import REPO, SNAKEMAKE, cmdline, descendants, dry_run_jobs, snakemake

pytestmark = pytest.mark.slow
CI = REPO / "config" / "ci.yaml"


# ci_run (conftest.py): the ci workflow, run once per session for this module and test_report_html.py


def test_the_printed_job_count_is_the_number_of_jobs_the_run_ran(ci_run):
    """One job count, and correct: the run's one `offshelf: N jobs planned` line (the plan's,
    offshelf.planning.costs.count_jobs) names as many jobs as Snakemake ran, rule by rule (ci's
    searches take every step the count allows for: at most is exact here)."""
    import re
    from collections import Counter

    from offshelf.config import read_config, validated_plan

    log = (ci_run / "snakemake.log").read_text()
    planned = re.findall(r"^offshelf: (\d+) jobs planned \(.*", log, flags=re.M)
    assert len(planned) == 1, planned
    ran = Counter(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):$", log, flags=re.M))
    finished = len(re.findall(r"^Finished jobid: ", log, flags=re.M))
    steps = re.findall(r"^(\d+) of (\d+) steps \(100%\) done$", log, flags=re.M)
    assert steps[-1] == (str(finished), str(finished)), steps[-1:]  # every job started, and finished
    assert int(planned[0]) == finished == sum(ran.values()), (planned, finished, ran)
    counts = validated_plan(read_config(CI)).job_counts
    by_rule = {"sample": counts["sample"] + counts["search_sample"], "evaluate": counts["evaluate"] + counts["search_evaluate"],
               "search_round": counts["search_round"], "search_result": counts["search_result"],
               "calibrate": ran["calibrate"], "calibrate_guided": counts["calibrate"] - ran["calibrate"],
               "figure_calibration": ran["figure_calibration"], "figure_gradients": ran["figure_gradients"],
               "figure_analytic": counts["figure"] - ran["figure_calibration"] - ran["figure_gradients"],
               **{rule: counts[rule] for rule in ("train_model", "reference_features", "report", "all")}}
    assert dict(ran) == by_rule


def test_report_has_numbers_for_every_row(ci_run):
    report = ci_run / "ci" / "report"
    assert (report / "README.md").is_file()
    config = yaml.safe_load(CI.read_text())
    for table, spec in config["tables"].items():
        frame = pd.read_csv(report / f"{table}.csv")
        assert len(frame) == len(spec["rows"]) * len(config["regimes"]), table
        for _, row in frame.iterrows():
            assert row["status"] == "ok", f"{table} / {row['row']} / {row['regime']}: {row['status']}"
            # ci turns guided calibration on: every calibration row has its guided ICE too
            for column in spec.get("columns", ["fid"]) + (["ice_guided"] if spec.get("calibration") else []):
                value = row[column]
                assert isinstance(value, float) and math.isfinite(value), f"{table} / {row['row']}: {column}={value}"
    for figure in ("figure1", "figure2", "figure3", "figure4", "figure5"):
        assert (ci_run / "ci" / "figures" / f"{figure}.png").stat().st_size > 1000


def test_report_has_intervals_and_paired_differences(ci_run):
    """Every table CSV has <metric>_lo/_hi and <metric>_diff/_diff_lo/_diff_hi for each metric,
    finite wherever the point estimate (and the baseline row's) is; the baseline row differs from
    itself by exactly 0 [0, 0]; the Markdown shows intervals and the legend."""
    report = ci_run / "ci" / "report"
    config = yaml.safe_load(CI.read_text())
    assert config["evaluation"]["bootstrap"] > 0
    for table in config["tables"]:
        frame = pd.read_csv(report / f"{table}.csv")
        for metric in ("fid", "precision", "recall", "accuracy"):
            for suffix in ("lo", "hi", "diff", "diff_lo", "diff_hi"):
                assert f"{metric}_{suffix}" in frame, f"{table}: no column {metric}_{suffix}"
            for _, row in frame.iterrows():
                base = frame[(frame["regime"] == row["regime"]) & frame["baseline"]].iloc[0]
                where = f"{table} / {row['row']} / {row['regime']}: {metric}"
                if not math.isfinite(row[metric]):
                    continue
                lo, hi = row[f"{metric}_lo"], row[f"{metric}_hi"]
                assert math.isfinite(lo) and math.isfinite(hi) and lo <= hi, f"{where} [{lo}, {hi}]"
                if math.isfinite(base[metric]):
                    diff = [row[f"{metric}_diff{s}"] for s in ("", "_lo", "_hi")]
                    assert all(map(math.isfinite, diff)) and diff[1] <= diff[2], f"{where} diff {diff}"
                    assert diff[0] == pytest.approx(row[metric] - base[metric], abs=1e-12)
                    if row["baseline"]:
                        assert diff == [0, 0, 0], where
        text = (report / f"{table}.md").read_text()
        assert " [" in text and "(baseline)" in text and "excludes 0" in text, table
    for metrics in (ci_run / "ci" / "metrics").glob("*.json"):
        with np.load(metrics.with_suffix(".features.npz")) as saved:
            n = len(saved["seeds"])
            assert saved["features"].shape[0] == n and saved["replicate_fid"].shape == (config["evaluation"]["bootstrap"],)


def test_searched_rows_report_their_search(ci_run):
    """Every guided row names the scale its search chose, the search's trace, and the samples it
    drew: every evaluation's (the rounds draw the screens, the finalist is drawn in full again).
    ci.yaml: one initial scale, one step past either edge, then the finalist at all 64 samples."""
    import re

    from offshelf.search import Evaluation, canonical_scale, samples_spent

    config = yaml.safe_load(CI.read_text())
    search, n, steps = config["search"], config["sampling"]["num_samples"], int(config["sampling"]["respacing"])
    searched = 0
    for table in config["tables"]:
        frame = pd.read_csv(ci_run / "ci" / "report" / f"{table}.csv")
        for _, row in frame[frame["search_trace"].notna()].iterrows():
            searched += 1
            trace = [Evaluation(float(s), int(k), float(v)) for s, k, v in
                     (re.split("[@:]", e) for e in row["search_trace"].split())]
            initial = float(search["initial"][row["regime"]][0])
            assert [e.scale for e in trace[:3]] == [initial, canonical_scale(initial / 3), initial * 3]
            assert [e.num_samples for e in trace] == [search["low_fidelity"]] * 3 + [n]
            assert row["search_samples"] == samples_spent(trace) == 3 * search["low_fidelity"] + n
            finalist = trace[-1]
            best_low = min(trace[:3], key=lambda e: (e.value, e.scale))
            assert row["scale"] == finalist.scale == best_low.scale
            assert row["fid"] == pytest.approx(finalist.value, rel=1e-3)  # the trace keeps 4 digits
            assert f"_s{finalist.scale:g}_" in row["setting"]
            recurrent = int(re.search(r"_r(\d+)", row["setting"]).group(1))  # DDPM: r passes but the last step
            assert row["search_denoiser_evaluations"] == row["search_samples"] * (steps + (recurrent - 1) * (steps - 1))
            assert row["scale_on_edge"] in ("low", "high") or pd.isna(row["scale_on_edge"])
    assert searched >= 2 * len(config["tables"])
    assert "guidance-scale search" in (ci_run / "ci" / "report" / "README.md").read_text()


def test_search_rounds_rank_scales_by_the_fid_an_evaluate_job_gives(ci_run, tmp_path):
    """A round draws and judges the scales the round before proposed inside its own process. The
    finalist is then sampled again by ordinary sample jobs, on the same seeds: its low-fidelity FID
    in the trace is what `offshelf evaluate` gives on the first N samples of those shards (the
    round's draw and the sample job's agree)."""
    import re
    import sys
    from pathlib import Path

    config = yaml.safe_load(CI.read_text())
    low = config["search"]["low_fidelity"]
    frame = pd.read_csv(ci_run / "ci" / "report" / "table6.csv")
    checked = 0
    for _, row in frame[frame["search_trace"].notna()].iterrows():
        screened = {float(s): float(v) for s, k, v in (re.split("[@:]", e) for e in row["search_trace"].split())
                    if int(k) == low}
        out = tmp_path / f"{row['setting']}.json"
        shards = sorted((ci_run / "ci" / "samples" / row["setting"]).glob("shard*.npz"))
        subprocess.run([str(Path(sys.executable).with_name("offshelf")), "evaluate", "--config", str(CI), "--results", str(ci_run),
                        "--shards", *map(str, shards), "--reference", str(ci_run / "ci" / "reference" / "features.npz"),
                        "--num-samples", str(low), "--out", str(out)], check=True, capture_output=True, text=True)
        fid = yaml.safe_load(out.read_text())["fid"]
        assert screened[float(row["scale"])] == pytest.approx(fid, rel=1e-3), f"{row['setting']}: trace, evaluate {fid}"  # 4 digits kept
        checked += 1
    assert checked == 2 * len(config["regimes"])  # table6's two rows, each regime


def test_shards_use_the_adm_evaluator_layout(ci_run):
    sampling = yaml.safe_load(CI.read_text())["sampling"]
    shards = sorted((ci_run / "ci" / "samples" / "cond_unguided").glob("shard*.npz"))
    assert len(shards) == -(-sampling["num_samples"] // sampling["shard_size"])
    seeds = []
    for path in shards:
        with np.load(path) as shard:
            assert shard["arr_0"].dtype == np.uint8 and shard["arr_0"].shape[1:] == (8, 8, 1)
            assert shard["arr_1"].shape == (min(sampling["shard_size"], sampling["num_samples"] - len(seeds)),)
            seeds += shard["seeds"].tolist()
    assert seeds == list(range(sampling["num_samples"]))


def test_nothing_to_do_after_a_complete_run(ci_run):
    assert dry_run_jobs("--configfile", str(CI), "--config", f"results={ci_run}") == {}


def test_editing_one_parameter_reruns_exactly_its_jobs(ci_run, tmp_path):
    config = yaml.safe_load(CI.read_text())
    # Table 6's gamma=0.3 row -> 0.2: one new search per regime, nothing else. A dry run stops at
    # each search's first round (a checkpoint: what it proposes is only known once it ran).
    config["tables"]["table6"]["rows"][1]["sine_factor"] = 0.2
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(config, sort_keys=False))
    jobs = dry_run_jobs("--configfile", str(edited), "--config", f"results={ci_run}")
    regimes = len(config["regimes"])
    # the new finalist's sample and evaluate jobs appear once the search has run (a checkpoint)
    assert jobs == {"search_round": regimes, "search_result": regimes, "report": 1, "all": 1}

    # A training hyperparameter of the off-the-shelf classifier reruns everything it feeds.
    config = yaml.safe_load(CI.read_text())
    config["digits"]["models"]["offshelf"]["steps"] += 1
    edited.write_text(yaml.safe_dump(config, sort_keys=False))
    jobs = dry_run_jobs("--configfile", str(edited), "--config", f"results={ci_run}")
    assert jobs["train_model"] == 1 and "reference_features" not in jobs
    assert jobs["sample"] > 0 and jobs["calibrate"] > 0


def test_killed_sampling_job_loses_only_its_shard(ci_run, tmp_path):
    """Kill the job writing the second shard mid-way: the first survives untouched, nothing partial
    is left, and the rerun redoes only the killed shard, bitwise identical to an uninterrupted run.
    Snakemake picks which of two independent shards runs first, so the test follows its choice."""
    results = tmp_path / "results"
    (results / "ci").mkdir(parents=True)
    # the ci run's trained networks, copied (a link out of the results folder is refused: it is written there)
    shutil.copytree(ci_run / "ci" / "models", results / "ci" / "models")
    config = yaml.safe_load(CI.read_text())
    config["sampling"].update(num_samples=2048, shard_size=1024, batch_size=256, respacing="100")
    config["search"]["low_fidelity"] = 1024  # whole shards
    cfg = tmp_path / "kill.yaml"
    cfg.write_text(yaml.safe_dump(config))
    folder = results / "ci" / "samples" / "cond_unguided"
    targets = [str(folder / f"shard{i}.npz") for i in (0, 1)]
    common = ["--configfile", str(cfg), "--config", f"results={results}"]

    def finished():
        return [i for i in (0, 1) if (folder / f"shard{i}.npz").exists()]

    log = tmp_path / "killed_run.log"
    proc = subprocess.Popen([*SNAKEMAKE, *targets, "--cores", "1", *common], cwd=REPO,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 600

        def sampling_jobs():
            return [pid for pid in descendants(proc.pid) if "sample.py" in cmdline(pid)]

        started = None  # the first shard's job: how long a shard takes, start to file
        first_jobs: set[int] = set()  # its processes, which may linger after writing the file
        while not finished() and proc.poll() is None and time.time() < deadline:
            running = sampling_jobs()
            if started is None and running:
                started = time.time()
            first_jobs.update(running)
            time.sleep(0.1)
        assert finished() and started, f"no shard finished: {log.read_text()[-3000:]}"
        (first,) = finished()
        second = 1 - first
        duration = time.time() - started
        second_jobs: list[int] = []
        while not second_jobs and proc.poll() is None and time.time() < deadline:
            second_jobs = [pid for pid in sampling_jobs() if pid not in first_jobs]
            time.sleep(0.05)
        # the second shard is part-way: same size, same work as the first. Capped, because on a
        # loaded machine the first (cold caches) can take far longer than the second, which would
        # then finish unkilled; a job's interpreter and torch import alone take longer than the cap.
        time.sleep(min(duration / 2, 0.75))
        killed = []
        for pid in second_jobs + [p for p in sampling_jobs() if p not in first_jobs and p not in second_jobs]:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:  # a wrapper that already exited
                pass
        assert killed, f"no sampling process to kill: {log.read_text()[-3000:]}"
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert not (folder / f"shard{second}.npz").exists()
    first_mtime = (folder / f"shard{first}.npz").stat().st_mtime_ns

    jobs = dry_run_jobs(*targets, *common)  # targets first: --config takes every word after it
    assert jobs == {"sample": 1}
    snakemake(*targets, "--cores", "1", *common)
    assert (folder / f"shard{first}.npz").stat().st_mtime_ns == first_mtime
    assert sorted(p.name for p in folder.iterdir()) == ["shard0.npz", "shard1.npz"], "leftovers of the killed job"

    # bitwise: the killed shard alone in a fresh folder equals the resumed one
    fresh = tmp_path / "fresh"
    (fresh / "ci").mkdir(parents=True)
    shutil.copytree(ci_run / "ci" / "models", fresh / "ci" / "models")
    fresh_shard = fresh / "ci" / "samples" / "cond_unguided" / f"shard{second}.npz"
    snakemake(str(fresh_shard), "--cores", "1", "--configfile", str(cfg), "--config", f"results={fresh}")
    with np.load(folder / f"shard{second}.npz") as a, np.load(fresh_shard) as b:
        assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])


def test_html_report(ci_run, tmp_path):
    html = tmp_path / "report.html"
    snakemake("--configfile", str(CI), "--config", f"results={ci_run}", "--report", str(html))
    text = html.read_text(errors="replace")
    assert html.stat().st_size > 10_000 and "figure1.png" in text


def test_offshelf_sample_writes_the_workflows_shard(ci_run, tmp_path):
    """`offshelf sample` and the workflow's sample job call the same functions: same setting and
    seeds give the same images, labels and seeds (only the wall-clock seconds differ)."""
    import sys
    from pathlib import Path

    name = "cond_offshelf-x0_sp3_tj1_tm0.5_g0.3_s2_r1"
    shard_size = yaml.safe_load(CI.read_text())["sampling"]["shard_size"]  # the seeds of the workflow's shard 0
    out = tmp_path / "shard.npz"
    proc = subprocess.run([str(Path(sys.executable).with_name("offshelf")), "sample", "--config", str(CI),
                           "--results", str(ci_run), "--seeds", f"0:{shard_size}", "--out", str(out), "--setting",
                           "regime=cond,softplus_beta=3,marginal_temperature=0.5,sine_factor=0.3,scale=2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert name in proc.stdout
    with np.load(out) as mine, np.load(ci_run / "ci" / "samples" / name / "shard0.npz") as workflow:
        for key in ("arr_0", "arr_1", "seeds"):
            assert np.array_equal(mine[key], workflow[key]), key
    assert out.with_suffix(".png").stat().st_size > 500
