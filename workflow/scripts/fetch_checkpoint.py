import logging

from offshelf.checkpoints import fetch
from offshelf.jobs import job_log

with job_log(snakemake.log[0]):
    logging.basicConfig(level=logging.INFO)
    p = snakemake.params
    path = fetch(p.name, cache_dir=p.cache, lock_file=p.lock, offline=bool(p.offline), registry_file=p.registry)
    print(f"{p.name}: {path}")
