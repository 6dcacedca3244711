# Per-step ECE of each classifier variant ("probe") along unguided conditional trajectories and,
# with calibration.trajectories: [unguided, guided], along each row's own guided trajectories.

from offshelf.plan import calibration_params, figure_guided_probes


def figure_calibration_inputs(figure):
    """A calibration figure's CSVs: `unguided` per probe, and `guided_<regime>` per probe when
    guided calibration is on (the figure's panels, in this order)."""
    probes = config["figures"][figure]["probes"]
    inputs = {"unguided": expand(f"{EXP}/calibration/{{probe}}.csv", probe=probes)}
    if GUIDED_PROBES:
        for regime, settings in figure_guided_probes(config, figure).items():
            inputs[f"guided_{regime}"] = [f"{EXP}/calibration/guided/{s.name}.csv" for s in settings]
    return inputs


def figure_calibration_panels(figure):
    """Input name -> panel title of a calibration figure."""
    panels = {"unguided": "unguided, cond"}
    if GUIDED_PROBES:
        scales = config["calibration"]["guided_scale"]
        panels.update({f"guided_{r}": f"guided, {r} (scale {scales[r]:g})" for r in config["regimes"]})
    return panels


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
    conda: CONDA_ENV
    script:
        "../scripts/calibrate.py"
