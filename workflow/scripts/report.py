from offshelf.warm import hand_off

hand_off()  # from here on this script runs in a warm fork that has torch imported, or here, cold (offshelf.warm)

from pathlib import Path

from offshelf.jobs import job_log
from offshelf.report import searched_files, write_report

with job_log(snakemake.log[0]):
    inputs = snakemake.input
    # each guidance-scale search's result names the metrics, features and grids of the scale its rows
    # report, relative to the experiment folder: this report's own (<exp>/report/README.md), never
    # the folder a copied results folder came from. They are inputs of the search_result job whose
    # result.json is an input here, so they exist and are current.
    experiment_folder = Path(snakemake.output.report).parents[1]
    searched = [searched_files(experiment_folder, p) for p in inputs.search]
    write_report(snakemake.params.plan, list(inputs.metrics) + [f for r in searched for f in r["metrics_file"]],
                 list(inputs.calibration), list(inputs.figures), snakemake.output.report, snakemake.params.experiment,
                 list(inputs.models), comparable=snakemake.params.comparable,
                 feature_files=list(inputs.features) + [f for r in searched for f in r["features_file"]],
                 search_files=list(inputs.search), grid_files=list(inputs.grids) + [g for r in searched for g in r.get("grid_files", [])],
                 samples_dir=snakemake.output.get("samples"))
