# Features of the real reference images once; FID / precision / recall (/ accuracy where the
# judging network classifies) per evaluation (a setting's first N samples).

if BACKEND.has_reference_features():

    rule reference_features:
        input:
            **evaluation_files(),
        output:
            f"{EXP}/reference/features.npz",
        params:
            evaluation=canonical(config["evaluation"]),
            backend=BACKEND_SPEC,
            checkpoints=CHECKPOINTS,
            library=LIBRARY,
        log:
            f"{LOGS}/reference_features.log",
        threads: THREADS
        conda: CONDA_ENV
        script:
            "../scripts/reference_features.py"


rule evaluate:
    input:
        unpack(evaluation_inputs),
    output:
        f"{EXP}/metrics/{{setting}}.json",
    params:
        evaluation=canonical(config["evaluation"]),
        seeds=lambda wc: [shard_seed_range(s) for s in evaluation_shards(wc)],
        backend=BACKEND_SPEC,
        checkpoints=CHECKPOINTS,
        library=LIBRARY,
    log:
        f"{LOGS}/evaluate/{{setting}}.log",
    threads: THREADS
    conda: CONDA_ENV
    script:
        "../scripts/evaluate.py"
