# Guidance-scale search (offshelf.search, docs/statistics.md "Scale search"): each guided row of a
# config with a `search` section gets its scale from a log-scale bracketing search. One checkpoint
# per round: round k holds the trace so far and the evaluations the search proposes next, each
# with its setting's parameters (`settings`, `evaluates`: what sample/evaluate jobs read); round
# k + 1 draws them (a setting's first N samples: the seeds its shards hold, `<setting>+n<N>`) and
# judges them in its own process, so a round is one process, not a sample job per scale. A round
# is a pure function of the one before, so a killed run resumes at the first missing round. The
# round proposing the finalists is `final`; `result.json` (an ordinary rule) reads it and the
# finalists' full-fidelity metrics (ordinary sample and evaluate jobs, with the features the
# report pairs), and names the scale, metrics and features the row reports.
# Input functions: common.smk (snakemake --lint keeps functions out of rule files).

checkpoint search_round:
    input:
        unpack(search_round_inputs),
    output:
        f"{EXP}/search/{{search}}/round{{round}}.json",
    wildcard_constraints:
        round="[1-9][0-9]*",  # round 0 is the plan's (initial_round), never a job
    params:
        plan=lambda wc: SEARCHES[wc.search].to_dict(),
        evaluations=search_round_evaluations,
        # what a round's judging uses: rounds force bootstrap off (search_round.py), so a change of
        # evaluation.bootstrap reruns no round (and none of its sampling)
        evaluation=canonical({k: v for k, v in config["evaluation"].items() if k != "bootstrap"}),
        sampling=sampling_params(config),
        backend=BACKEND_SPEC,
        checkpoints=CHECKPOINTS,
        library=LIBRARY,
    log:
        f"{LOGS}/search/{{search}}/round{{round}}.log",
    threads: THREADS
    resources:
        gpu=GPUS_PER_JOB,  # one GPU when the backend runs on one (offshelf.devices)
    conda: CONDA_ENV
    script:
        "../scripts/search_round.py"


rule search_result:
    input:
        unpack(search_result_inputs),
    output:
        f"{EXP}/search/{{search}}/result.json",
    params:
        plan=lambda wc: SEARCHES[wc.search].to_dict(),
        # compute spent = samples x denoiser evaluations per sample (the same at every scale)
        denoiser_per_sample=lambda wc: denoiser_per_sample(SEARCHES[wc.search].setting),
        library=LIBRARY,
    log:
        f"{LOGS}/search/{{search}}/result.log",
    localrule: True
    conda: CONDA_ENV
    script:
        "../scripts/search_result.py"
