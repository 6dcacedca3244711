from offshelf.warm import hand_off

hand_off()  # from here on this script runs in a warm fork that has torch imported, or here, cold (offshelf.warm)

from offshelf import backends
from offshelf.jobs import job_log

with job_log(snakemake.log[0], snakemake.threads):
    backend = backends.create({"name": snakemake.params.backend})  # training depends on its params alone
    metrics = backend.train(snakemake.wildcards.role, snakemake.params.train, snakemake.output[0], progress=True)
    print(f"{snakemake.wildcards.role}: {metrics}")
