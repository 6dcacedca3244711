from offshelf.warm import hand_off

hand_off()  # from here on this script runs in a warm fork that has torch imported, or here, cold (offshelf.warm)

from offshelf import backends, stages
from offshelf.atomic import save_npz
from offshelf.jobs import job_log

with job_log(snakemake.log[0], snakemake.threads, snakemake.resources.get("gpu", 0)):
    p = snakemake.params
    backend = backends.create(p.backend)
    files = stages.judge_files(backend, snakemake.input, p.checkpoints)
    ref = stages.reference_features(backend, files, p.evaluation)
    print(f"reference features: {ref['features'].shape}")
    save_npz(snakemake.output[0], **ref)
