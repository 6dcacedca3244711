# Sample grids: one PNG per setting, one line per class, the same seeds in every setting's grid
# (offshelf.grids). The report shows each table row's grid (report_grids, common.smk); none without
# a `grids:` section.
from offshelf.grids import GridConfigError, grid_options
from offshelf.report import SAMPLE_PATTERN, sample_category, sample_labels
from offshelf.shards import ShardFormat

GRIDS = config.get("grids")
if GRIDS is not None:
    try:
        grid_options(GRIDS, BACKEND.num_classes)  # a class the backend lacks stops here, naming the key
    except GridConfigError as err:
        sys.exit(f"offshelf: {err}")


rule sample_grid:
    input:
        # the leading shards that hold the grid's seeds, not every shard of the setting
        shards=lambda wc: expand(f"{EXP}/samples/{wc.setting}/shard{{shard}}.npz",
                                 shard=grid_shards_of(wc.setting)),
    output:
        f"{EXP}/grids/{{setting}}.png",
    params:
        grids=canonical(GRIDS or {}),
        seeds=lambda wc: [shard_seed_range(shard) for shard in grid_shards_of(wc.setting)],
        # what the shards must hold, not BACKEND_SPEC: the job then never creates the backend (torch's import)
        shard_format=canonical(ShardFormat.of(BACKEND).param()),
        library=LIBRARY,
    log:
        f"{LOGS}/grids/{{setting}}.log",
    localrule: True
    conda: CONDA_ENV
    script:
        "../scripts/sample_grid.py"
