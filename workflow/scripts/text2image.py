from pathlib import Path

from offshelf.checkpoints import fetch
from offshelf.jobs import job_log
from offshelf.text2image import load_config, run_config

with job_log(snakemake.log[0], snakemake.threads, snakemake.resources.get("gpu", 0)):
    cfg = load_config(snakemake.input.config)
    diffusion = cfg["diffusion"]
    if not Path(diffusion["checkpoint"]).is_file():  # not placed by hand: the verified registry copy
        diffusion["checkpoint"] = str(fetch(diffusion["preset"]))
    run_config(cfg, outdir=snakemake.output[0])
