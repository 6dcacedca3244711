from offshelf.warm import hand_off

hand_off()  # from here on this script runs in a warm fork that has torch imported, or here, cold (offshelf.warm)

import json
from pathlib import Path

from offshelf import backends, stages
from offshelf.atomic import save_json
from offshelf.jobs import job_log
from offshelf.planning.searches import SearchPlan, initial_round, search_round_record

with job_log(snakemake.log[0], snakemake.threads, snakemake.resources.get("gpu", 0)):
    p, inputs = snakemake.params, snakemake.input
    plan = SearchPlan.from_dict(p.plan)
    # round 1 starts from the plan's round 0 (initial_round: no job, no file), round k from round k - 1's file
    previous = json.loads(Path(inputs.previous).read_text()) if "previous" in inputs.keys() else initial_round(plan)
    backend = backends.create(p.backend)
    model_files = {role: inputs[role] for role in backend.files(plan.setting)}
    models = stages.load_models(backend, model_files, p.sampling, plan.setting, p.checkpoints)
    judge = stages.load_judge(backend, stages.judge_files(backend, inputs, p.checkpoints), inputs.get("reference"))
    # the search ranks scales by their FID alone: no resampled intervals at this fidelity
    evaluation = dict(p.evaluation, bootstrap=0)
    metrics = stages.evaluate_round(backend, models, judge, p.evaluations, p.sampling["batch_size"], evaluation)
    record = search_round_record(plan, previous, metrics)
    print(f"{plan.name} round {record['round']}: trace {len(record['trace'])} evaluations; next {record['proposals']}")
    save_json(snakemake.output[0], record)
