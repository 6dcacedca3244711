# Train (digits) the four benchmark networks; each checkpoint records its training config.

rule train_digits:
    output:
        f"{EXP}/models/{{role}}.pt",
    params:
        train=lambda wc: dict(config["digits"]["models"][wc.role], split_seed=config["digits"].get("split_seed", 0)),
        library=LIBRARY,
    log:
        f"{LOGS}/train_digits/{{role}}.log",
    threads: THREADS
    script:
        "../scripts/train_digits.py"


def model_files(*roles):
    return {role: f"{EXP}/models/{role}.pt" for role in roles}
