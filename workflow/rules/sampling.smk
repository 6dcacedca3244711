# Guided sample generation, sharded: each shard is a fixed seed range written atomically, so a
# killed job loses at most its own shard and a rerun reproduces it bitwise.

rule sample:
    input:
        unpack(lambda wc: setting_files(setting_of(wc.setting))),
    output:
        f"{EXP}/samples/{{setting}}/shard{{shard}}.npz",
    params:
        setting=lambda wc: setting_of(wc.setting).to_dict(),
        seeds=lambda wc: shard_seed_range(wc.shard),
        sampling=sampling_params(config),
        backend=BACKEND_SPEC,
        checkpoints=CHECKPOINTS,
        library=LIBRARY,
    log:
        f"{LOGS}/sample/{{setting}}/shard{{shard}}.log",
    threads: THREADS
    resources:
        gpu=GPUS_PER_JOB,  # one GPU when the backend runs on one (offshelf.devices)
    conda: CONDA_ENV
    script:
        "../scripts/sample.py"
