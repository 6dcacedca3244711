from offshelf.atomic import save_json
from offshelf.experiment import evaluate_setting
from offshelf.jobs import job_log
from offshelf.plan import parse_evaluation_name

with job_log(snakemake.log[0], snakemake.threads, snakemake.resources.get("gpu", 0)):
    p, inputs = snakemake.params, snakemake.input
    setting, num_samples = parse_evaluation_name(snakemake.wildcards.setting)
    nhood = p.evaluation.get("nhood_size", 3)
    if p.get("backbone", "digits") == "digits":
        result = evaluate_setting(list(inputs.shards), inputs.evaluator, inputs.reference, nhood, num_samples)
    else:
        from offshelf.imagenet import evaluate_imagenet, verified_files

        files = verified_files({"inception": inputs.inception, "reference_stats": inputs.reference_stats},
                               {"inception": "inception_cleanfid_legacy_tf", "reference_stats": p.imagenet_reference},
                               p.checkpoints)
        result = evaluate_imagenet(list(inputs.shards), files["inception"], files["reference_stats"],
                                   inputs.get("reference"), p.imagenet, nhood, num_samples)
    result["setting"] = setting
    print(result)
    save_json(snakemake.output[0], result)
