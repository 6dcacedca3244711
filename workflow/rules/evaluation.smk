# Features of the real reference images once; FID / precision / recall / accuracy per setting.

rule reference_features:
    input:
        evaluator=f"{EXP}/models/evaluator.pt",
    output:
        f"{EXP}/reference/features.npz",
    params:
        evaluation=config["evaluation"],
        library=LIBRARY,
    log:
        f"{LOGS}/reference_features.log",
    threads: THREADS
    script:
        "../scripts/reference_features.py"


rule evaluate:
    input:
        shards=lambda wc: expand(f"{EXP}/samples/{wc.setting}/shard{{shard}}.npz", shard=SHARDS),
        evaluator=f"{EXP}/models/evaluator.pt",
        reference=f"{EXP}/reference/features.npz",
    output:
        f"{EXP}/metrics/{{setting}}.json",
    params:
        evaluation=config["evaluation"],
        library=LIBRARY,
    log:
        f"{LOGS}/evaluate/{{setting}}.log",
    threads: THREADS
    script:
        "../scripts/evaluate.py"
