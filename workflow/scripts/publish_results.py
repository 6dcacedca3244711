from offshelf.jobs import job_log
from offshelf.results_doc import publish

with job_log(snakemake.log[0]):
    inputs = snakemake.input
    page = publish(inputs.report, snakemake.output.page, inputs.get("pareto"))
    print(f"{', '.join(inputs)} -> {page} (between its markers)")
