# Per-step ECE of each classifier variant ("probe") along unguided conditional trajectories.

rule calibrate:
    input:
        **model_files("denoiser", "offshelf", "finetuned"),
    output:
        f"{EXP}/calibration/{{probe}}.csv",
    params:
        calibration=config["calibration"],
        sampling=config["sampling"],
        library=LIBRARY,
    log:
        f"{LOGS}/calibrate/{{probe}}.log",
    threads: THREADS
    script:
        "../scripts/calibrate.py"
