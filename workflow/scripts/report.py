from offshelf.jobs import job_log
from offshelf.report import write_report

with job_log(snakemake.log[0]):
    write_report(snakemake.params.plan, list(snakemake.input.metrics), list(snakemake.input.calibration),
                 list(snakemake.input.figures), snakemake.output.report, snakemake.params.experiment,
                 list(snakemake.input.models), comparable=snakemake.params.comparable,
                 feature_files=list(snakemake.input.features), grid_files=list(snakemake.input.grids),
                 samples_dir=snakemake.output.get("samples"))
