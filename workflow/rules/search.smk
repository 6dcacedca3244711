# Guidance-scale search (offshelf.search, docs/statistics.md "Scale search"): each guided row of a
# config with a `search` section gets its scale from a log-scale bracketing search. One checkpoint
# per round: round k holds the trace so far and the evaluations the search proposes next; round
# k + 1 needs their metrics (the ordinary evaluate jobs, `<setting>+n<N>` at low fidelity). A
# round is a pure function of the one before and its metrics, so a killed run resumes at the
# first missing round. `result.json` names the scale (and metrics file) the row reports.
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
    """The last round of a search (the one that proposes nothing), once the rounds before it ran."""
    k = 0
    while True:
        path = checkpoints.search_round.get(search=search, round=k).output[0]
        with open(path) as f:
            if not json.load(f)["proposals"]:
                return path
        k += 1


def search_result_files():
    return expand(f"{EXP}/search/{{search}}/result.json", search=sorted(SEARCHES))


def search_results():
    """Finished search records by name (each read once its checkpoint has run)."""
    out = {}
    for name in sorted(SEARCHES):
        with open(checkpoints.search_result.get(search=name).output[0]) as f:
            out[name] = json.load(f)
    return out


def searched_evaluations():
    """Metrics file stems of the scales the searches chose (at the rows' full sample count),
    beyond the tables' fixed evaluations."""
    return sorted({record["evaluation"] for record in search_results().values()} - set(EVALUATIONS))


def searched_inputs(wildcards):
    """The report's inputs that depend on the searches' outcomes, with unpack(): metrics and
    features of each chosen scale. Snakemake re-evaluates it after each search_result checkpoint."""
    names = searched_evaluations()
    return {"searched_metrics": expand(f"{EXP}/metrics/{{e}}.json", e=names),
            "searched_features": expand(f"{EXP}/metrics/{{e}}.features.npz", e=names)}


def reported_setting_names(wildcards):
    """For every row the backend can run, the setting(s) its table finally reports: a searched
    row's chosen scale, a pinned or unguided row's setting, and every candidate of a grid row
    (CFG scales, configs without `search`: which one wins is only known from the metrics)."""
    from offshelf.plan import table_rows

    names = set()
    for row in table_rows(config, search_results() if SEARCHES else None):
        if not row.unavailable:
            names.update(s.name for s in row.candidates)
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


checkpoint search_result:
    input:
        lambda wc: final_round(wc.search),
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
