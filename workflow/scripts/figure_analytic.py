from offshelf.warm import hand_off

hand_off()  # from here on this script runs in a warm fork that has torch imported, or here, cold (offshelf.warm)

from offshelf.diffusion import GaussianDiffusion
from offshelf.jobs import job_log
from offshelf.figures import gaussian_mixture_directions, guidance_schedules

with job_log(snakemake.log[0]):
    gaussian_mixture_directions(snakemake.output.figure3)
    diffusion = GaussianDiffusion.respaced(1000, snakemake.params.sampling["respacing"], "linear", "fixed_large")
    guidance_schedules(diffusion.betas, snakemake.params.sine_factors, snakemake.output.figure5)
