# `snakemake tune`: calibrate the config's `tune` classifier on held-out images, then search its
# guidance scale (offshelf.tuning, docs/tuning.md). Not part of `all`: `make run` is unaffected.
from offshelf.tuning import TuneSpec

TUNE = TuneSpec.from_config(config.get("tune"))
TUNE_SETTING = Setting(regime=TUNE.regime, classifier=TUNE.classifier, input=TUNE.input, network=TUNE.network)
TUNE_DIR = f"{EXP}/tune/{TUNE.folder}"
TUNE_OUTPUTS = ["tuned.yaml", "summary.json", "calibration_curves.csv", "calibration_integrals.csv",
                "optimal_temperatures.csv", "guided_calibration.csv", "calibration_curves.png", "search_trace.csv"]
TUNE_EVIDENCE = ["calibration_curves.png", "guided_calibration.csv", "calibration_integrals.csv", "search_trace.csv"]


rule tune:
    input:
        **setting_files(TUNE_SETTING),
        **evaluation_files(),
        **({"reference_features": f"{EXP}/reference/features.npz"} if Capability.REFERENCE_FEATURES in BACKEND.capabilities else {}),
    output:
        # the evidence in `snakemake tune --report`: both stages' curves and the scale search's trace
        **{name.replace(".", "_"): (report(f"{TUNE_DIR}/{name}", category="Tuning") if name in TUNE_EVIDENCE
                                    else f"{TUNE_DIR}/{name}") for name in TUNE_OUTPUTS},
    params:
        tune=canonical(TUNE.to_config()),
        guiding_roles=sorted(BACKEND.files(TUNE_SETTING)),
        judging_roles=sorted(BACKEND.evaluation_files()),
        evaluation=canonical(config["evaluation"]),
        sampling=sampling_params(config),
        backend=BACKEND_SPEC,
        checkpoints=CHECKPOINTS,
        library=LIBRARY,
    log:
        f"{LOGS}/tune/{TUNE.folder}.log",
    threads: THREADS
    resources:
        gpu=GPUS_PER_JOB,  # one GPU when the backend runs on one (offshelf.devices)
    conda: CONDA_ENV
    script:
        "../scripts/tune.py"

