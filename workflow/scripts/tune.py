from offshelf.warm import hand_off

hand_off()  # from here on this script runs in a warm fork that has torch imported, or here, cold (offshelf.warm)

from pathlib import Path

import numpy as np

from offshelf import backends, stages
from offshelf.jobs import job_log
from offshelf.settings import Setting
from offshelf.tuning import TuneSpec, run_tune

with job_log(snakemake.log[0], snakemake.threads, snakemake.resources.get("gpu", 0)):
    p = snakemake.params
    backend = backends.create(p.backend)
    spec = TuneSpec.from_config(p.tune)
    setting = Setting(regime=spec.regime, classifier=spec.classifier, input=spec.input, network=spec.network)
    guiding = {role: snakemake.input[role] for role in p.guiding_roles}
    judging = stages.verified_files({role: snakemake.input[role] for role in p.judging_roles},
                                    backend.evaluation_files(), p.checkpoints)
    reference = None
    if "reference_features" in snakemake.input.keys():
        with np.load(snakemake.input.reference_features) as ref:
            reference = {k: ref[k] for k in ref.files}
    models = stages.load_models(backend, guiding, p.sampling, setting, p.checkpoints)
    summary = run_tune(backend, models, spec, Path(snakemake.output.tuned_yaml).parent, guiding, judging,
                       p.evaluation, p.sampling, p.sampling["batch_size"], reference_features=reference)
    print(f"{summary['base']}: {summary['setting']} (judged by {summary['judge']})")
