# Tables beside the paper's numbers, figures, sample grids, one Markdown report.
from offshelf.grids import GridConfigError, grid_options
from offshelf.planning.probes import report_figures
from offshelf.report import SAMPLE_PATTERN, sample_category, sample_labels, table_heading
from offshelf.shards import ShardFormat

# Sample grids: one per row, one line per class, the same seeds in every row's grid (offshelf.grids),
# drawn by the report job from each setting's leading shards: no job of their own (a grid is tens
# of milliseconds of work, a job's start-up more). None without a `grids:` section.
GRIDS = config.get("grids")
if GRIDS is not None:
    try:
        grid_options(GRIDS, BACKEND.num_classes)  # a class the backend lacks stops here, naming the key
    except GridConfigError as err:
        sys.exit(f"offshelf: {err}")

# The HTML report's landing page (snakemake --report): what the workflow is, and where to look.
report: "../report/workflow.rst"

# Figures a config asks for (calibration curves, the gradient panel) and the analytic figures
# (Gaussian mixture, DDPM guidance schedules) of the backend's family.
FIGURES = report_figures(config, BACKEND)


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
        # the shards of the rows' fixed settings' grids; a searched row's are inputs of its search's result
        grid_shards=report_grid_shards(),
    output:
        report=report(f"{EXP}/report/README.md", category="Report", caption="../report/readme.rst"),
        # each table as a page the HTML report shows (it only links Markdown), the paper's numbers beside
        tables=report(directory(f"{EXP}/report/tables"), patterns=["{table}.html"], category="Tables",
                      labels=lambda wc: {"table": table_heading(wc.table), "title": config["tables"][wc.table]["title"]},
                      caption="../report/table.rst"),
        # the figures' copies inside the report folder, so that it shows them wherever it is copied
        figures=expand(f"{EXP}/report/figures/{{figure}}.png", figure=FIGURES),
        # each row's grid, per table so the HTML report files it under its table
        **({"samples": report(directory(f"{EXP}/report/samples"), patterns=[SAMPLE_PATTERN], category="Samples",
                              subcategory=lambda wc: sample_category(config, wc.table), labels=lambda wc: sample_labels(config, wc.table, wc.row, wc.regime),
                              caption="../report/samples.rst")} if GRIDS is not None else {}),
    params:
        plan={k: config[k] for k in ("tables", "bases", "regimes", "scales", "search", "cfg_scales", "sampling", "calibration",
                                     "backbone", "imagenet", "backend_options", "report_note") if k in config},
        experiment=config["experiment"],
        comparable=Capability.PAPER_COMPARABLE in BACKEND.capabilities,
        grids=canonical(GRIDS or {}),
        grid_seeds=grid_seed_ranges(),
        # what the shards must hold, as the evaluation checks them
        shard_format=canonical(ShardFormat.of(BACKEND).param()),
        library=LIBRARY,
    log:
        f"{LOGS}/report.log",
    localrule: True
    conda: CONDA_ENV
    script:
        "../scripts/report.py"
