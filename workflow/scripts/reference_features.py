from offshelf.atomic import save_npz
from offshelf.experiment import reference_features
from offshelf.jobs import job_log

with job_log(snakemake.log[0], snakemake.threads, snakemake.resources.get("gpu", 0)):
    p = snakemake.params
    if p.get("backbone", "digits") == "digits":
        ref = reference_features(snakemake.input.evaluator, p.evaluation.get("reference_split", "train"))
    else:
        from offshelf.imagenet import reference_image_features, verified_files

        files = verified_files({"inception": snakemake.input.inception, "reference_stats": snakemake.input.reference_stats},
                               {"inception": "inception_cleanfid_legacy_tf", "reference_stats": p.imagenet_reference},
                               p.checkpoints)
        ref = reference_image_features(files["reference_stats"], files["inception"], p.imagenet)
    print(f"reference features: {ref['features'].shape}")
    save_npz(snakemake.output[0], **ref)
