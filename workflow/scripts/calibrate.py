from offshelf.experiment import calibration_profile, load_workflow_models, save_csv
from offshelf.jobs import job_log
from offshelf.calibration import integral_calibration_error
from offshelf.settings import probe_setting

with job_log(snakemake.log[0], snakemake.threads, snakemake.resources.get("gpu", 0)):
    p = snakemake.params
    sampling, calibration = p.sampling, p.calibration
    models = load_workflow_models(dict(snakemake.input), sampling, p.get("backbone", "digits"), p.get("imagenet"),
                                  p.get("checkpoints"))
    # Calibration seeds sit far from sampling seeds: independent trajectories.
    seeds = list(range(10_000_000, 10_000_000 + calibration["num_samples"]))
    table = calibration_profile(probe_setting(snakemake.wildcards.probe), models, seeds,
                                sampling["batch_size"], calibration.get("num_bins", 15))
    print(f"{snakemake.wildcards.probe}: integral calibration error {integral_calibration_error(table):.4f}")
    save_csv(snakemake.output[0], table)
