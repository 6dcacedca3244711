from offshelf.warm import hand_off

hand_off()  # from here on this script runs in a warm fork that has torch imported, or here, cold (offshelf.warm)

from offshelf import backends, stages
from offshelf.atomic import save_csv
from offshelf.calibration import integral_calibration_error
from offshelf.jobs import job_log
from offshelf.levers import job_compile_seconds
from offshelf.settings import Setting, probe_setting

with job_log(snakemake.log[0], snakemake.threads, snakemake.resources.get("gpu", 0)):
    p = snakemake.params
    backend = backends.create(p.backend)
    # rule calibrate_guided names a guided setting (its own trajectories), rule calibrate a probe
    guided = "setting" in snakemake.wildcards.keys()
    probe = Setting.from_dict(p.setting) if guided else probe_setting(snakemake.wildcards.probe)
    models = stages.load_models(backend, dict(snakemake.input), p.sampling, probe, p.checkpoints)
    table = stages.calibration_profile(backend, models, probe, p.calibration, p.sampling["batch_size"], guided=guided)
    name = probe.name if guided else snakemake.wildcards.probe
    print(f"{name}: integral calibration error {integral_calibration_error(table):.4f}"
          + (" (guided trajectories)" if guided else "") + f"; compile {job_compile_seconds(models):.1f} s")
    save_csv(snakemake.output[0], table)
