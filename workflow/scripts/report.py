import json
from pathlib import Path

from offshelf.jobs import job_log
from offshelf.report import write_report

with job_log(snakemake.log[0]):
    inputs = snakemake.input
    # each guidance-scale search's result names the metrics and features of the scale its rows report
    searched = [json.loads(Path(p).read_text()) for p in inputs.search]
    write_report(snakemake.params.plan, list(inputs.metrics) + [r["metrics_file"] for r in searched],
                 list(inputs.calibration), list(inputs.figures), snakemake.output.report, snakemake.params.experiment,
                 list(inputs.models), comparable=snakemake.params.comparable,
                 feature_files=list(inputs.features) + [r["features_file"] for r in searched],
                 search_files=list(inputs.search), grid_files=list(inputs.grids) + [g for r in searched for g in r.get("grid_files", [])],
                 samples_dir=snakemake.output.get("samples"))
