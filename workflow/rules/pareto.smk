# Quality per unit of compute (offshelf.pareto; the config's `pareto` table): `snakemake pareto`,
# and part of `all` where the config sets pareto_in_all (config.yaml; ci.yaml and the ImageNet
# configs keep it a named target). Its rows' samples, evaluations and scale searches are ordinary
# sample / evaluate / search jobs (PLAN.pareto), shared with the tables wherever a setting is the same.

if PLAN.pareto is not None:

    rule pareto_report:
        input:
            metrics=expand(f"{EXP}/metrics/{{e}}.json", e=sorted(PLAN.pareto.evaluations)),
            features=expand(f"{EXP}/metrics/{{e}}.features.npz", e=sorted(PLAN.pareto.evaluations)),
            search=expand(f"{EXP}/search/{{s}}/result.json", s=sorted(PLAN.pareto.searches)),
        output:
            report=report(f"{EXP}/pareto/README.md", category="Pareto"),
            figure=report(f"{EXP}/pareto/pareto.png", category="Pareto",
                          caption="../report/pareto.rst"),
        params:
            plan={k: v for k, v in pareto_config(config).items()
                  if k in ("tables", "bases", "regimes", "scales", "search", "cfg_scales", "sampling", "backbone",
                           "imagenet", "backend_options")},
            sampling=config["sampling"],
            backend=BACKEND_SPEC,
            library=LIBRARY,
        log:
            f"{LOGS}/pareto.log",
        localrule: True
        conda: CONDA_ENV
        script:
            "../scripts/pareto_report.py"
