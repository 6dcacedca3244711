"""Dry-run time of the workflow once every guidance-scale search has its rounds on disk.

A searched setting's parameters are read from the round that proposed it, so the workflow's
input functions read the rounds (offshelf.planning.searches.read_rounds) for every job that
samples or evaluates a searched scale. This writes each search's rounds into a scratch results
folder, made by the function the search_round jobs call (search_round_record) from a synthetic
FID, unimodal in log(scale) with its optimum at 4, with placeholders, older than the rounds, for
what the rounds read (the outputs of the rules in UPSTREAM: the trained networks, the reference
features), so Snakemake takes the rounds as made and plans the jobs of the scales they propose;
then times `snakemake -n` against that folder. Nothing it writes is a real result.

    .venv/bin/python benchmarks/dry_run_rounds.py --config config/ci.yaml --results /tmp/dry_rounds
"""

from __future__ import annotations

import argparse
import math
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from offshelf.atomic import save_json
from offshelf.config import read_config, validated_plan
from offshelf.planning.searches import search_round_record

REPO = Path(__file__).resolve().parents[1]
#: rules whose outputs the rounds read: placeholders stand in for them
UPSTREAM = ("train_model", "reference_features", "fetch_checkpoint")


def synthetic_fid(scale: float) -> float:
    return 0.3 + (math.log(scale) - math.log(4.0)) ** 2


def write_rounds(config: dict, results: Path) -> int:
    """Every search's rounds up to its final one, as the workflow's search_round jobs write them;
    returns how many files."""
    folder = results / config["experiment"] / "search"
    written = 0
    for name, plan in validated_plan(config).searches.items():
        record, metrics = search_round_record(plan, None, {}), {}
        while True:
            save_json(folder / name / f"round{record['round']}.json", record)
            written += 1
            for (scale, _), evaluation in zip(record["proposals"], record["evaluations"]):
                metrics[evaluation] = {"fid": synthetic_fid(scale)}
            if record["final"]:
                break
            record = search_round_record(plan, record, metrics)
    return written


def write_placeholders(command: list[str], results: Path) -> int:
    """Empty files, a day older than the rounds, for the outputs under ``results`` of the UPSTREAM
    rules the dry run ``command`` plans; returns how many."""
    plan = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True).stdout
    outputs, rule = [], None
    for line in plan.splitlines():
        if m := re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):$", line):
            rule = m.group(1)
        elif rule in UPSTREAM and (m := re.match(r"^\s+output: (.*)$", line)):
            outputs += [Path(p.strip()) for p in m.group(1).split(",")]
    day_ago = time.time() - 86_400
    made = [p for p in outputs if p.is_relative_to(results) and not p.exists()]
    for path in made:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"benchmarks/dry_run_rounds.py placeholder: {path}\n")  # distinct: the workflow refuses identical networks
        os.utime(path, (day_ago, day_ago))
    return len(made)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/ci.yaml")
    parser.add_argument("--results", required=True, help="a scratch results folder (made, never the real one)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = Path(args.results).resolve()
    if results.exists() and any(results.iterdir()):
        sys.exit(f"--results {results}: not empty; give a scratch folder")
    config = dict(read_config(REPO / args.config), results=str(results))
    # --rerun-triggers mtime: the placeholders have no metadata, which the other triggers would rerun
    command = [sys.executable, "-m", "snakemake", "-n", "--rerun-triggers", "mtime", "--configfile", args.config,
               "--config", f"results={results}"]
    rounds = write_rounds(config, results)
    placeholders = write_placeholders(command, results)
    jobs = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True).stdout
    total = re.search(r"^total\s+(\d+)$", jobs, re.M)
    print(f"{rounds} round files, {placeholders} placeholders; the dry run plans {total.group(1) if total else '?'} jobs")
    wall, cpu = [], []  # CPU seconds too: on a busy machine the wall time is mostly waiting for a core
    for _ in range(args.repeats):
        before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, capture_output=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall.append(time.perf_counter() - start)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    print(f"{args.config}: snakemake -n wall " + ", ".join(f"{s:.1f}" for s in wall)
          + f" s (min {min(wall):.1f} s); CPU (user + sys) " + ", ".join(f"{s:.2f}" for s in cpu)
          + f" s (min {min(cpu):.2f} s)")


if __name__ == "__main__":
    main()
