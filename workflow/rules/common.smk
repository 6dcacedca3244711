# Input and params functions of the rules: which files a job reads, from the backend's answer.
from offshelf.backends.base import Pretrained, Trained


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


def all_sources():
    """Every file a job of this config reads."""
    settings = list(SETTINGS.values()) + [probe_setting(p) for p in PROBES] + list(GUIDED_PROBES.values())
    settings += [FIGURE4_SETTING] if "figure4" in config.get("figures", {}) else []
    sources = [BACKEND.evaluation_files()] + [BACKEND.files(s) for s in settings]
    return {source for files in sources for source in files.values()}


def trained_roles():
    """Roles the workflow trains, in the config's order."""
    needed = {s.role for s in all_sources() if isinstance(s, Trained)}
    return [role for role in BACKEND.training_from_config(config) if role in needed]


def fetched_files():
    """Registry filename -> name of every pretrained file the cache must hold."""
    from offshelf.checkpoints import get as registry_entry

    local = CHECKPOINTS.get("local", {})
    return {registry_entry(s.name, CHECKPOINTS.get("registry")).filename: s.name for s in all_sources()
            if isinstance(s, Pretrained) and s.name not in local}


def shard_seed_range(shard):
    """[first seed, count] of a shard: its job param, and what evaluation checks it holds."""
    seeds = shard_seeds(config, int(shard))
    return [seeds[0], len(seeds)]


def evaluation_shards(wc):
    setting, n = EVALUATIONS[wc.setting]
    return list(range(num_shards(config, n)))


def evaluation_inputs(wc):
    setting, n = EVALUATIONS[wc.setting]
    inputs = dict(evaluation_files(),
                  shards=expand(f"{EXP}/samples/{setting}/shard{{shard}}.npz", shard=evaluation_shards(wc)))
    if BACKEND.has_reference_features():
        inputs["reference"] = f"{EXP}/reference/features.npz"
    return inputs


# Figure 4's sample: the paper's uncond, off-the-shelf x̂0 guidance (its Softplus/schedule knobs are
# the figure's own params).
FIGURE4_SETTING = Setting(regime="uncond", classifier="offshelf", input="x0", softplus_beta=3.0, sine_factor=0.3)
