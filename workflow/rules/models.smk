# The networks. digits: trained here (four small nets; each checkpoint records its training
# config). ImageNet backbones: pretrained files, downloaded once into the checkpoint cache by
# `fetch_checkpoint` (or taken from `checkpoints.local`) and verified against the registry pins
# and the lock file; every sampling/evaluation job takes them as inputs.

if DIGITS:

    rule train_digits:
        output:
            f"{EXP}/models/{{role}}.pt",
        params:
            train=lambda wc: canonical(dict(config["digits"]["models"][wc.role],
                                           split_seed=config["digits"].get("split_seed", 0))),
            library=LIBRARY,
        log:
            f"{LOGS}/train_digits/{{role}}.log",
        threads: THREADS
        conda: CONDA_ENV
        script:
            "../scripts/train_digits.py"

    def model_files(*roles):
        return {role: f"{EXP}/models/{role}.pt" for role in roles}

    def setting_models(setting):
        return model_files("denoiser", "offshelf", "finetuned")

    def probe_models(probe):
        return model_files("denoiser", "offshelf", "finetuned")

    def evaluation_models():
        return {"evaluator": f"{EXP}/models/evaluator.pt"}

else:
    import re
    from offshelf.checkpoints import get as registry_entry

    CHECKPOINTS = config.get("checkpoints", {})
    CACHE = str(imagenet.cache_dir(config))
    NEEDED = imagenet.all_checkpoints(config, list(SETTINGS.values()), [probe_setting(p) for p in PROBES])
    FETCHED = {registry_entry(n).filename: n for n in NEEDED if n not in CHECKPOINTS.get("local", {})}

    if FETCHED:

        rule fetch_checkpoint:
            output:
                f"{CACHE}/{{filename}}",
            wildcard_constraints:
                filename="|".join(re.escape(f) for f in sorted(FETCHED)),
            params:
                name=lambda wc: FETCHED[wc.filename],
                cache=CACHE,
                lock=CHECKPOINTS.get("lock", "checkpoints.lock.json"),
                offline=CHECKPOINTS.get("offline", False),
            log:
                f"{LOGS}/fetch_checkpoint/{{filename}}.log",
            localrule: True
            retries: 2
            conda: CONDA_ENV
            script:
                "../scripts/fetch_checkpoint.py"

    def _files(names):
        return {role: imagenet.checkpoint_path(config, name) for role, name in names.items()}

    def setting_models(setting):
        return _files(imagenet.setting_checkpoints(config, setting))

    def probe_models(probe):
        return setting_models(probe_setting(probe))

    def evaluation_models():
        return _files(imagenet.evaluation_checkpoints(config))
