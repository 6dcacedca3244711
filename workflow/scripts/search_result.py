import json
from pathlib import Path

from offshelf.atomic import save_json
from offshelf.jobs import job_log
from offshelf.plan import SearchPlan, search_result_record

with job_log(snakemake.log[0]):
    plan = SearchPlan.from_dict(snakemake.params.plan)
    record = search_result_record(plan, json.loads(Path(snakemake.input[0]).read_text()),
                                  snakemake.params.denoiser_per_sample)
    print(f"{plan.name}: scale {record['scale']:g} (FID {record['fid']:.4g}, edge {record['on_edge']}), "
          f"{record['samples']} samples: {record['trace_text']}")
    save_json(snakemake.output[0], record)
