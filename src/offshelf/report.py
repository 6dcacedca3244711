"""The Markdown report: every table (CSV + Markdown beside it), the networks and the figures.

One function for every backbone. Where the backend reproduces the paper's own setting (the
ImageNet backbones) each table also gets the difference (measured − paper); on the digits
benchmark the numbers are not comparable (other data, other feature space), so it does not.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
from offshelf.extras import needs

needs(__name__, "pandas")  # offshelf[workflow]
import pandas as pd

from offshelf.calibration import integral_calibration_error
from offshelf.atomic import atomic_write, save_csv, save_text
from offshelf.grids import GridSources
from offshelf.planning.rows import evaluation_name, table_rows
from offshelf.tables import (add_differences, add_paired_differences, add_reported_estimates, html_table, markdown,
                             table_frame)


def _intro(plan_config: dict, experiment: str, comparable: bool) -> list[str]:
    sampling = plan_config["sampling"]
    backbone = plan_config["backbone"]
    scale = ("Each guided row's scale is chosen by a guidance-scale search (the scale column; '(edge)': the "
             "optimum sits on the searched range's edge)." if "search" in plan_config else
             "Each guided row sweeps its scale grid and reports the candidate with the lowest FID (the scale column).")
    text = [f"Backbone `{backbone}`: {sampling['num_samples']} samples per setting in shards of "
            f"{sampling['shard_size']}" + (f", respacing {sampling['respacing']}" if "respacing" in sampling else "")
            + f". {scale} `ice` = integral calibration error (mean per-step ECE along unguided "
            "conditional trajectories). Intervals are 95% bootstrap intervals over the samples "
            "(evaluation.bootstrap resamples); differences are paired against the table's baseline row "
            "(docs/statistics.md)."]
    if not comparable:
        text.append("Paper columns are the paper's ImageNet numbers, for direction only: FIDs here are in "
                    "the judging network's feature space and not comparable in magnitude.")
    else:
        protocol = plan_config.get("imagenet", {}).get("fid_protocol", "adm_tf")
        extractor = {"adm_tf": "the TF Inception (clean-fid `legacy_tensorflow`, ADM's evaluator's protocol)",
                     "pytorch_fid": "pytorch-fid's FID Inception (the protocol of EluCD's own numbers)"}.get(
                         protocol, f"protocol `{protocol}`")
        text.append(f"FID (protocol `{protocol}`) against the published reference statistics with {extractor}; "
                    "each table names the sha256 of the extractor and reference files its metrics used; "
                    "precision/recall against the reference batch's images where it has any; `diff_*` = "
                    "measured − paper.")
    note = [f"**Note.** {plan_config['report_note']}", ""] if plan_config.get("report_note") else []
    return [f"# offshelf report: {experiment}", ""] + note + [" ".join(text), ""]


def write_report(plan_config: dict, metric_files: list[str], calibration_files: list[str], figure_files: list[str],
                 out_path: str, experiment: str, model_files: list[str] = (), comparable: bool = False,
                 feature_files: list[str] = (), search_files: list[str] = (), grids: GridSources | None = None,
                 samples_dir: str | None = None) -> dict[str, pd.DataFrame]:
    """``comparable``: the backend reproduces the paper's own setting, so each table also gets
    measured − paper columns. ``feature_files``: the evaluations' ``<name>.features.npz`` (per-sample
    arrays and bootstrap replicates), from which each row's paired difference against its table's
    baseline row is taken. ``search_files``: the guidance-scale searches' ``result.json``
    (offshelf.planning.searches.search_result_record: the scale each searched row reports; its metrics and
    features are among ``metric_files`` / ``feature_files``). ``grids``: the shards the sample
    grids are drawn from (offshelf.grids); with them each table gets a Samples section showing the
    grid of the setting each row reports, drawn into ``samples_dir`` as :func:`sample_file` names it
    (the HTML report's files)."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    evaluations = {Path(p).stem: json.loads(Path(p).read_text()) for p in metric_files}
    ice = {Path(p).stem: integral_calibration_error(pd.read_csv(p)) for p in calibration_files}
    sections = _intro(plan_config, experiment, comparable)
    judges = sorted({str(e["judge"]) for e in evaluations.values() if e.get("judge")})  # never a guide: config.check_judge
    sections += [f"Samples judged by: {'; '.join(judges)}.", ""] if judges else []
    if model_files:
        sections += ["## Networks", "", _model_summary(model_files), ""]
    searches = [json.loads(Path(p).read_text()) for p in search_files]
    rows = table_rows(plan_config, {record["search"]: record for record in searches})
    features = {Path(p).name.removesuffix(".features.npz"): p for p in feature_files}
    cache: dict = {}
    frames = {}
    if grids is not None and samples_dir is None:
        raise ValueError("write_report: grids given without samples_dir (where the report's grids go)")
    drawn: dict[str, tuple[Path, dict]] = {}  # setting -> (its grid's first file, layout): drawn once, copied
    for table, spec in plan_config["tables"].items():
        mine = [r for r in rows if r.table == table]
        parts = []
        for row in mine:
            metrics = {}
            for s in row.candidates:
                name = evaluation_name(plan_config, s.name, row.num_samples or plan_config["sampling"]["num_samples"])
                if name in evaluations:
                    metrics[s.name] = evaluations[name]
            part = table_frame([row], metrics, ice)
            if row.unavailable:
                part["status"] = f"not run ({row.unavailable})"
            parts.append(part)
        frame = pd.concat(parts, ignore_index=True)
        n_eval = (mine[0].num_samples or plan_config["sampling"]["num_samples"]) if mine else None
        def replicates(setting: str, n=n_eval) -> dict | None:
            return _replicates(features.get(evaluation_name(plan_config, setting, n)), cache)

        frame = add_reported_estimates(add_paired_differences(frame, replicates), replicates)
        if comparable:
            frame = add_differences(frame)
        frames[table] = frame
        save_csv(out.parent / f"{table}.csv", frame)
        n = mine[0].num_samples
        title = f"{table_heading(table)}: {spec['title']}" + (f" ({n} samples)" if n else "")
        text = markdown(frame, list(spec.get("columns", ["fid"])), title)
        save_text(out.parent / f"{table}.md", text)
        # the HTML report's view of the table (Markdown is only a download link there)
        page = html_table(frame, list(spec.get("columns", ["fid"])), title, plan_config.get("report_note", ""))
        save_text(out.parent / report_table_page(table), page)
        sections += [text, f"CSV: [{table}.csv]({table}.csv)", ""]
        if grids is not None:
            sections += _samples_section(table, frame, grids, Path(samples_dir), out.parent, drawn)
    if figure_files:
        # copied beside the report, so that the report folder alone (copied, zipped) shows them
        sections += ["## Figures", ""]
        for f in figure_files:
            target = out.parent / report_figure(Path(f).stem)
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, lambda tmp, src=f: shutil.copyfile(src, tmp))
            caption = FIGURE_CAPTIONS.get(Path(f).stem)
            sections += [f"![{Path(f).stem}]({report_figure(Path(f).stem)})", ""] + ([caption, ""] if caption else [])
    save_text(out, "\n".join(sections))
    return frames


def report_table_page(table: str) -> str:
    """A table's HTML page inside the report folder (relative to it): ``tables/<table>.html``."""
    return f"tables/{table}.html"


def report_figure(figure: str) -> str:
    """A figure's copy inside the report folder (relative to it)."""
    return f"figures/{figure}.png"


#: One line under each figure of the Markdown report (the HTML report's captions:
#: workflow/report/figure*.rst say the same at more length).
FIGURE_CAPTIONS = {
    "figure1": "*Figure 1*: expected calibration error (ECE) of each classifier along the reverse process, "
               "per sampling step; the legend gives each curve's mean over steps (the integral calibration error, ICE).",
    "figure2": "*Figure 2*: ECE along the reverse process of the off-the-shelf classifier with ReLU and with "
               "Softplus(β = 3).",
    "figure3": "*Figure 3*: a 2-d Gaussian mixture (density in grey, modes ×, target mode circled): the joint "
               "direction ∇log p(x, y) points at the target mode, the conditional ∇log p(y | x) can point elsewhere.",
    "figure4": "*Figure 4*: the predicted x̂0 and the classifier gradient along one trajectory, with the "
               "conditional and the joint (marginal-temperature) guidance direction.",
    "figure5": "*Figure 5*: the guidance weight per sampling step for each sine factor γ of the schedule.",
}


#: The keys of a search's ``result.json`` naming files the report reads (the chosen scale's).
SEARCHED_FILE_KEYS = ("metrics_file", "features_file", "grid_shards")


def searched_files(experiment_folder: str | os.PathLike, result_path: str | os.PathLike) -> dict[str, list[str]]:
    """The files a search's ``result.json`` names for its chosen scale (:data:`SEARCHED_FILE_KEYS`),
    resolved inside ``experiment_folder``, the folder of the report that reads them: the record
    stores them relative to its experiment folder, so a copied or moved results folder reads its
    own files, never the folder it was copied from. A path that is absolute, leaves the experiment
    folder or names no file is an error naming the record and the key."""
    folder = Path(experiment_folder)
    record = json.loads(Path(result_path).read_text())
    redo = ("; rerun its search_result job (snakemake ... --forcerun search_result), which names the files "
            "relative to the experiment folder")
    out: dict[str, list[str]] = {}
    for key in SEARCHED_FILE_KEYS:
        values = record.get(key, [] if key == "grid_shards" else None)
        for value in ([values] if isinstance(values, str) else values or []):
            where = f"{result_path}: {key} {value!r}"
            if Path(value).is_absolute() or ".." in Path(value).parts:
                raise ValueError(f"{where} is not a path relative to the experiment folder {folder}{redo}")
            path = folder / value
            if not path.is_file():
                raise ValueError(f"{where}: {path} does not exist{redo}")
            out.setdefault(key, []).append(str(path))
    if "metrics_file" not in out or "features_file" not in out:
        raise ValueError(f"{result_path}: names no metrics_file or features_file (a search result from an older "
                         f"offshelf?){redo}")
    return out


def sample_file(table: str, position: int, regime: str) -> str:
    """A row's grid inside the report's samples folder: ``<table>/<NN>-<regime>.png``, NN = the
    row's 1-based position in the config's table (labels may hold any character)."""
    return f"{table}/{position:02d}-{regime}.png"


SAMPLE_PATTERN = "{table}/{row}-{regime}.png"  # sample_file's names, as Snakemake report patterns read them


def sample_labels(config: dict, table: str, row: str, regime: str) -> dict[str, str]:
    """The HTML report's labels of a row's grid (the wildcards of :data:`SAMPLE_PATTERN`)."""
    spec = config["tables"][table]
    return {"row": spec["rows"][int(row) - 1]["label"], "regime": regime}


def sample_category(config: dict, table: str) -> str:
    """The HTML report's subcategory of a table's grids: its heading and title."""
    return f"{table_heading(table)}: {config['tables'][table]['title']}"


def _samples_section(table: str, frame: pd.DataFrame, grids: GridSources, samples_dir: Path, report_dir: Path,
                     drawn: dict[str, tuple[Path, dict]]) -> list[str]:
    """A table's Samples: per row and regime, the grid of the setting whose numbers the row reports
    (drawn into ``samples_dir`` from its shards; a setting ``drawn`` already is copied), or the
    reason the row was not run."""
    regimes = list(dict.fromkeys(frame["regime"]))
    layouts = {}
    lines = ["| row | " + " | ".join(regimes) + " |", "|" + "---|" * (len(regimes) + 1)]
    for position, label in enumerate(dict.fromkeys(frame["row"]), start=1):
        part = frame[frame["row"] == label]
        cells = [label]
        for regime in regimes:
            r = part[part["regime"] == regime]
            if r.empty or r.iloc[0]["status"] != "ok":
                cells.append("not run" if r.empty else str(r.iloc[0]["status"]))
                continue
            setting = r.iloc[0]["setting"]
            if setting not in grids.shards:
                raise ValueError(f"{table} / {label} / {regime}: reports setting {setting}, whose shards are not among "
                                 f"the report's grid inputs ({len(grids.shards)} settings)")
            target = samples_dir / sample_file(table, position, regime)
            target.parent.mkdir(parents=True, exist_ok=True)
            if setting in drawn:
                atomic_write(target, lambda tmp, src=drawn[setting][0]: shutil.copyfile(src, tmp))
            else:
                drawn[setting] = (target, grids.write(setting, target))
            layouts[setting] = drawn[setting][1]
            cells.append(f"![{label}, {regime}]({os.path.relpath(target, report_dir)})")
        lines.append("| " + " | ".join(cells) + " |")
    if not layouts:
        return []
    first = next(iter(layouts.values()))
    per_class = len(first["seeds"][0]) if first["seeds"] else 0
    return [f"*Samples, {table_heading(table)}*: one line per class ({', '.join(map(str, first['classes']))}), "
            f"the first {per_class} seeds of each class, the same seeds in every row (offshelf.grids)."
            + (" Empty tiles: the grid's shards hold fewer samples of that class (raise grids.shards)."
               if any(layout["missing"] for layout in layouts.values()) else ""), ""] + lines + [""]


def table_heading(table: str) -> str:
    """``table9`` -> ``Table 9``; ``table9_sweep`` (a table beside Table 9) -> ``Table 9 (sweep)``;
    ``tableC1`` (an appendix table) -> ``Table C.1``."""
    number, _, extra = table.removeprefix("table").partition("_")
    if number[:1].isalpha():
        number = f"{number[0]}.{number[1:]}"
    return f"Table {number}" + (f" ({extra.replace('_', ' ')})" if extra else "")


def _replicates(path: str | None, cache: dict) -> dict | None:
    """A setting's saved replicates (small: B floats per metric), read once per report."""
    if path is None:
        return None
    if path in cache:
        return cache[path]
    with np.load(path) as data:
        cache[path] = {k: data[k] for k in data.files if k.startswith("replicate_") or k in ("digest", "seeds")}
    return cache[path]


def _model_summary(model_files: list[str]) -> str:
    import torch

    lines = ["| network | training config | held-out metrics |", "|---|---|---|"]
    for path in model_files:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        cfg = payload["config"]
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in payload["metrics"].items()
                            if k != "train_seconds" and isinstance(v, float) and math.isfinite(v))
        lines.append(f"| {cfg['role']} | width {cfg['width']}, {cfg['steps']} steps, seed {cfg['seed']} | {metrics} |")
    return "\n".join(lines)
