"""What share of a workflow run's job CPU time goes to starting jobs rather than to their work,
read from the run's own job logs.

    python benchmarks/job_startup.py RESULTS/logs [--markdown]

Every workflow job's log ends with the line ``offshelf.jobs.job_log`` writes when the job leaves it:

    [offshelf] job CPU: start-up 0.080 s, work 0.100 s (warm)

start-up: the CPU seconds the job spent before its work began. A cold job counts its whole
process up to then (a fresh interpreter, Snakemake's preamble, the imports: torch's above all).
A warm job (``offshelf.warm``) counts what its job process spent to hand the script off, plus, for
the first job a warm server serves, that server's own imports. work: the CPU seconds inside the
job's ``job_log`` block. Jobs are grouped by the folder of their log (the rule: ``sample``,
``search``, ``calibrate``...). Measure on the machine that ran the workflow; the numbers are CPU
seconds, so load changes them less than wall time.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

LINE = re.compile(r"^\[offshelf\] job CPU: start-up ([\d.]+) s, work ([\d.]+) s \((warm|cold)\)$", re.M)


def job_costs(logs: Path) -> list[tuple[str, float, float, str]]:
    """(kind, start-up s, work s, warm|cold) per job log under ``logs`` that has the line; a log holding
    several runs of its job (a rerun appends) counts its last."""
    jobs = []
    for log in sorted(logs.rglob("*.log")):
        found = LINE.findall(log.read_text(errors="replace"))
        if not found:
            continue
        startup, work, kind = found[-1]
        parts = log.relative_to(logs).parts
        # logs/<experiment>/<rule folder>/...; a search's rounds and its result are told apart
        group = parts[1] if len(parts) > 2 else log.stem
        if group == "search":
            group = "search round" if log.stem.startswith("round") else "search result"
        jobs.append((group, float(startup), float(work), kind))
    return jobs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", type=Path, help="the run's logs folder (<results>/logs)")
    args = parser.parse_args()
    jobs = job_costs(args.logs)
    if not jobs:
        print(f"{args.logs}: no job log with a '[offshelf] job CPU:' line", file=sys.stderr)
        return 1
    groups = defaultdict(list)
    for group, startup, work, kind in jobs:
        groups[group].append((startup, work, kind))
    print("| job kind | jobs | warm | start-up CPU s (mean) | work CPU s (mean) |\n|---|---:|---:|---:|---:|")
    for group, rows in sorted(groups.items()):
        n = len(rows)
        print(f"| {group} | {n} | {sum(k == 'warm' for *_, k in rows)} | {sum(r[0] for r in rows) / n:.3f} | "
              f"{sum(r[1] for r in rows) / n:.3f} |")
    startup, work = sum(j[1] for j in jobs), sum(j[2] for j in jobs)
    warm = sum(j[3] == "warm" for j in jobs)
    print(f"\n{len(jobs)} jobs ({warm} warm): start-up {startup:.1f} s of {startup + work:.1f} s job CPU = "
          f"{100 * startup / (startup + work):.0f}% (work {work:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
