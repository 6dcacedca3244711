from offshelf.jobs import job_log
from offshelf.results_doc import publish

with job_log(snakemake.log[0]):
    print(f"{snakemake.input.report} -> {publish(snakemake.input.report, snakemake.output.page)} (between its markers)")
