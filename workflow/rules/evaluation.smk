# Features of the real reference images once; FID / precision / recall (/ accuracy on digits)
# per evaluation (a setting's first N samples).

if DIGITS:

    rule reference_features:
        input:
            evaluator=f"{EXP}/models/evaluator.pt",
        output:
            f"{EXP}/reference/features.npz",
        params:
            evaluation=canonical(config["evaluation"]),
            library=LIBRARY,
        log:
            f"{LOGS}/reference_features.log",
        threads: THREADS
        conda: CONDA_ENV
        script:
            "../scripts/reference_features.py"

elif imagenet.reference_has_images(config):

    rule reference_features:  # Inception features of the reference batch's images (arr_0)
        input:
            **evaluation_models(),
        output:
            f"{EXP}/reference/features.npz",
        params:
            library=LIBRARY,
            **JOB_PARAMS,
        log:
            f"{LOGS}/reference_features.log",
        threads: THREADS
        conda: CONDA_ENV
        script:
            "../scripts/reference_features.py"


def evaluation_inputs(wc):
    setting, n = EVALUATIONS[wc.setting]
    inputs = dict(evaluation_models(),
                  shards=expand(f"{EXP}/samples/{setting}/shard{{shard}}.npz", shard=range(num_shards(config, n))))
    if DIGITS or imagenet.reference_has_images(config):
        inputs["reference"] = f"{EXP}/reference/features.npz"
    return inputs


rule evaluate:
    input:
        unpack(evaluation_inputs),
    output:
        f"{EXP}/metrics/{{setting}}.json",
    params:
        evaluation=canonical(config["evaluation"]),
        library=LIBRARY,
        **JOB_PARAMS,
    log:
        f"{LOGS}/evaluate/{{setting}}.log",
    threads: THREADS
    conda: CONDA_ENV
    script:
        "../scripts/evaluate.py"
