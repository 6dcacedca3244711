from offshelf.jobs import job_log
from offshelf.report import write_report

with job_log(snakemake.log[0]):
    inputs = snakemake.input
    # searched_*: the metrics and features of the guidance-scale searches' finalists (search.smk)
    write_report(snakemake.params.plan, list(inputs.metrics) + list(inputs.searched_metrics), list(inputs.calibration),
                 list(inputs.figures), snakemake.output.report, snakemake.params.experiment,
                 list(inputs.models), comparable=snakemake.params.comparable,
                 feature_files=list(inputs.features) + list(inputs.searched_features),
                 search_files=list(inputs.search))
