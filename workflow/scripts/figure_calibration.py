from offshelf.warm import hand_off

hand_off()  # from here on this script runs in a warm fork that has torch imported, or here, cold (offshelf.warm)

import pandas as pd

from offshelf.jobs import job_log
from offshelf.figures import calibration_curves

with job_log(snakemake.log[0]):
    probes = snakemake.params.probes
    # one panel per input list (unguided; guided per regime when calibration.trajectories has it)
    panels = {title: {probe: pd.read_csv(path) for probe, path in zip(probes, snakemake.input[name])}
              for name, title in snakemake.params.panels.items()}
    title = {"figure1": "ECE along the reverse process by classifier (Fig. 1)",
             "figure2": "ECE along the reverse process: ReLU vs Softplus (Fig. 2)"}[snakemake.wildcards.figure]
    calibration_curves(panels, snakemake.output[0], title)
