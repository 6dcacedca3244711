# Input and params functions of the rules: which files a job reads, from the backend's answer.
import json

from offshelf.backends.base import Trained
from offshelf.backends.capabilities import Capability
from offshelf.planning.params import calibration_params, first_seeds
from offshelf.planning.probes import figure_guided_probes
from offshelf.planning.searches import check_round, finalists, initial_round


def source_path(source):
    """A backend's file on disk: a trained network under models/, or a registry file in the cache
    (or at its checkpoints.local path)."""
    if isinstance(source, Trained):
        return f"{EXP}/models/{source.role}.pt"
    return pretrained_path(config, source.name)


def files_of(sources):
    return {role: source_path(source) for role, source in sources.items()}


def setting_files(setting):
    return files_of(BACKEND.files(setting))


def probe_files(probe):
    return setting_files(probe_setting(probe))


def evaluation_files():
    return files_of(BACKEND.evaluation_files())


def trained_roles():
    """Roles the workflow trains, in the config's order (the plan's: it counts their jobs too)."""
    return PLAN.trained_roles(config, BACKEND)


def fetched_files():
    """Registry filename -> name of every pretrained file the cache must hold."""
    return PLAN.fetched_files(config, BACKEND)


def shard_seed_range(shard):
    """[first seed, count] of a shard: its job param, and what evaluation checks it holds."""
    seeds = shard_seeds(config, int(shard))
    return [seeds[0], len(seeds)]


def search_rounds():
    """The search rounds made so far (checkpoint outputs), read lazily: a searched setting's
    parameters are in the record of the round that proposed it, never parsed from its name."""
    return read_rounds(f"{EXP}/search", {name: SEARCHES[name] for name in sorted(SEARCHES)})


def setting_of(name):
    """A sample job's setting: a table row's, or a scale a search proposed (from its round's record)."""
    return PLAN.setting(name, search_rounds())


def evaluation_of(name):
    """(setting name, number of samples) of a metrics file stem: one the tables need, or a
    search's evaluation (its setting's first N samples, as the round proposing it names them)."""
    return PLAN.evaluation(name, search_rounds())


def evaluated_param(name):
    """An evaluate job's {setting, num_samples} (None: all of the setting's samples)."""
    setting, n = evaluation_of(name)
    return {"setting": setting, "num_samples": None if n == PLAN.all_samples else n}


def shards_of_evaluation(name):
    """(shard files, their [first seed, count]) an evaluation reads, in seed order."""
    setting, n = evaluation_of(name)
    shards = range(num_shards(config, n))
    return shard_files(setting, shards), [shard_seed_range(i) for i in shards]


def shard_files(setting, shards):
    """The sample job's files (sampling.smk) of ``shards`` of ``setting``."""
    return [f"{EXP}/samples/{setting}/shard{i}.npz" for i in shards]


def evaluation_inputs(wc):
    return dict(judge_inputs(), shards=shards_of_evaluation(wc.setting)[0])


def judge_inputs():
    """The judging network's files and, where the backend keeps them, the real images' features."""
    inputs = evaluation_files()
    if Capability.REFERENCE_FEATURES in BACKEND.capabilities:
        inputs["reference"] = f"{EXP}/reference/features.npz"
    return inputs


def report_grid_shards():
    """The shards of the tables' fixed settings' sample grids (every candidate a row may report;
    the report draws the grids, offshelf.grids). A search's finalists' grid shards are inputs of its
    result instead, so the report needs no input function waiting on a checkpoint (with one,
    Snakemake's dry run found nothing to do after an edit that starts a new search)."""
    if config.get("grids") is None:
        return []
    return [path for name in sorted(SETTINGS) for path in grid_shard_files(name)]


def grid_shard_files(setting):
    """The leading shards a setting's grid reads (offshelf.grids.grid_shards): a table row's
    setting, or a search's finalist (sampled at its search's full fidelity)."""
    from offshelf.grids import grid_shards

    return shard_files(setting, grid_shards(config, PLAN.sampled_counts(setting, search_rounds()), setting))


def grid_seed_ranges():
    """[first seed, count] of shard 0, 1, ... up to the most shards a grid reads (the same in every
    setting): the seeds the report checks a grid's shards hold."""
    from offshelf.grids import grid_shard_count

    return [shard_seed_range(i) for i in range(grid_shard_count(config))]


# Figure 4's sample: the paper's uncond, off-the-shelf x̂0 guidance (offshelf.planning.probes)
from offshelf.planning.probes import FIGURE4_SETTING


# Guidance-scale search (search.smk)
def denoiser_per_sample(setting):
    """Denoiser evaluations one sample of ``setting`` costs, where the backend counts them."""
    if Capability.COST not in BACKEND.capabilities:
        return None
    return BACKEND.work_per_sample(setting, config["sampling"])["denoiser"]


def round_proposals(search, k):
    """(round k - 1's file, its record); raises IncompleteCheckpointException (which Snakemake
    turns into a dependency) while that round is not made. Round 0 is no job and no file (None):
    its record is a pure function of the search's plan (initial_round), so round 1 is known as
    soon as the plan is."""
    if k == 1:
        return None, initial_round(SEARCHES[search])
    previous = checkpoints.search_round.get(search=search, round=k - 1).output[0]
    with open(previous) as f:
        return previous, check_round(json.load(f), previous)


def search_round_inputs(wc):
    """Round k reads round k - 1 and what it needs to sample and judge the evaluations round k - 1
    proposed (round k draws them itself: the networks of the searched setting, the judge's files)."""
    previous, _ = round_proposals(wc.search, int(wc.round))
    models = setting_files(SEARCHES[wc.search].setting)  # every scale of a search takes the same files
    judge = judge_inputs()
    clash = sorted(role for role in set(models) & set(judge) if models[role] != judge[role])
    if clash:
        raise ValueError(f"search {wc.search}: roles {clash} name different files for sampling and judging")
    return dict(models, **judge, **({"previous": previous} if previous else {}))


def search_round_evaluations(wc):
    """{evaluation: {setting, seeds}} of what round k - 1 proposed (a job param): each is the
    setting's first N samples, the seeds its shards hold, drawn in the round's own process."""
    record = round_proposals(wc.search, int(wc.round))[1]
    out = {}
    for e in record["evaluations"]:
        proposal = record["evaluates"][e]
        out[e] = {"setting": record["settings"][proposal["setting"]],
                  "seeds": first_seeds(config, proposal["num_samples"])}
    return out


def final_round(search):
    """(path, record) of a search's final round; raises IncompleteCheckpointException (which
    Snakemake turns into a dependency) at its first round not made yet. Round 0 is never final
    (initial_round), so the final round is a job's file."""
    k = 1
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
    found = finalists(SEARCHES[wc.search], record)  # evaluation -> setting name
    inputs = {"final": path, "metrics": expand(f"{EXP}/metrics/{{e}}.json", e=list(found)),
              "features": expand(f"{EXP}/metrics/{{e}}.features.npz", e=list(found))}
    if config.get("grids") is not None:  # the finalists' grid shards: the report draws the chosen one's grid
        inputs["grid_shards"] = [path for setting in found.values() for path in grid_shard_files(setting)]
    return inputs


def search_result_files():
    """Every search's result: the report lists them all outright, so the searches advance side by side."""
    # the tables' only: the pareto target's are its own report's inputs (pareto.smk), not `all`'s
    return expand(f"{EXP}/search/{{search}}/result.json", search=sorted(PLAN.searches))


# Calibration figures (calibration.smk, report.smk)
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
