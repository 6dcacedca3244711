from offshelf.experiment import evaluate_setting, job_log, save_json

with job_log(snakemake.log[0], snakemake.threads):
    result = evaluate_setting(list(snakemake.input.shards), snakemake.input.evaluator, snakemake.input.reference,
                              snakemake.params.evaluation.get("nhood_size", 3))
    result["setting"] = snakemake.wildcards.setting
    print(result)
    save_json(snakemake.output[0], result)
