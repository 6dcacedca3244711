from offshelf.warm import hand_off

hand_off()  # from here on this script runs in a warm fork that has torch imported, or here, cold (offshelf.warm)

from offshelf.config import load_text2image_diffusers_config
from offshelf.integrations.clip_schedules import run_config
from offshelf.jobs import job_log

with job_log(snakemake.log[0], snakemake.threads, snakemake.resources.get("gpu", 0)):
    run_config(load_text2image_diffusers_config(snakemake.input.config), outdir=snakemake.output[0])
