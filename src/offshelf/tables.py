"""Paper tables: the measured numbers beside the paper's, per regime, as CSV and Markdown.

Each row of a table sweeps a small grid (guidance scale, or CFG scale) and reports the candidate
with the lowest FID, naming the scale it used; or, with a ``search`` section, a guided row reports
the scale its guidance-scale search chose (offshelf.search), with the search's trace and compute.
Rows whose jobs have not run say so instead of being left out.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import numpy as np
from offshelf.extras import needs

needs(__name__, "pandas")  # offshelf[workflow]
import pandas as pd

from offshelf.planning.rows import Row

METRICS = ("fid", "precision", "recall", "accuracy", "seconds")
#: what a metrics file records about how it was measured (ImageNet backends: the FID protocol and
#: the sha256 of the feature extractor and the reference statistics); copied into each report row
PROVENANCE = ("fid_protocol", "feature_extractor", "feature_extractor_sha256", "reference_stats",
              "reference_stats_sha256")
# Metrics with a 95 % interval and a paired difference against the baseline row (offshelf.statistics);
# `seconds` is a wall time, not an estimate of anything.
INTERVAL_METRICS = ("fid", "precision", "recall", "accuracy")
LEGEND = ("Cells: estimate [95% bootstrap interval] (paired difference row − baseline row, same seeds; "
          "* = its 95% interval excludes 0). The baseline row of each table is marked (baseline). "
          "See docs/statistics.md.")
CORRECTED_LEGEND = ("†: the plain estimate lies outside its own interval, so the cell shows the point the interval "
                    "is built around instead: for FID the bias-corrected estimate 2·FID − median(bootstrap FIDs) (the "
                    "basic interval corrects FID's finite-sample bias, which can put it below the plain estimate; "
                    "docs/statistics.md). The plain estimate stays in the CSV (`<metric>`; shown: `<metric>_shown`).")
GUIDED_ICE_LEGEND = ("`ice` is measured along unguided conditional trajectories; `ice_guided`, of the same classifier "
                     "along trajectories it guides itself with the row's design at one fixed scale per regime "
                     "(calibration.guided_scale; docs/method.md §6).")

SEARCH_LEGEND = ("Scale: chosen per row by the guidance-scale search (low-fidelity bracketing, then the "
                 "finalists at the row's full sample count; CSV columns search_trace, search_samples; "
                 "docs/statistics.md, \"Scale search\").")
EDGE_LEGEND = ("(edge): the best scale sits on the edge of the searched range after every allowed step "
               "past it: the optimum may lie beyond, and the row's FID may be above its best.")


def best_candidate(row: Row, metrics: dict[str, dict[str, Any]]) -> tuple[Any, dict[str, Any] | None]:
    """The swept candidate with the lowest FID among those evaluated, and its metrics. A candidate
    whose FID is not a finite number is an error, never skipped: skipping would let the grid's
    other scales hide a broken run."""
    done = [(s, metrics[s.name]) for s in row.candidates if s.name in metrics]
    for s, m in done:
        if not isinstance(m.get("fid"), (int, float)) or not math.isfinite(m["fid"]):
            raise ValueError(f"table {row.table!r}, row {row.label!r}: setting {s.name} has FID {m.get('fid')!r}; "
                             f"a broken run cannot take part in the best-of-grid choice (rerun it)")
    if not done:
        return None, None
    return min(done, key=lambda sm: sm[1]["fid"])


def table_frame(rows: list[Row], metrics: dict[str, dict], ice: dict[str, float]) -> pd.DataFrame:
    """Tidy table: one line per (row, regime) with the paper's values and the measured ones."""
    records = []
    for row in rows:
        best, result = best_candidate(row, metrics)
        record: dict[str, Any] = {"table": row.table, "row": row.label, "regime": row.regime, "baseline": row.baseline}
        record.update({f"paper_{k}": v for k, v in row.paper.items()})
        if best is None:
            record["status"] = "not run"
        else:
            record["status"] = "ok"
            record["setting"] = best.name
            if row.search_result is not None:
                record.update(search_columns(row.search_result))
            elif row.sweep_key:
                record[f"best_{row.sweep_key}"] = getattr(best, row.sweep_key)
                record["swept"] = " ".join(f"{getattr(s, row.sweep_key):g}" for s in row.candidates)
            record.update({k: result.get(k, math.nan) for k in METRICS})
            record.update({k: result[k] for k in PROVENANCE if k in result})
            record.update({f"{k}_{end}": result.get(f"{k}_{end}", math.nan) for k in INTERVAL_METRICS
                           for end in ("lo", "hi")})
            record["fid_bias"] = result.get("fid_bias", math.nan)
        if row.probe is not None:
            record["probe"] = row.probe
            record["ice"] = ice.get(row.probe, math.nan)
        if row.guided_probe is not None:  # the same classifier along the row's own guided trajectories
            record["guided_probe"] = row.guided_probe
            record["ice_guided"] = ice.get(row.guided_probe, math.nan)
        records.append(record)
    return pd.DataFrame(records)


def search_columns(found: Mapping[str, Any]) -> dict[str, Any]:
    """A searched row's CSV columns (its search record, offshelf.planning.searches.search_result_record): the
    chosen ``scale``, ``scale_on_edge`` ("low"/"high" when the optimum sits on the searched range's
    edge after every extension, else empty), ``search_trace`` (scale@samples:FID per evaluation),
    and the compute the search spent: ``search_samples`` and ``search_denoiser_evaluations``."""
    return {"scale": found["scale"], "scale_on_edge": found["on_edge"] or "", "search_trace": found["trace_text"],
            "search_samples": found["samples"],
            "search_denoiser_evaluations": math.nan if found.get("denoiser_evaluations") is None
            else found["denoiser_evaluations"]}


def add_paired_differences(frame: pd.DataFrame, replicates: Callable[[str], Mapping[str, Any] | None]) -> pd.DataFrame:
    """``<metric>_diff`` (row − the table's baseline row, same regime) with ``_diff_lo``/``_diff_hi``.

    ``replicates(setting)`` gives a setting's saved bootstrap (the evaluate job's ``.features.npz``:
    ``replicate_<metric>``, ``digest``, ``seeds``). Both rows were resampled with the same indices
    and sample i of each comes from the same seed, so their replicates subtract element by element:
    a paired bootstrap (offshelf.statistics.paired_difference). A pair whose digests or seeds differ
    is an error, never silently unpaired. The baseline row gets 0 [0, 0]; rows without replicates
    (bootstrap 0, not run) get NaN."""
    from offshelf.statistics import paired_difference

    frame = frame.copy()
    for metric in INTERVAL_METRICS:
        for suffix in ("diff", "diff_lo", "diff_hi"):
            frame[f"{metric}_{suffix}"] = math.nan
    for regime in dict.fromkeys(frame["regime"]):
        rows = frame[frame["regime"] == regime]
        base = rows[rows["baseline"] & (rows["status"] == "ok")]
        if base.empty:
            continue
        base = base.iloc[0]
        base_reps = replicates(base["setting"])
        if base_reps is None:
            continue
        for index, row in rows[rows["status"] == "ok"].iterrows():
            reps = replicates(row["setting"])
            if reps is None:
                continue
            _check_paired(row, base, reps, base_reps)
            for metric in INTERVAL_METRICS:
                key = f"replicate_{metric}"
                if key in reps and key in base_reps and math.isfinite(row[metric]) and math.isfinite(base[metric]):
                    diff, lo, hi = paired_difference(metric, row[metric], base[metric], reps[key], base_reps[key])
                    frame.loc[index, [f"{metric}_diff", f"{metric}_diff_lo", f"{metric}_diff_hi"]] = [diff, lo, hi]
    return frame


def add_reported_estimates(frame: pd.DataFrame, replicates: Callable[[str], Mapping[str, Any] | None]) -> pd.DataFrame:
    """What each cell prints, inside its own interval: ``<metric>_shown`` and ``<metric>_corrected``
    (and ``<metric>_diff_shown`` / ``<metric>_diff_corrected`` for the paired differences of
    :func:`add_paired_differences`, which must have run). The plain estimate where it lies in its
    interval; else the point the interval is built around (offshelf.statistics.interval_centre,
    for FID the bias-corrected estimate), from the setting's saved replicates (``replicates``, as
    for :func:`add_paired_differences`). A cell outside its interval whose replicates are missing
    is an error naming the row, never printed as it is."""
    from offshelf.statistics import DIFF_BOUNDS, METHODS, interval_centre

    frame = frame.copy()
    has_diffs = any(f"{m}_diff" in frame for m in INTERVAL_METRICS)
    for metric in INTERVAL_METRICS:
        if metric not in frame:
            continue
        frame[f"{metric}_shown"], frame[f"{metric}_corrected"] = frame[metric], False
        if has_diffs:
            frame[f"{metric}_diff_shown"], frame[f"{metric}_diff_corrected"] = frame[f"{metric}_diff"], False
    for regime in dict.fromkeys(frame["regime"]):
        rows = frame[(frame["regime"] == regime) & (frame["status"] == "ok")]
        base = rows[rows["baseline"]]
        for index, row in rows.iterrows():
            for metric in INTERVAL_METRICS:
                if metric not in frame or not _outside(row[metric], row.get(f"{metric}_lo"), row.get(f"{metric}_hi")):
                    continue
                reps = _replicates_of(replicates, row, metric, "its estimate")
                frame.loc[index, [f"{metric}_shown", f"{metric}_corrected"]] = [
                    interval_centre(row[metric], reps, *METHODS[metric]), True]
            for metric in INTERVAL_METRICS if has_diffs else ():
                if not _outside(row.get(f"{metric}_diff"), row.get(f"{metric}_diff_lo"), row.get(f"{metric}_diff_hi")):
                    continue
                reps = _replicates_of(replicates, row, metric, "its difference against the baseline row")
                base_reps = _replicates_of(replicates, base.iloc[0], metric, "the baseline of a difference")
                frame.loc[index, [f"{metric}_diff_shown", f"{metric}_diff_corrected"]] = [
                    interval_centre(row[f"{metric}_diff"], reps - base_reps, METHODS[metric][0], DIFF_BOUNDS[metric]),
                    True]
    return frame


def _outside(value, lo, hi) -> bool:
    """``value`` is a number outside the finite interval [lo, hi] (False where any is missing)."""
    return not any(_isnan(v) for v in (value, lo, hi)) and not lo <= value <= hi


def _replicates_of(replicates: Callable[[str], Mapping[str, Any] | None], row, metric: str, what: str) -> np.ndarray:
    reps = replicates(row["setting"])
    if reps is None or f"replicate_{metric}" not in reps:
        raise ValueError(f"table {row['table']!r}, row {row['row']!r} ({row['setting']}): {what} ({metric}) lies "
                         f"outside its interval and the setting's bootstrap replicates (replicate_{metric} in its "
                         f".features.npz) are missing; rerun its evaluate job")
    return np.asarray(reps[f"replicate_{metric}"], np.float64)


def _check_paired(row, base, reps: Mapping[str, Any], base_reps: Mapping[str, Any]) -> None:
    where = f"table {row['table']!r}, regime {row['regime']}: row {row['row']!r} ({row['setting']}) vs baseline " \
            f"{base['row']!r} ({base['setting']})"
    if str(reps.get("digest")) != str(base_reps.get("digest")):
        raise ValueError(f"{where}: bootstrap indices differ (digest {reps.get('digest')} vs {base_reps.get('digest')}: "
                         f"another evaluation.bootstrap or sample count); rerun their evaluate jobs")
    if "seeds" in reps and "seeds" in base_reps and not np.array_equal(reps["seeds"], base_reps["seeds"]):
        raise ValueError(f"{where}: samples come from different seeds, so sample i of one does not pair with "
                         f"sample i of the other")


def add_differences(frame: pd.DataFrame) -> pd.DataFrame:
    """``diff_<metric>`` = measured − paper, for every metric both columns have."""
    frame = frame.copy()
    for column in METRICS + ("ice",):
        if column in frame and f"paper_{column}" in frame:
            frame[f"diff_{column}"] = frame[column] - frame[f"paper_{column}"]
    return frame


def _fmt(value, digits: int = 3, rounding: str = "nearest") -> str:
    """``digits`` decimals (significant digits below 1e-3), trailing zeros dropped. ``rounding``
    ``down`` / ``up`` rounds outward, as an interval's ends must be printed: an estimate inside
    its interval then stays inside it once both are printed."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if not isinstance(value, float):
        return str(value)
    small = abs(value) < 1e-3

    def text(v: float) -> str:
        return f"{v:.{digits}g}" if small else f"{v:.{digits}f}".rstrip("0").rstrip(".")

    shown = text(value)
    if rounding == "nearest" or value == 0 or not math.isfinite(value):
        return shown
    quantum = 10.0 ** (math.floor(math.log10(abs(value))) - digits + 1) if small else 10.0 ** -digits
    if rounding == "down" and float(shown) > value:
        shown = text(float(shown) - quantum)
    elif rounding == "up" and float(shown) < value:
        shown = text(float(shown) + quantum)
    return shown


def table_cells(frame: pd.DataFrame, columns: list[str]) -> tuple[list[str], list[list[str]], list[str]]:
    """What a table shows, whatever it is rendered as: the header, one line of cells per paper row
    (the paper's numbers, then each regime's measured numbers and the scale the row's best
    candidate used) and the legend's paragraphs."""
    regimes = list(dict.fromkeys(frame["regime"]))
    columns = with_guided_ice(columns, frame)
    header = ["row"] + [f"paper {_paper_label(c)}" for c in columns if f"paper_{_paper_key(c)}" in frame]
    for regime in regimes:
        header += [f"{regime} {c}" for c in columns] + [f"{regime} scale"]
    lines = []
    for label in dict.fromkeys(frame["row"]):
        part = frame[frame["row"] == label]
        first = part.iloc[0]
        shown = label + (" (baseline)" if bool(first.get("baseline", False)) else "")
        cells = [shown] + [_fmt(first.get(f"paper_{_paper_key(c)}")) for c in columns if f"paper_{_paper_key(c)}" in frame]
        for regime in regimes:
            r = part[part["regime"] == regime]
            if r.empty or r.iloc[0]["status"] != "ok":
                status = "not run" if r.empty else r.iloc[0]["status"]
                cells += [status] + ["–"] * len(columns)
                continue
            r = r.iloc[0]
            cells += [_cell(r, c) for c in columns]
            cells.append(_scale_cell(r))
        lines.append(cells)
    legend = []
    if any(f"{c}_lo" in frame for c in columns):
        legend.append(LEGEND)
    if any("†" in cell for cells in lines for cell in cells):
        legend.append(CORRECTED_LEGEND)
    if "search_trace" in frame:
        edge = "scale_on_edge" in frame and frame["scale_on_edge"].fillna("").astype(bool).any()
        legend.append(SEARCH_LEGEND + ("\n" + EDGE_LEGEND if edge else ""))
    if "ice_guided" in columns:
        legend.append(GUIDED_ICE_LEGEND)
    provenance = provenance_lines(frame)[1:]
    legend += ["\n".join(provenance)] if provenance else []
    return header, lines, legend


def markdown(frame: pd.DataFrame, columns: list[str], title: str) -> str:
    """The table in Markdown (:func:`table_cells`), its legend below it."""
    header, lines, legend = table_cells(frame, columns)
    text = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    text += ["| " + " | ".join(cells) + " |" for cells in lines]
    for paragraph in legend:
        text += ["", paragraph]
    return "\n".join(text) + "\n"


TABLE_STYLE = ("body{font-family:sans-serif;font-size:14px;margin:12px}"
               "table{border-collapse:collapse;white-space:nowrap}"
               "th,td{border:1px solid #bbb;padding:3px 8px;text-align:left}"
               "th{background:#eee}th.paper,td.paper{background:#f3f3fb}"
               "p.legend{font-size:12px;max-width:70em;color:#333}")


PAPER_CLASS = ' class="paper"'


def html_table(frame: pd.DataFrame, columns: list[str], title: str, note: str = "") -> str:
    """The table as a self-contained HTML page (:func:`table_cells`: the same cells as the
    Markdown), the paper's columns shaded beside the measured ones: what the HTML report shows.
    ``note``: a paragraph above the table (e.g. the config's caveat)."""
    from html import escape

    header, lines, legend = table_cells(frame, columns)
    paper = [h.startswith("paper ") for h in header]

    def row(tag: str, cells: list[str]) -> str:
        return "<tr>" + "".join(f"<{tag}{PAPER_CLASS if p else ''}>{escape(c)}</{tag}>"
                                for c, p in zip(cells, paper)) + "</tr>"

    body = [f"<h3>{escape(title)}</h3>"] + ([f'<p class="note">{escape(note)}</p>'] if note else [])
    body += ["<table>", "<thead>" + row("th", header) + "</thead>", "<tbody>"]
    body += [row("td", cells) for cells in lines] + ["</tbody>", "</table>"]
    body += [f'<p class="legend">{escape(p).replace(chr(10), "<br>")}</p>' for p in legend]
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + escape(title) + "</title><style>"
            + TABLE_STYLE + "</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _scale_cell(r) -> str:
    """The scale a row reports: ``w=3`` for a CFG grid, ``10 (edge)`` for a search whose optimum
    sits on the searched range's edge."""
    if "scale" in r and not _isnan(r["scale"]):
        edge = r.get("scale_on_edge")
        return _fmt(r["scale"]) + (" (edge)" if isinstance(edge, str) and edge else "")
    if "best_cfg_scale" in r and not _isnan(r["best_cfg_scale"]):
        return "w=" + _fmt(r["best_cfg_scale"])
    if "best_scale" in r and not _isnan(r["best_scale"]):
        return _fmt(r["best_scale"])
    return "–"
def with_guided_ice(columns: list[str], frame: pd.DataFrame) -> list[str]:
    """``ice_guided`` beside ``ice`` wherever the table measured it (``calibration.trajectories``)."""
    if "ice" not in columns or "ice_guided" not in frame or frame["ice_guided"].isna().all():
        return list(columns)
    at = columns.index("ice") + 1
    return [*columns[:at], "ice_guided", *columns[at:]]


def provenance_lines(frame: pd.DataFrame) -> list[str]:
    """One line per distinct (protocol, extractor, reference) among the table's measured rows, naming
    the rows it covers when the table mixes several: FIDs of different protocols differ by a few
    hundredths, as much as the gaps between the paper's rows."""
    if "fid_protocol" not in frame:
        return []
    measured = frame[frame["fid_protocol"].notna()]
    keys = [k for k in PROVENANCE if k in measured]
    groups = list(measured.groupby(keys, sort=False, dropna=False)) if keys else []
    lines = [""]
    for values, part in groups:
        info = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
        text = (f"FID protocol `{info.get('fid_protocol')}`: extractor `{info.get('feature_extractor', '?')}` "
                f"(sha256 `{info.get('feature_extractor_sha256', '?')}`), reference `{info.get('reference_stats', '?')}` "
                f"(sha256 `{info.get('reference_stats_sha256', '?')}`)")
        if len(groups) > 1:
            text += " for rows " + ", ".join(dict.fromkeys(part["row"]))
        lines.append(text + ".")
    return lines if len(lines) > 1 else []


def cell(r, column: str) -> str:
    """A measured cell as every table writes it (:func:`_cell`), for tables made elsewhere (offshelf.pareto)."""
    return _cell(r, column)


def _cell(r, column: str) -> str:
    """``0.336 [0.31, 0.36] (−0.021*)``: the estimate, its interval where there is one, and the
    paired difference against the baseline row (starred when its interval excludes 0). The
    interval's ends are rounded outward, and an estimate outside its interval is shown as the
    point the interval is built around, marked ``†`` (:func:`add_reported_estimates`); one that
    would still print outside its interval is an error, never a cell."""
    value, corrected = _shown(r, column)
    text = _fmt(value) + ("†" if corrected else "")
    lo, hi = r.get(f"{column}_lo"), r.get(f"{column}_hi")
    if not _isnan(lo) and not _isnan(hi):
        if _outside(value, lo, hi):
            raise ValueError(f"table {r.get('table')!r}, row {r.get('row')!r}, regime {r.get('regime')}: {column} "
                             f"{float(value)} lies outside its interval [{float(lo)}, {float(hi)}]; the table needs its reported "
                             f"estimate (offshelf.tables.add_reported_estimates) before it is printed")
        text += f" [{_fmt(lo, 2, 'down')}, {_fmt(hi, 2, 'up')}]"
    diff, dlo, dhi = (r.get(f"{column}_diff{s}") for s in ("", "_lo", "_hi"))
    if not bool(r.get("baseline", False)) and not any(_isnan(v) for v in (diff, dlo, dhi)):
        diff, corrected = _shown(r, f"{column}_diff")
        if _outside(diff, dlo, dhi):
            raise ValueError(f"table {r.get('table')!r}, row {r.get('row')!r}, regime {r.get('regime')}: {column} "
                             f"difference {float(diff)} lies outside its interval [{float(dlo)}, {float(dhi)}]; the table needs "
                             f"its reported estimate (offshelf.tables.add_reported_estimates) before it is printed")
        sign = "−" if diff < 0 else "+"
        text += f" ({sign}{_fmt(abs(float(diff)))}{'†' if corrected else ''}{'*' if dlo > 0 or dhi < 0 else ''})"
    return text


def _shown(r, column: str) -> tuple[Any, bool]:
    """A cell's estimate and whether it is the corrected one (:func:`add_reported_estimates`)."""
    if f"{column}_shown" in r and not _isnan(r[f"{column}_shown"]):
        return r[f"{column}_shown"], bool(r.get(f"{column}_corrected", False))
    return r.get(column), False


def _paper_label(column: str) -> str:
    return "time (h)" if column == "seconds" else column


def _paper_key(column: str) -> str:
    return "time_h" if column == "seconds" else column


def _isnan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
