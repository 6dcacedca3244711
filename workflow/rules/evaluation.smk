# Features of the real reference images once; FID / precision / recall (/ accuracy where the
# judging network classifies) per evaluation (a setting's first N samples).

if Capability.REFERENCE_FEATURES in BACKEND.capabilities:

    rule reference_features:
        input:
            **evaluation_files(),
        output:
            f"{EXP}/reference/features.npz",
        params:
            # the real images' features do not depend on how many resamples an evaluation draws
            evaluation=canonical({k: v for k, v in config["evaluation"].items() if k != "bootstrap"}),
            backend=BACKEND_SPEC,
            checkpoints=CHECKPOINTS,
            library=LIBRARY,
        log:
            f"{LOGS}/reference_features.log",
        threads: THREADS
        resources:
            gpu=GPUS_PER_JOB,  # one GPU when the backend runs on one (offshelf.devices)
        conda: CONDA_ENV
        script:
            "../scripts/reference_features.py"


rule evaluate:
    input:
        unpack(evaluation_inputs),
    output:
        metrics=f"{EXP}/metrics/{{setting}}.json",
        # per-sample features, seeds, correctness and the bootstrap replicates (offshelf.statistics):
        # what the report pairs against the table's baseline row
        features=f"{EXP}/metrics/{{setting}}.features.npz",
    params:
        evaluation=canonical(config["evaluation"]),
        # its setting and sample count, from the plan or the search round that proposed it
        evaluated=lambda wc: evaluated_param(wc.setting),
        seeds=lambda wc: shards_of_evaluation(wc.setting)[1],
        backend=BACKEND_SPEC,
        checkpoints=CHECKPOINTS,
        library=LIBRARY,
    log:
        f"{LOGS}/evaluate/{{setting}}.log",
    threads: THREADS
    resources:
        gpu=GPUS_PER_JOB,  # one GPU when the backend runs on one (offshelf.devices)
    conda: CONDA_ENV
    script:
        "../scripts/evaluate.py"
