import numpy as np

from offshelf.atomic import save_npz
from offshelf.experiment import load_workflow_models
from offshelf.jobs import job_log
from offshelf.imagenet import sample_shard
from offshelf.settings import Setting

with job_log(snakemake.log[0], snakemake.threads, snakemake.resources.get("gpu", 0)):
    p = snakemake.params
    setting = Setting.from_dict(p.setting)
    first, count = p.seeds
    models = load_workflow_models(dict(snakemake.input), p.sampling, p.get("backbone", "digits"), p.get("imagenet"),
                                  p.get("checkpoints"), setting.network or None)
    images, labels, seconds = sample_shard(setting, models, list(range(first, first + count)),
                                           p.sampling["batch_size"], progress=True)
    print(f"{setting.name}: {len(images)} samples (seeds {first}..{first + count - 1}) in {seconds:.1f} s")
    # arr_0/arr_1: ADM evaluator layout; the rest is provenance
    save_npz(snakemake.output[0], arr_0=images, arr_1=labels, seeds=np.arange(first, first + count),
             seconds=np.float64(seconds))
