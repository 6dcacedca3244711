"""Quality per unit of compute (the ``pareto`` target, ``snakemake pareto``): each method of the
config's ``pareto`` table at its own best scale, its FID with the 95 % interval and the paired
difference against the baseline row (calibrated guidance; same seeds), accuracy, the network work
per sample (:mod:`offshelf.compute`) and the wall seconds per sample; a table and a figure of FID
against denoiser evaluations per sample with the Pareto front marked.

A method is **on the front** (per regime) when no other method reaches an FID at least as low with
at most as many denoiser evaluations per sample, one of the two strictly. The front is taken on the
point estimates; the table's paired differences say which gaps the samples resolve.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from offshelf.extras import needs

needs(__name__, "pandas")  # offshelf[workflow]
import pandas as pd

from offshelf.atomic import save_csv, save_text
from offshelf.compute import WORK_KEYS
from offshelf.planning.rows import evaluation_name, table_rows
from offshelf.settings import Setting
from offshelf.tables import CORRECTED_LEGEND, add_paired_differences, add_reported_estimates, cell, table_frame

TABLE = "pareto"
LEGEND = ("Per sample: `denoiser` evaluations (CFG's two halves count two), classifier `fwd`/`bwd` passes "
          "(`den. bwd`: backward passes through the denoiser), wall `seconds` of sampling (this machine, "
          "as the sample jobs recorded it). FID: estimate [95% bootstrap interval] (paired difference "
          "row − baseline, same seeds; * = its interval excludes 0). Front: on the Pareto front of FID "
          "against denoiser evaluations per sample (offshelf.pareto).")


def on_front(costs: Sequence[float], values: Sequence[float]) -> list[bool]:
    """Which points are not dominated: no other point has cost ≤ and value ≤, one of them strictly."""
    points = list(zip(costs, values))
    return [not any(c2 <= c and v2 <= v and (c2 < c or v2 < v) for c2, v2 in points) for c, v in points]


def pareto_frame(plan_config: dict, metric_files: Sequence[str], feature_files: Sequence[str],
                 search_files: Sequence[str], work_of: Callable[[Setting], Mapping[str, int]]) -> pd.DataFrame:
    """One line per (row, regime) of the pareto table: the columns of a report table
    (:func:`offshelf.tables.table_frame`, paired differences against the baseline row) plus the
    work per sample (``work_of(setting)``: :meth:`Backend.work_per_sample`), ``seconds_per_sample``
    and ``front``."""
    evaluations = {Path(p).stem: json.loads(Path(p).read_text()) for p in metric_files}
    searches = {r["search"]: r for r in (json.loads(Path(p).read_text()) for p in search_files)}
    features = {Path(p).name.removesuffix(".features.npz"): p for p in feature_files}
    all_samples = plan_config["sampling"]["num_samples"]
    rows = [r for r in table_rows(plan_config, searches) if r.table == TABLE]
    parts, by_name = [], {}
    for row in rows:
        n = row.num_samples or all_samples
        metrics = {s.name: evaluations[e] for s in row.candidates
                   if (e := evaluation_name(plan_config, s.name, n)) in evaluations}
        part = table_frame([row], metrics, {})
        if row.unavailable:
            part["status"] = f"not run ({row.unavailable})"
        part["num_samples"] = n
        parts.append(part)
        by_name.update({s.name: s for s in row.candidates})
    frame = pd.concat(parts, ignore_index=True)
    n_eval = rows[0].num_samples or all_samples
    def replicates(setting: str) -> dict | None:
        return _replicates(features.get(evaluation_name(plan_config, setting, n_eval)))

    # what each cell prints, inside its own interval (the bias-corrected FID where the plain one is
    # not); the front and the figure use the same numbers as the table
    frame = add_reported_estimates(add_paired_differences(frame, replicates), replicates)
    for key in WORK_KEYS:
        frame[key] = math.nan
    frame["front"] = False
    for index, line in frame[frame["status"] == "ok"].iterrows():
        work = dict(work_of(by_name[line["setting"]]))
        if "classifier" in work:  # a backend counting classifier gradients only (EDM, DiT): a forward and a backward each
            work.setdefault("classifier_forward", work["classifier"])
            work.setdefault("classifier_backward", work["classifier"])
        for key in WORK_KEYS:
            frame.loc[index, key] = work.get(key, math.nan)
    frame["seconds_per_sample"] = frame.get("seconds", math.nan) / frame["num_samples"]
    for regime in dict.fromkeys(frame["regime"]):
        done = frame[(frame["regime"] == regime) & (frame["status"] == "ok")]
        if not done.empty:
            frame.loc[done.index, "front"] = on_front(done["denoiser"].tolist(), done["fid_shown"].tolist())
    return frame


def _replicates(path: str | None) -> dict | None:
    """A setting's saved bootstrap replicates, digest and seeds (what paired differences read)."""
    import numpy as np

    if path is None:
        return None
    with np.load(path) as data:
        return {k: data[k] for k in data.files if k.startswith("replicate_") or k in ("digest", "seeds")}


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e12:
        return f"{int(value):,}"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _scale(line) -> str:
    if isinstance(line.get("scale"), float) and not math.isnan(line["scale"]):
        return f"{line['scale']:g}" + (" (edge)" if line.get("scale_on_edge") else "")
    if isinstance(line.get("best_cfg_scale"), float) and not math.isnan(line["best_cfg_scale"]):
        return f"w={line['best_cfg_scale']:g}"
    return "–"


def pareto_markdown(frame: pd.DataFrame, title: str) -> str:
    """The table, one line per (row, regime), cheapest first within a regime."""
    head = ["regime", "method", "scale", "FID", "accuracy", "denoiser", "clf fwd", "clf bwd", "den. bwd",
            "seconds", "front"]
    lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for regime in dict.fromkeys(frame["regime"]):
        part = frame[frame["regime"] == regime].sort_values(["denoiser", "fid_shown"], na_position="last")
        for _, line in part.iterrows():
            label = line["row"] + (" (baseline)" if bool(line.get("baseline")) else "")
            if line["status"] != "ok":
                lines.append("| " + " | ".join([regime, label, line["status"]] + ["–"] * (len(head) - 3)) + " |")
                continue
            cells = [regime, label, _scale(line), cell(line, "fid"), cell(line, "accuracy")]
            cells += [_fmt(line[k]) for k in WORK_KEYS]
            cells += [_fmt(line["seconds_per_sample"]), "yes" if line["front"] else ""]
            lines.append("| " + " | ".join(cells) + " |")
    legend = [LEGEND] + ([CORRECTED_LEGEND] if any("†" in line for line in lines) else [])
    return "\n".join(lines + [""] + legend) + "\n"


def pareto_figure(frame: pd.DataFrame, path: str | Path) -> None:
    """FID against denoiser evaluations per sample (log x), 95 % intervals as error bars, one panel
    per regime; the front's points filled and joined by a step line."""
    needs(__name__, "matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from offshelf.figures import save_figure

    regimes = list(dict.fromkeys(frame["regime"]))
    fig, axes = plt.subplots(1, len(regimes), figsize=(6.0 * len(regimes), 4.6), squeeze=False)
    for ax, regime in zip(axes[0], regimes):
        done = frame[(frame["regime"] == regime) & (frame["status"] == "ok")].sort_values("denoiser")
        for _, line in done.iterrows():
            fid, lo, hi = line["fid_shown"], line.get("fid_lo", math.nan), line.get("fid_hi", math.nan)
            err = [[fid - lo], [hi - fid]] if not (math.isnan(lo) or math.isnan(hi)) else None
            ax.errorbar(line["denoiser"], fid, yerr=err, fmt="o", capsize=3,
                        color="C3" if line["front"] else "C0", mfc="C3" if line["front"] else "white")
            ax.annotate(line["row"], (line["denoiser"], fid), textcoords="offset points", xytext=(5, 4), fontsize=7)
        front = done[done["front"]]
        if not front.empty:
            ax.step(front["denoiser"], front["fid_shown"], where="post", color="C3", lw=1, label="Pareto front")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("denoiser evaluations per sample (log scale)")
        ax.set_ylabel("FID (95% bootstrap interval)")
        ax.set_title(f"{regime}: FID against compute")
    fig.tight_layout()
    save_figure(fig, path)


def write_pareto_report(plan_config: dict, metric_files: Sequence[str], feature_files: Sequence[str],
                        search_files: Sequence[str], work_of: Callable[[Setting], Mapping[str, int]],
                        out_path: str | Path, figure_path: str | Path, command: str) -> pd.DataFrame:
    """The pareto target's Markdown report (``out_path``), its CSV and table beside it, and the figure."""
    out = Path(out_path)
    frame = pareto_frame(plan_config, metric_files, feature_files, search_files, work_of)
    spec = plan_config["tables"][TABLE]
    n = frame["num_samples"].iloc[0]
    table = pareto_markdown(frame, f"{spec['title']} ({n} samples per method)")
    save_csv(out.parent / f"{TABLE}.csv", frame)
    save_text(out.parent / f"{TABLE}.md", table)
    pareto_figure(frame, figure_path)
    sampling = plan_config["sampling"]
    intro = [f"# offshelf: quality per unit of compute ({plan_config['backbone']})", "",
             f"Made by `{command}`. {n} samples per method, respacing {sampling.get('respacing', '–')}, the same "
             "seeds for every method; each method at its own best scale (the guidance-scale search for guided "
             "rows and SMC's potential scale λ; CFG: the best w of `cfg_scales`). Best-of-N and SMC propose "
             "unguided samples and score them with the guiding classifier's calibrated log-probability "
             "(offshelf.samplers.particles).", ""]
    figure = f"![FID against denoiser evaluations per sample]({Path(figure_path).name})"
    save_text(out, "\n".join(intro + [table, f"CSV: [{TABLE}.csv]({TABLE}.csv)", "", figure, ""]))
    return frame


__all__ = ["on_front", "pareto_figure", "pareto_frame", "pareto_markdown", "write_pareto_report"]
