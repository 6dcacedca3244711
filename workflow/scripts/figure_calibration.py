import pandas as pd

from offshelf.jobs import job_log
from offshelf.figures import calibration_curves

with job_log(snakemake.log[0]):
    tables = {probe: pd.read_csv(path) for probe, path in zip(snakemake.params.probes, snakemake.input)}
    title = {"figure1": "ECE along the reverse process by classifier (Fig. 1)",
             "figure2": "ECE along the reverse process: ReLU vs Softplus (Fig. 2)"}[snakemake.wildcards.figure]
    calibration_curves(tables, snakemake.output[0], title)
