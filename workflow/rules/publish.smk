# The results page (config key `results_doc`, config.yaml: docs/results.md): the report's tables
# (and the pareto report's, where `all` makes it) copied between the page's two marker lines, so
# `make run` refreshes the numbers it shows.
#
# The page is hand-written around those markers, so it is not a fresh output: update() keeps
# Snakemake from deleting it before the job (and restores it if the job fails), and the job
# rewrites only the lines between the markers (offshelf.results_doc), atomically. Outputs still
# never overwrite inputs: the page is no input of any job, and its hand-written lines are not
# this job's to write. The config check refuses a page without its markers before any job runs.

if "results_doc" in config:

    rule publish_results:
        input:
            report=f"{EXP}/report/README.md",
            # the pareto target's tables too, where `all` makes them (pareto_in_all)
            **({"pareto": f"{EXP}/pareto/README.md"} if pareto_in_all(config) and PLAN.pareto is not None else {}),
        output:
            page=update(config["results_doc"]),
        params:
            library=LIBRARY,
        log:
            f"{LOGS}/publish_results.log",
        localrule: True
        conda: CONDA_ENV
        script:
            "../scripts/publish_results.py"
