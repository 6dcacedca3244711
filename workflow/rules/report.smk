# Tables beside the paper's numbers, figures, one Markdown report.
from offshelf.report import table_heading

# The HTML report's landing page (snakemake --report): what the workflow is, and where to look.
report: "../report/workflow.rst"

# Figures a config asks for (calibration curves, the gradient panel) and the analytic figures
# (Gaussian mixture, DDPM guidance schedules) of the backend's family.
FIGURES = sorted([f for f in ("figure1", "figure2", "figure4") if f in config.get("figures", {})]
                 + list(BACKEND.analytic_figures if Capability.ANALYTIC_FIGURES in BACKEND.capabilities else ()))


rule figure_calibration:
    input:
        unpack(lambda wc: figure_calibration_inputs(wc.figure)),
    output:
        report(f"{EXP}/figures/{{figure}}.png", category="Figures", caption="../report/figure_calibration.rst"),
    wildcard_constraints:
        figure="figure1|figure2",
    params:
        probes=lambda wc: config["figures"][wc.figure]["probes"],
        panels=lambda wc: figure_calibration_panels(wc.figure),
        library=LIBRARY,
    log:
        f"{LOGS}/figures/{{figure}}.log",
    localrule: True
    conda: CONDA_ENV
    script:
        "../scripts/figure_calibration.py"


rule figure_analytic:
    output:
        figure3=report(f"{EXP}/figures/figure3.png", category="Figures", caption="../report/figure3.rst"),
        figure5=report(f"{EXP}/figures/figure5.png", category="Figures", caption="../report/figure5.rst"),
    params:
        sampling=config["sampling"],
        sine_factors=[0.0, 0.1, 0.2, 0.3, 0.4],
        library=LIBRARY,
    log:
        f"{LOGS}/figures/analytic.log",
    localrule: True
    conda: CONDA_ENV
    script:
        "../scripts/figure_analytic.py"


if "figure4" in FIGURES:

    rule figure_gradients:
        input:
            **setting_files(FIGURE4_SETTING),
        output:
            report(f"{EXP}/figures/figure4.png", category="Figures", caption="../report/figure4.rst"),
        params:
            figure=canonical(config["figures"]["figure4"]),
            setting=FIGURE4_SETTING.to_dict(),
            sampling=sampling_params(config),
            backend=BACKEND_SPEC,
            checkpoints=CHECKPOINTS,
            library=LIBRARY,
        log:
            f"{LOGS}/figures/figure4.log",
        threads: THREADS
        resources:
            gpu=GPUS_PER_JOB,  # one GPU when the backend runs on one (offshelf.devices)
        conda: CONDA_ENV
        script:
            "../scripts/figure_gradients.py"


rule report:
    input:
        metrics=expand(f"{EXP}/metrics/{{setting}}.json", setting=sorted(EVALUATIONS)),
        features=expand(f"{EXP}/metrics/{{setting}}.features.npz", setting=sorted(EVALUATIONS)),
        # each guidance-scale search's result: the scale, metrics and features its rows report (search.smk)
        search=search_result_files(),
        calibration=expand(f"{EXP}/calibration/{{probe}}.csv", probe=PROBES)
        + expand(f"{EXP}/calibration/guided/{{setting}}.csv", setting=sorted(GUIDED_PROBES)),
        figures=expand(f"{EXP}/figures/{{figure}}.png", figure=FIGURES),
        models=[f"{EXP}/models/{role}.pt" for role in trained_roles()],
        # grids of the rows' fixed settings; a searched row's are inputs of its search's result
        grids=report_grids(),
    output:
        report=report(f"{EXP}/report/README.md", category="Report", caption="../report/readme.rst"),
        # each table as a page the HTML report shows (it only links Markdown), the paper's numbers beside
        tables=report(directory(f"{EXP}/report/tables"), patterns=["{table}.html"], category="Tables",
                      labels=lambda wc: {"table": table_heading(wc.table), "title": config["tables"][wc.table]["title"]},
                      caption="../report/table.rst"),
        # the figures' copies inside the report folder, so that it shows them wherever it is copied
        figures=expand(f"{EXP}/report/figures/{{figure}}.png", figure=FIGURES),
        # each row's grid, copied per table so the HTML report files it under its table
        **({"samples": report(directory(f"{EXP}/report/samples"), patterns=[SAMPLE_PATTERN], category="Samples",
                              subcategory=lambda wc: sample_category(config, wc.table), labels=lambda wc: sample_labels(config, wc.table, wc.row, wc.regime),
                              caption="../report/samples.rst")} if GRIDS is not None else {}),
    params:
        plan={k: config[k] for k in ("tables", "bases", "regimes", "scales", "search", "cfg_scales", "sampling", "calibration",
                                     "backbone", "imagenet", "backend_options", "report_note") if k in config},
        experiment=config["experiment"],
        comparable=Capability.PAPER_COMPARABLE in BACKEND.capabilities,
        library=LIBRARY,
    log:
        f"{LOGS}/report.log",
    localrule: True
    conda: CONDA_ENV
    script:
        "../scripts/report.py"
