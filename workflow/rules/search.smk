# Guidance-scale search (offshelf.search, docs/statistics.md "Scale search"): each guided row of a
# config with a `search` section gets its scale from a log-scale bracketing search. One checkpoint
# per round: round k holds the trace so far and the evaluations the search proposes next; round
# k + 1 needs their metrics (the ordinary evaluate jobs, `<setting>+n<N>` at low fidelity). A
# round is a pure function of the one before and its metrics, so a killed run resumes at the
# first missing round. The round proposing the finalists is `final`; `result.json` (an ordinary
# rule) reads it and the finalists' metrics, and names the scale, metrics and features the row
# reports.
import json

from offshelf.backends.base import UnsupportedError


def denoiser_per_sample(setting):
    """Denoiser evaluations one sample of ``setting`` costs, where the backend counts them."""
    try:
        return BACKEND.work_per_sample(setting, config["sampling"])["denoiser"]
    except UnsupportedError:
        return None


def search_round_inputs(wc):
    """Round k reads round k - 1 and the metrics of the evaluations it proposed."""
    k = int(wc.round)
    if k == 0:
        return {}
    previous = checkpoints.search_round.get(search=wc.search, round=k - 1).output[0]
    with open(previous) as f:
        proposed = json.load(f)["evaluations"]
    return {"previous": previous, "metrics": expand(f"{EXP}/metrics/{{e}}.json", e=proposed)}


def final_round(search):
    """(path, record) of a search's final round; raises IncompleteCheckpointException (which
    Snakemake turns into a dependency) at its first round not made yet."""
    k = 0
    while True:
        path = checkpoints.search_round.get(search=search, round=k).output[0]
        with open(path) as f:
            record = json.load(f)
        if record["final"]:
            return path, record
        k += 1


def search_result_inputs(wc):
    """A search's final round and its finalists' metrics and features (the row reports one of them)."""
    path, record = final_round(wc.search)
    return {"final": path, "metrics": expand(f"{EXP}/metrics/{{e}}.json", e=record["evaluations"]),
            "features": expand(f"{EXP}/metrics/{{e}}.features.npz", e=record["evaluations"])}


def search_result_files():
    """Every search's result: the report lists them all outright, so the searches advance side by side."""
    return expand(f"{EXP}/search/{{search}}/result.json", search=sorted(SEARCHES))


def reported_setting_names(wildcards):
    """For every row the backend can run, the setting(s) its table finally reports: a searched
    row's finalists (its chosen scale where `search.finalists` is 1), a pinned or unguided row's
    setting, and every candidate of a grid row (CFG scales, configs without `search`): which
    finalist or candidate wins is only known from their metrics."""
    from offshelf.plan import table_rows

    names = set()
    for row in table_rows(config):
        if row.unavailable:
            continue
        names.update(s.name for s in row.candidates)
        if row.search:
            names.update(row.search.at(scale).name for scale, _ in final_round(row.search.name)[1]["proposals"])
    return sorted(names)


checkpoint search_round:
    input:
        unpack(search_round_inputs),
    output:
        f"{EXP}/search/{{search}}/round{{round}}.json",
    params:
        plan=lambda wc: SEARCHES[wc.search].to_dict(),
        library=LIBRARY,
    log:
        f"{LOGS}/search/{{search}}/round{{round}}.log",
    localrule: True
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
