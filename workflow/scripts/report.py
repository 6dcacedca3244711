from offshelf.jobs import job_log
from offshelf.report import write_report

with job_log(snakemake.log[0]):
    inputs = snakemake.input
    # the metrics and features of the scales the guidance-scale searches chose (none without `search`)
    searched = {k: list(inputs[k]) if k in inputs.keys() else [] for k in ("searched_metrics", "searched_features")}
    write_report(snakemake.params.plan, list(inputs.metrics) + searched["searched_metrics"], list(inputs.calibration),
                 list(inputs.figures), snakemake.output.report, snakemake.params.experiment,
                 list(inputs.models), comparable=snakemake.params.comparable,
                 feature_files=list(inputs.features) + searched["searched_features"],
                 search_files=list(inputs.search))
