from offshelf.warm import hand_off

hand_off()  # from here on this script runs in a warm fork that has torch imported, or here, cold (offshelf.warm)

from offshelf.jobs import job_log
from offshelf.text2image import diffusion_checkpoint, load_config, run_config

with job_log(snakemake.log[0], snakemake.threads, snakemake.resources.get("gpu", 0)):
    cfg = load_config(snakemake.input.config)
    # not placed by hand: the verified registry copy, from the workflow's checkpoint cache/registry
    cfg["diffusion"]["checkpoint"] = diffusion_checkpoint(cfg, snakemake.params.checkpoints, snakemake.input.config)
    run_config(cfg, outdir=snakemake.output[0])
