# Per-step ECE of each classifier variant ("probe") along unguided conditional trajectories.

rule calibrate:
    input:
        unpack(lambda wc: probe_files(wc.probe)),
    output:
        f"{EXP}/calibration/{{probe}}.csv",
    params:
        calibration=canonical(config["calibration"]),
        sampling=sampling_params(config),
        backend=BACKEND_SPEC,
        checkpoints=CHECKPOINTS,
        library=LIBRARY,
    log:
        f"{LOGS}/calibrate/{{probe}}.log",
    threads: THREADS
    conda: CONDA_ENV
    script:
        "../scripts/calibrate.py"
