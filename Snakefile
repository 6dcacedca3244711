# offshelf: off-the-shelf classifier guidance, reproduced end to end.
#   snakemake --cores all                                          # digits benchmark (config.yaml)
#   snakemake --cores all --configfile config/ci.yaml              # tiny, for tests
#   snakemake --cores all tune                                     # offshelf tune: the config's `tune` section
#   snakemake --cores all pareto                                   # FID against compute: the config's `pareto` table
#                                                                  # (in `all` where the config says pareto_in_all: true)
#   snakemake --cores all text2image_diffusers                     # Figure 7 on a diffusers pipeline (docs/diffusers.md)
#   snakemake --profile profiles/slurm-gpu --configfile config/imagenet128_ddpm.yaml   # Tables 1-7
#   (config/imagenet64_edm.yaml: Table 8; config/imagenet256_dit.yaml: Table 9)
# Rules are thin and never name a backbone: the config's `backbone` picks a backend
# (offshelf.backends), which says what each job needs; the logic lives in the `offshelf` package.
import sys

import offshelf
from offshelf import backends
from offshelf.config import ConfigError, merge, read_config, validated_plan, workflow_config_file
from offshelf.devices import gpus_per_job
from offshelf.planning.costs import describe_job_counts
from offshelf.planning.plan import pareto_config
from offshelf.planning.params import (cache_dir, canonical, num_shards, pareto_in_all, pretrained_path, sampling_params,
                                      shard_seeds)
from offshelf.planning.searches import read_rounds
from offshelf.settings import Setting, probe_setting

# The config is ONE file, read by offshelf.config.read_config exactly as `offshelf plan` and
# `offshelf check-config` read it: `--configfile FILE`, else ./config.yaml. A file is complete or
# names its base (`base: config.yaml`, relative to the file); nothing is merged in implicitly.
# `--config KEY=VALUE` lies over it.
#
# A typo, an invalid or non-finite value, an output path outside `results` or too many jobs stop
# here, in one line naming the key (or file:line for YAML syntax: Snakemake's loader names
# neither). The schema is the workflow's own copy of the package's file. A config error exits
# with its message alone: a traceback into the validator would only bury it.
try:
    CONFIGFILE = workflow_config_file(workflow.overwrite_configfiles)
    config_read = merge(read_config(CONFIGFILE), dict(workflow.config_settings.config or {}))
    config.clear()  # Snakemake's own reading of the file (and its --config) gives way to offshelf's
    config.update(config_read)
    # the plan (offshelf.planning.plan.Plan), built once: validation reads its rows, the rules the rest
    PLAN = validated_plan(config, f"{workflow.basedir}/workflow/schemas/config.schema.yaml")
except ConfigError as err:
    sys.exit(f"offshelf: {err}")
if workflow.is_main_process:  # not again in every job's own Snakemake process
    print(describe_job_counts(config, PLAN), file=sys.stderr)

EXP = f"{config['results']}/{config['experiment']}"
LOGS = f"{config['results']}/logs/{config['experiment']}"
BACKEND_SPEC = canonical(backends.spec_from_config(config))  # a param of every job that loads networks
BACKEND = backends.create(BACKEND_SPEC)
SETTINGS = PLAN.settings  # the tables' fixed settings; a searched row's scales come from its search's rounds
EVALUATIONS = PLAN.evaluations  # metrics file stem -> (setting name, number of samples)
# search name -> offshelf.planning.searches.SearchPlan (workflow/rules/search.smk): the tables' and the pareto target's
SEARCHES = PLAN.all_searches
PROBES = PLAN.probes
GUIDED_PROBES = PLAN.guided_probes  # guided calibration name -> its guided setting
LIBRARY = offshelf.__version__  # a param of every job: a library release reruns them
THREADS = config.get("threads_per_job", 1)
GPUS_PER_JOB = gpus_per_job(BACKEND)  # resources.gpu of the rules that load networks; --resources gpu=N caps them
CHECKPOINTS = canonical(config.get("checkpoints", {}))
# Used with `--sdm conda`: the same pinned requirements the Makefile installs.
CONDA_ENV = f"{workflow.basedir}/envs/offshelf.yaml"

wildcard_constraints:
    setting="[A-Za-z0-9_.+-]+",
    probe="[A-Za-z0-9_.+-]+",
    shard=r"\d+",
    search="[A-Za-z0-9_.+-]+",
    round=r"\d+",

include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/calibration.smk"
include: "workflow/rules/sampling.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/text2image.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/pareto.smk"
include: "workflow/rules/publish.smk"

rule all:
    input:
        f"{EXP}/report/README.md",
        # config.yaml's docs/results.md: the report's tables on the results page (publish.smk)
        config.get("results_doc", []),
        # quality per unit of compute, where the config puts it in `all` (config.yaml; not ci.yaml)
        [f"{EXP}/pareto/README.md"] if pareto_in_all(config) else [],
    default_target: True


if PLAN.pareto is not None:

    # quality per unit of compute (workflow/rules/pareto.smk): a named target, and in `all` where
    # the config's pareto_in_all says so
    rule pareto:
        input:
            f"{EXP}/pareto/README.md",
        localrule: True
