from offshelf.backbones import digits
from offshelf.jobs import job_log

with job_log(snakemake.log[0], snakemake.threads):
    config = digits.TrainConfig(role=snakemake.wildcards.role, **snakemake.params.train)
    model, metrics = digits.train(config, progress=True)
    print(f"{config.role}: {metrics}")
    digits.save_checkpoint(model, config, metrics, snakemake.output[0])
