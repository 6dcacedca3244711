from offshelf.warm import hand_off

hand_off()  # from here on this script runs in a warm fork that has torch imported, or here, cold (offshelf.warm)

from offshelf import backends, stages
from offshelf.atomic import save_json
from offshelf.jobs import job_log

with job_log(snakemake.log[0], snakemake.threads, snakemake.resources.get("gpu", 0)):
    p, inputs = snakemake.params, snakemake.input
    backend = backends.create(p.backend)
    setting, num_samples = p.evaluated["setting"], p.evaluated["num_samples"]
    judge = stages.load_judge(backend, stages.judge_files(backend, inputs, p.checkpoints), inputs.get("reference"))
    result = stages.evaluate(backend, judge, list(inputs.shards), p.evaluation, num_samples,
                             expected_seeds=p.seeds, features_path=snakemake.output.features)
    result["setting"] = setting
    print(result)
    save_json(snakemake.output.metrics, result)
