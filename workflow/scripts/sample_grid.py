# No offshelf.backends here: creating the backend imports torch, seconds per grid job for nothing.
from offshelf.grids import write_sample_grid
from offshelf.jobs import job_log
from offshelf.shards import ShardFormat

with job_log(snakemake.log[0]):
    p = snakemake.params
    layout = write_sample_grid(ShardFormat.from_param(p.shard_format), list(snakemake.input.shards), p.seeds, p.grids,
                               snakemake.output[0], snakemake.wildcards.setting)
    print(f"grid of {layout['setting']}: classes {layout['classes']}, seeds per line {layout['seeds']}")
    if layout["missing"]:
        print(f"{layout['missing']} empty tile(s): the first {layout['shards']} shard(s) hold fewer samples of "
              f"some classes than grids.per_class; raise grids.shards to fill them")
