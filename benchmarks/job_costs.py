"""Where a workflow run's time went: jobs, core-seconds and per-job seconds by rule, from the log
Snakemake writes for every run (.snakemake/log/<start time>.snakemake.log).

A job's seconds are those between its start and its "Finished job" line, so they include its
process start (Python, torch) as well as its work. With --cores N, N times the wall time is the
capacity the jobs shared: `busy` says how much of it they used.

    .venv/bin/python benchmarks/job_costs.py .snakemake/log/<the make run's log>
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from datetime import datetime

TIMESTAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]$")
JOB_START = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")
JOB_ID = re.compile(r"^\s+jobid: (\d+)$")
JOB_END = re.compile(r"^Finished job(?:id:)? (\d+)")


def job_spans(lines):
    """{job id: (rule, start, end)} of the jobs that finished, in the log's own clock."""
    now = rule = None
    started, spans = {}, {}
    for line in lines:
        if m := TIMESTAMP.match(line):
            now = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        elif m := JOB_START.match(line):
            rule = m.group(1)
        elif (m := JOB_ID.match(line)) and rule:
            started[m.group(1)] = (rule, now)
            rule = None
        elif (m := JOB_END.match(line)) and m.group(1) in started:
            job_rule, start = started[m.group(1)]
            spans[m.group(1)] = (job_rule, start, now)
    return spans


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", help="a .snakemake/log/*.snakemake.log file")
    parser.add_argument("--cores", type=int, default=2, help="the run's --cores (capacity = cores x wall)")
    args = parser.parse_args(argv)
    with open(args.log) as f:
        spans = job_spans(f.read().splitlines())
    if not spans:
        raise SystemExit(f"{args.log}: no finished job found (is it a Snakemake run's log?)")
    by_rule = defaultdict(list)
    for rule, start, end in spans.values():
        by_rule[rule].append((end - start).total_seconds())
    wall = (max(e for _, _, e in spans.values()) - min(s for _, s, _ in spans.values())).total_seconds()
    total = sum(sum(v) for v in by_rule.values())
    print(f"{len(spans)} jobs, wall {wall:.0f} s ({wall / 60:.1f} min), job-seconds {total:.0f} "
          f"(busy {total / (args.cores * wall):.0%} of {args.cores} cores)\n")
    print("| rule | jobs | job-seconds | share | seconds per job |")
    print("|---|---:|---:|---:|---:|")
    for rule, seconds in sorted(by_rule.items(), key=lambda kv: -sum(kv[1])):
        print(f"| {rule} | {len(seconds)} | {sum(seconds):.0f} | {sum(seconds) / total:.0%} | "
              f"{sum(seconds) / len(seconds):.1f} |")


if __name__ == "__main__":
    main()
