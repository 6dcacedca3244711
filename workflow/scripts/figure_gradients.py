from offshelf.warm import hand_off

hand_off()  # from here on this script runs in a warm fork that has torch imported, or here, cold (offshelf.warm)

from dataclasses import replace

from offshelf import backends, stages
from offshelf.figures import gradient_panels
from offshelf.jobs import job_log
from offshelf.settings import Setting

with job_log(snakemake.log[0], snakemake.threads, snakemake.resources.get("gpu", 0)):
    p = snakemake.params
    backend = backends.create(p.backend)
    base = replace(Setting.from_dict(p.setting), scale=p.figure.get("scale", 3.0))
    models = stages.load_models(backend, dict(snakemake.input), p.sampling, base, p.checkpoints)
    tau2 = p.figure["joint_marginal_temperature"]
    temperatures = {"cond. τ2=1": 1.0, f"joint τ2={tau2:g}": tau2}
    panels = backend.gradient_trajectories(models, base, temperatures, p.figure["label"], p.figure["steps"])
    gradient_panels(panels, p.figure["steps"], snakemake.output[0])
