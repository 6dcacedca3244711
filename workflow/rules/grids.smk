# Sample grids: one PNG per setting, one line per class, the same seeds in every setting's grid
# (offshelf.grids). The report shows each table row's grid; none without a `grids:` section.
from offshelf.grids import GridConfigError, grid_options
from offshelf.report import SAMPLE_PATTERN, sample_category, sample_labels

GRIDS = config.get("grids")
if GRIDS is not None:
    try:
        grid_options(GRIDS, BACKEND.num_classes)  # a class the backend lacks stops here, naming the key
    except GridConfigError as err:
        sys.exit(f"offshelf: {err}")


def grid_shards(setting):
    """The leading shards a setting's grid reads: `grids.shards`, at most the shards it samples
    (the most samples any of its evaluations reads), never its whole 50,000-sample run."""
    sampled = max(n for name, n in EVALUATIONS.values() if name == setting)
    return list(range(min(GRIDS.get("shards", 1), num_shards(config, sampled))))


def report_grids(wildcards):
    """Setting name -> grid path of every setting a table row may report (each available row's
    candidates; the report shows the one whose numbers the row reports)."""
    if GRIDS is None:
        return {}
    return {name: f"{EXP}/grids/{name}.png" for name in sorted(SETTINGS)}


def report_sample_labels(wildcards):
    """Labels of a row's grid in the HTML report (`report/samples/<table>/<row>-<regime>.png`)."""
    return sample_labels(config, wildcards.table, wildcards.row, wildcards.regime)


rule sample_grid:
    input:
        shards=lambda wc: expand(f"{EXP}/samples/{wc.setting}/shard{{shard}}.npz", shard=grid_shards(wc.setting)),
    output:
        f"{EXP}/grids/{{setting}}.png",
    params:
        grids=canonical(GRIDS or {}),
        seeds=lambda wc: [shard_seed_range(shard) for shard in grid_shards(wc.setting)],
        backend=BACKEND_SPEC,
        library=LIBRARY,
    log:
        f"{LOGS}/grids/{{setting}}.log",
    localrule: True
    conda: CONDA_ENV
    script:
        "../scripts/sample_grid.py"
