from offshelf.warm import hand_off

hand_off()  # from here on this script runs in a warm fork that has torch imported, or here, cold (offshelf.warm)

from pathlib import Path

from offshelf.grids import GridSources, shards_by_setting
from offshelf.jobs import job_log
from offshelf.report import searched_files, write_report
from offshelf.shards import ShardFormat

with job_log(snakemake.log[0]):
    inputs = snakemake.input
    # each guidance-scale search's result names the metrics, features and grid shards of the scale its rows
    # report, relative to the experiment folder: this report's own (<exp>/report/README.md), never
    # the folder a copied results folder came from. They are inputs of the search_result job whose
    # result.json is an input here, so they exist and are current.
    experiment_folder = Path(snakemake.output.report).parents[1]
    searched = [searched_files(experiment_folder, p) for p in inputs.search]
    p = snakemake.params
    grids = None
    if "samples" in snakemake.output.keys():
        shards = list(inputs.grid_shards) + [s for r in searched for s in r.get("grid_shards", [])]
        grids = GridSources(ShardFormat.from_param(p.shard_format), shards_by_setting(shards), p.grid_seeds, p.grids)
    write_report(p.plan, list(inputs.metrics) + [f for r in searched for f in r["metrics_file"]],
                 list(inputs.calibration), list(inputs.figures), snakemake.output.report, p.experiment,
                 list(inputs.models), comparable=p.comparable,
                 feature_files=list(inputs.features) + [f for r in searched for f in r["features_file"]],
                 search_files=list(inputs.search), grids=grids, samples_dir=snakemake.output.get("samples"))
