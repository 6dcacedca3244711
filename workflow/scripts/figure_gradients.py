from offshelf.experiment import gradient_trajectories, load_workflow_models
from offshelf.jobs import job_log
from offshelf.figures import gradient_panels
from offshelf.settings import Setting

with job_log(snakemake.log[0], snakemake.threads, snakemake.resources.get("gpu", 0)):
    sampling, figure = snakemake.params.sampling, snakemake.params.figure
    models = load_workflow_models(dict(snakemake.input), sampling, snakemake.params.get("backbone", "digits"),
                                  snakemake.params.get("imagenet"), snakemake.params.get("checkpoints"))
    base = Setting(regime="uncond", classifier="offshelf", input="x0", softplus_beta=3.0, sine_factor=0.3,
                   scale=figure.get("scale", 3.0))
    temperatures = {"cond. τ2=1": 1.0,
                    f"joint τ2={figure['joint_marginal_temperature']:g}": figure["joint_marginal_temperature"]}
    panels = gradient_trajectories(models, base, temperatures, figure["label"], figure["steps"])
    gradient_panels(panels, figure["steps"], snakemake.output[0])
