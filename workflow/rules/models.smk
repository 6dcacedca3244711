# The networks. A backend either trains its own (Trained: small networks, each checkpoint records
# its training config) or names pretrained files (Pretrained), downloaded once into the checkpoint
# cache by `fetch_checkpoint` (or taken from `checkpoints.local`) and verified against the registry
# pins and the lock file; every sampling/evaluation job takes them as inputs.
import re  # re.escape: a filename taken literally in a wildcard constraint

TRAINING = BACKEND.training_from_config(config) if Capability.TRAINING in BACKEND.capabilities else {}
FETCHED = fetched_files()
CACHE = str(cache_dir(config))


if trained_roles():

    rule train_model:
        output:
            f"{EXP}/models/{{role}}.pt",
        wildcard_constraints:
            role="|".join(trained_roles()),
        params:
            backend=BACKEND_SPEC["name"],
            train=lambda wc: canonical(TRAINING[wc.role]),
            library=LIBRARY,
        log:
            f"{LOGS}/train_model/{{role}}.log",
        threads: THREADS
        conda: CONDA_ENV
        script:
            "../scripts/train_model.py"


if FETCHED:

    rule fetch_checkpoint:
        output:
            f"{CACHE}/{{filename}}",
        wildcard_constraints:
            filename="|".join(re.escape(f) for f in sorted(FETCHED)),
        params:
            name=lambda wc: FETCHED[wc.filename],
            cache=lambda wc, output: os.path.dirname(output[0]),
            lock=CHECKPOINTS.get("lock", "checkpoints.lock.json"),
            offline=CHECKPOINTS.get("offline", False),
            registry=CHECKPOINTS.get("registry"),
        log:
            f"{LOGS}/fetch_checkpoint/{{filename}}.log",
        localrule: True
        retries: 2
        conda: CONDA_ENV
        script:
            "../scripts/fetch_checkpoint.py"
