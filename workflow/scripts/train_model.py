from offshelf import backends
from offshelf.jobs import job_log

with job_log(snakemake.log[0], snakemake.threads):
    backend = backends.create({"name": snakemake.params.backend})  # training depends on its params alone
    metrics = backend.train(snakemake.wildcards.role, snakemake.params.train, snakemake.output[0], progress=True)
    print(f"{snakemake.wildcards.role}: {metrics}")
