"""What share of a workflow run's job CPU time goes to starting jobs (a fresh interpreter, Snakemake's
script preamble, the script's imports: torch's above all) rather than to their work.

    python benchmarks/job_startup.py SNAKEMAKE_LOG JOB_CPU_SECONDS [--repeats 5]

SNAKEMAKE_LOG: what a run printed (the ci_run fixture keeps it as <results>/snakemake.log); the jobs
are read from its `rule NAME:` / `checkpoint NAME:` lines. JOB_CPU_SECONDS: the jobs' CPU time, user +
system (e.g. a `/usr/bin/time` of the run less the Snakemake process's own utime + stime, read from
/proc/PID/stat while it ran). Each rule's start-up is measured here, in fresh interpreters that do
only what its job does before any work: the preamble's imports and the script's top-level imports
and what it imports inside its work before doing any (INNER_IMPORTS: a search round after round 0
imports the backend it draws and judges with, a training job torch).
Measure on the machine that ran the workflow, under the same load: both numbers are CPU seconds.
"""

from __future__ import annotations

import argparse
import ast
import re
import resource
import subprocess
import sys
from collections import Counter
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "workflow" / "scripts"
PREAMBLE = "import pickle\nfrom snakemake import script\nimport snakemake.io\n"
# imports a job makes inside its work, before any: a search round that draws and judges (every round
# but 0; search_round.py), a training job (every trained backend trains with torch)
ROUND_DRAWS = "from offshelf import backends, stages\nfrom offshelf.settings import Setting\nfrom offshelf.shards import seed_list\n"
INNER_IMPORTS = {"search_round (draws)": ROUND_DRAWS, "train_model": "import torch\n"}
SCRIPT_OF_RULE = {"calibrate_guided": "calibrate", "figure_calibration": "figure_calibration",
                  "figure_analytic": "figure_analytic", "figure_gradients": "figure_gradients"}


def top_level_imports(script: Path) -> str:
    tree = ast.parse(script.read_text())
    return "\n".join(ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))


def startup_cpu(code: str, repeats: int) -> tuple[float, bool]:
    """Mean user + system CPU seconds of a fresh interpreter running ``code``, and whether it imports torch."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    torch = False
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint('torch' in sys.modules)"],
                             capture_output=True, text=True, check=True).stdout
        torch = out.strip().endswith("True")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / repeats, torch


def jobs_of_log(log: str) -> Counter:
    """Job kind -> count: the rule, and `search_round (draws)` for rounds after round 0."""
    kinds = Counter()
    for m in re.finditer(r"^(?:local)?(?:rule|checkpoint) (\w+):\n(?:    .*\n)*?    wildcards: (.*)$|"
                         r"^(?:local)?(?:rule|checkpoint) (\w+):$", log, flags=re.M):
        rule = m.group(1) or m.group(3)
        wildcards = m.group(2) or ""
        drawn = rule == "search_round" and not re.search(r"\bround=0\b", wildcards)
        kinds[f"{rule} (draws)" if drawn else rule] += 1
    return kinds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("job_cpu_seconds", type=float)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    kinds = jobs_of_log(args.log.read_text())
    total_startup, torch_jobs = 0.0, 0
    print("| job kind | jobs | start-up CPU s each | imports torch |\n|---|---|---|---|")
    for kind, n in sorted(kinds.items()):
        rule = kind.split(" ")[0]
        if rule == "all":  # no process: Snakemake's own target
            continue
        script = SCRIPTS / f"{SCRIPT_OF_RULE.get(rule, rule)}.py"
        code = PREAMBLE + top_level_imports(script) + "\n" + INNER_IMPORTS.get(kind, "")
        each, torch = startup_cpu(code, args.repeats)
        total_startup += n * each
        torch_jobs += n if torch else 0
        print(f"| {kind} | {n} | {each:.2f} | {'yes' if torch else 'no'} |")
    jobs = sum(n for kind, n in kinds.items() if kind != "all")
    print(f"{jobs} job processes ({torch_jobs} import torch): start-up {total_startup:.0f} s of "
          f"{args.job_cpu_seconds:.0f} s job CPU = {100 * total_startup / args.job_cpu_seconds:.0f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
