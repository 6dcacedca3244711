# offshelf: off-the-shelf classifier guidance, reproduced end to end.
#   snakemake --cores all                                  # digits benchmark (config.yaml)
#   snakemake --cores all --configfile config/ci.yaml      # tiny, for tests
# Rules are thin; the logic lives in the `offshelf` package (src/offshelf).
import offshelf
from offshelf.config import validate_config
from offshelf.plan import all_probes, all_settings, num_shards, shard_seeds, table_rows

configfile: "config.yaml"

validate_config(config)  # a typo or an invalid value stops here, naming the key

EXP = f"{config['results']}/{config['experiment']}"
LOGS = f"{config['results']}/logs/{config['experiment']}"
SETTINGS = all_settings(config)
PROBES = all_probes(config)
SHARDS = range(num_shards(config))
LIBRARY = offshelf.__version__  # a param of every job: a library release reruns them
THREADS = config.get("threads_per_job", 1)

wildcard_constraints:
    setting="[A-Za-z0-9_.+-]+",
    probe="[A-Za-z0-9_.+-]+",
    shard=r"\d+",
    role="denoiser|offshelf|finetuned|evaluator",

include: "workflow/rules/models.smk"
include: "workflow/rules/calibration.smk"
include: "workflow/rules/sampling.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/report.smk"

rule all:
    input:
        f"{EXP}/report/README.md",
    default_target: True
