from offshelf.warm import hand_off

hand_off()  # from here on this script runs in a warm fork that has torch imported, or here, cold (offshelf.warm)

from pathlib import Path

from offshelf import backends
from offshelf.backends.capabilities import Capability
from offshelf.jobs import job_log
from offshelf.pareto import write_pareto_report
from offshelf.report import searched_files

with job_log(snakemake.log[0]):
    p, inputs = snakemake.params, snakemake.input
    backend = backends.create(p.backend)
    counts = Capability.COST in backend.capabilities  # declared, not found out by calling

    def work_of(setting):
        return backend.work_per_sample(setting, p.sampling) if counts else {}

    # a searched row's chosen scale: its metrics and features, named by its search's result (report.py does the same)
    experiment_folder = Path(snakemake.output.report).parents[1]
    searched = [searched_files(experiment_folder, f) for f in inputs.search]
    write_pareto_report(p.plan, list(inputs.metrics) + [f for r in searched for f in r["metrics_file"]],
                        list(inputs.features) + [f for r in searched for f in r["features_file"]],
                        list(inputs.search), work_of, snakemake.output.report, snakemake.output.figure,
                        command="snakemake pareto")
