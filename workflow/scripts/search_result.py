import json
import os
from pathlib import Path

from offshelf.atomic import save_json
from offshelf.jobs import job_log
from offshelf.planning.searches import SearchPlan, search_result_record

with job_log(snakemake.log[0]):
    plan = SearchPlan.from_dict(snakemake.params.plan)
    inputs = snakemake.input
    metrics = {Path(p).name.removesuffix(".json"): json.loads(Path(p).read_text()) for p in inputs.metrics}
    record = search_result_record(plan, json.loads(Path(inputs.final).read_text()), metrics,
                                  snakemake.params.denoiser_per_sample)
    # the files the report reads for the chosen scale (its grid's shards too) (inputs of this job, so they exist and are
    # current), relative to the experiment folder (<exp>/search/<name>/result.json): a copied or
    # moved results folder then reads its own (offshelf.report.searched_files)
    experiment_folder = Path(snakemake.output[0]).parents[2]
    chosen = record["evaluation"]

    def inside(path):
        return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(experiment_folder))).as_posix()

    record["metrics_file"] = inside(next(p for p in inputs.metrics if Path(p).name == f"{chosen}.json"))
    record["features_file"] = inside(next(p for p in inputs.features if Path(p).name == f"{chosen}.features.npz"))
    record["grid_shards"] = [inside(p) for p in inputs.get("grid_shards", []) if Path(p).parent.name == record["setting"]]
    print(f"{plan.name}: scale {record['scale']:g} (FID {record['fid']:.4g}, edge {record['on_edge']}), "
          f"{record['samples']} samples: {record['trace_text']}")
    save_json(snakemake.output[0], record)
