from offshelf.warm import hand_off

hand_off()  # from here on this script runs in a warm fork that has torch imported, or here, cold (offshelf.warm)

from offshelf import backends, stages
from offshelf.jobs import job_log
from offshelf.levers import Levers
from offshelf.settings import Setting
from offshelf.shards import save_shard, seed_list

with job_log(snakemake.log[0], snakemake.threads, snakemake.resources.get("gpu", 0)):
    p = snakemake.params
    backend = backends.create(p.backend)
    setting = Setting.from_dict(p.setting)
    seeds = seed_list(p.seeds)
    models = stages.load_models(backend, dict(snakemake.input), p.sampling, setting, p.checkpoints)
    facts = {"levers": Levers.from_sampling(p.sampling).description()}
    images, labels, seconds = stages.sample_shard(backend, models, setting, seeds, p.sampling["batch_size"],
                                                  progress=True, facts=facts)
    print(f"{setting.name}: {len(images)} samples (seeds {seeds[0]}..{seeds[-1]}) in {seconds:.1f} s, batch "
          f"{facts['batch_size']}, levers {facts['levers']}, compile {facts['compile_seconds']:.1f} s")
    save_shard(snakemake.output[0], images, labels, seeds, seconds, facts)
