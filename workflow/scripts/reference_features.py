from offshelf.experiment import job_log, reference_features, save_npz

with job_log(snakemake.log[0], snakemake.threads):
    evaluation = snakemake.params.evaluation
    ref = reference_features(snakemake.input.evaluator, evaluation.get("reference_split", "train"))
    print(f"reference features: {ref['features'].shape}")
    save_npz(snakemake.output[0], **ref)
