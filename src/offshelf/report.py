"""The Markdown report: every table (CSV + Markdown beside it) and the figures."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from offshelf.calibration import integral_calibration_error
from offshelf.plan import table_rows
from offshelf.tables import markdown, table_frame


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(plan_config: dict, metric_files: list[str], calibration_files: list[str], figure_files: list[str],
                 model_files: list[str], out_path: str, experiment: str, sampling: dict) -> dict[str, pd.DataFrame]:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    metrics = {Path(p).stem: json.loads(Path(p).read_text()) for p in metric_files}
    ice = {Path(p).stem: integral_calibration_error(pd.read_csv(p)) for p in calibration_files}
    rows = table_rows(plan_config)
    frames = {}
    sections = [f"# offshelf report: {experiment}", "",
                f"Sampling: {sampling['num_samples']} samples per setting, respacing {sampling['respacing']}, "
                f"shards of {sampling['shard_size']}. Each guided row sweeps its scale grid and reports the "
                "candidate with the lowest FID (the scale column). `ice` = integral calibration error (mean "
                "per-step ECE along unguided conditional trajectories). Paper columns are the paper's "
                "ImageNet numbers, for direction only: digits FIDs are in the evaluation network's feature "
                "space and not comparable in magnitude.", ""]
    models = _model_summary(model_files)
    if models:
        sections += ["## Models", "", models, ""]
    for table, spec in plan_config["tables"].items():
        frame = table_frame([r for r in rows if r.table == table], metrics, ice)
        frames[table] = frame
        tmp = out.parent / f"{table}.csv.tmp"
        frame.to_csv(tmp, index=False)
        os.replace(tmp, out.parent / f"{table}.csv")
        text = markdown(frame, list(spec.get("columns", ["fid"])), f"{table.replace('table', 'Table ')}: {spec['title']}")
        _write_text(out.parent / f"{table}.md", text)
        sections += [text, f"CSV: [{table}.csv]({table}.csv)", ""]
    sections += ["## Figures", ""]
    for fig in figure_files:
        rel = os.path.relpath(fig, out.parent)
        sections += [f"![{Path(fig).stem}]({rel})", ""]
    _write_text(out, "\n".join(sections))
    return frames


def _model_summary(model_files: list[str]) -> str:
    if not model_files:
        return ""
    import torch

    lines = ["| network | training config | held-out metrics |", "|---|---|---|"]
    for path in model_files:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        cfg = payload["config"]
        metrics = {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v)
                   for k, v in payload["metrics"].items() if k != "train_seconds"}
        lines.append(f"| {cfg['role']} | width {cfg['width']}, {cfg['steps']} steps, seed {cfg['seed']} | {metrics} |")
    return "\n".join(lines)
