# offshelf: off-the-shelf classifier guidance, reproduced end to end.
#   snakemake --cores all                                          # digits benchmark (config.yaml)
#   snakemake --cores all --configfile config/ci.yaml              # tiny, for tests
#   snakemake --profile profiles/slurm-gpu --configfile config/imagenet128_ddpm.yaml   # Tables 1-7
#   (config/imagenet64_edm.yaml: Table 8; config/imagenet256_dit.yaml: Table 9)
# Rules are thin and never name a backbone: the config's `backbone` picks a backend
# (offshelf.backends), which says what each job needs; the logic lives in the `offshelf` package.
import offshelf
from offshelf import backends
from offshelf.config import validate_config
import re

from offshelf.plan import (all_evaluations, all_probes, all_settings, cache_dir, canonical, num_shards,
                           pretrained_path, sampling_params, shard_seeds)
from offshelf.settings import Setting, probe_setting

# config.yaml is the base of digits configs (a --configfile overrides its keys); any other
# --configfile replaces it, since they share none of its digits sections and tables.
if config.get("backbone", "digits") == "digits":
    configfile: "config.yaml"

validate_config(config)  # a typo or an invalid value stops here, naming the key

EXP = f"{config['results']}/{config['experiment']}"
LOGS = f"{config['results']}/logs/{config['experiment']}"
BACKEND_SPEC = canonical(backends.spec_from_config(config))  # a param of every job that loads networks
BACKEND = backends.create(BACKEND_SPEC)
SETTINGS = all_settings(config)
EVALUATIONS = all_evaluations(config)  # metrics file stem -> (setting name, number of samples)
PROBES = all_probes(config)
LIBRARY = offshelf.__version__  # a param of every job: a library release reruns them
THREADS = config.get("threads_per_job", 1)
CHECKPOINTS = canonical(config.get("checkpoints", {}))
# Used with `--sdm conda`: the same pinned requirements the Makefile installs.
CONDA_ENV = f"{workflow.basedir}/envs/offshelf.yaml"

wildcard_constraints:
    setting="[A-Za-z0-9_.+-]+",
    probe="[A-Za-z0-9_.+-]+",
    shard=r"\d+",

include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/calibration.smk"
include: "workflow/rules/sampling.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/text2image.smk"

rule all:
    input:
        f"{EXP}/report/README.md",
    default_target: True
