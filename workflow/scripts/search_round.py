import json
from pathlib import Path

from offshelf.atomic import save_json
from offshelf.jobs import job_log
from offshelf.plan import SearchPlan, search_round_record

with job_log(snakemake.log[0]):
    plan = SearchPlan.from_dict(snakemake.params.plan)
    inputs = snakemake.input
    previous = json.loads(Path(inputs.previous).read_text()) if "previous" in inputs.keys() else None
    metrics = {Path(p).name.removesuffix(".json"): json.loads(Path(p).read_text())
               for p in (inputs.metrics if "metrics" in inputs.keys() else [])}
    record = search_round_record(plan, previous, metrics)
    print(f"{plan.name} round {record['round']}: trace {len(record['trace'])} evaluations; next {record['proposals']}")
    save_json(snakemake.output[0], record)
