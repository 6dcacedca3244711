# Per-step ECE of each classifier variant ("probe") along unguided conditional trajectories and,
# with calibration.trajectories: [unguided, guided], along each row's own guided trajectories.

rule calibrate:
    input:
        unpack(lambda wc: probe_files(wc.probe)),
    output:
        f"{EXP}/calibration/{{probe}}.csv",
    params:
        calibration=calibration_params(config),
        sampling=sampling_params(config),
        backend=BACKEND_SPEC,
        checkpoints=CHECKPOINTS,
        library=LIBRARY,
    log:
        f"{LOGS}/calibrate/{{probe}}.log",
    threads: THREADS
    resources:
        gpu=GPUS_PER_JOB,  # one GPU when the backend runs on one (offshelf.devices)
    conda: CONDA_ENV
    script:
        "../scripts/calibrate.py"


rule calibrate_guided:
    input:
        unpack(lambda wc: setting_files(GUIDED_PROBES[wc.setting])),
    output:
        f"{EXP}/calibration/guided/{{setting}}.csv",
    params:
        setting=lambda wc: GUIDED_PROBES[wc.setting].to_dict(),
        calibration=calibration_params(config),
        sampling=sampling_params(config),
        backend=BACKEND_SPEC,
        checkpoints=CHECKPOINTS,
        library=LIBRARY,
    log:
        f"{LOGS}/calibrate/guided/{{setting}}.log",
    threads: THREADS
    resources:
        gpu=GPUS_PER_JOB,  # one GPU when the backend runs on one (offshelf.devices)
    conda: CONDA_ENV
    script:
        "../scripts/calibrate.py"
