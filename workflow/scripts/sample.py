import numpy as np

from offshelf.experiment import job_log, load_digits_models, sample_shard, save_npz
from offshelf.settings import Setting

with job_log(snakemake.log[0], snakemake.threads):
    sampling = snakemake.params.sampling
    setting = Setting.from_dict(snakemake.params.setting)
    first, count = snakemake.params.seeds
    models = load_digits_models(snakemake.input, sampling["respacing"], sampling.get("variance", "fixed_large"))
    images, labels, seconds = sample_shard(setting, models, list(range(first, first + count)),
                                           sampling["batch_size"], progress=True)
    print(f"{setting.name}: {len(images)} samples (seeds {first}..{first + count - 1}) in {seconds:.1f} s")
    # arr_0/arr_1: ADM evaluator layout; the rest is provenance
    save_npz(snakemake.output[0], arr_0=images, arr_1=labels, seeds=np.arange(first, first + count),
             seconds=np.float64(seconds))
