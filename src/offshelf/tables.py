"""Paper tables: the measured numbers beside the paper's, per regime, as CSV and Markdown.

Each row of a table sweeps a small grid (guidance scale, or CFG scale) and reports the candidate
with the lowest FID, naming the scale it used. Rows whose jobs have not run say so instead of
being left out.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from offshelf.plan import Row

METRICS = ("fid", "precision", "recall", "accuracy", "seconds")
#: what a metrics file records about how it was measured (ImageNet backends: the FID protocol and
#: the sha256 of the feature extractor and the reference statistics); copied into each report row
PROVENANCE = ("fid_protocol", "feature_extractor", "feature_extractor_sha256", "reference_stats",
              "reference_stats_sha256")


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
        record: dict[str, Any] = {"table": row.table, "row": row.label, "regime": row.regime}
        record.update({f"paper_{k}": v for k, v in row.paper.items()})
        if best is None:
            record["status"] = "not run"
        else:
            record["status"] = "ok"
            record["setting"] = best.name
            if row.sweep_key:
                record[f"best_{row.sweep_key}"] = getattr(best, row.sweep_key)
                record["swept"] = " ".join(f"{getattr(s, row.sweep_key):g}" for s in row.candidates)
            record.update({k: result.get(k, math.nan) for k in METRICS})
            record.update({k: result[k] for k in PROVENANCE if k in result})
        if row.probe is not None:
            record["probe"] = row.probe
            record["ice"] = ice.get(row.probe, math.nan)
        records.append(record)
    return pd.DataFrame(records)


def add_differences(frame: pd.DataFrame) -> pd.DataFrame:
    """``diff_<metric>`` = measured − paper, for every metric both columns have."""
    frame = frame.copy()
    for column in METRICS + ("ice",):
        if column in frame and f"paper_{column}" in frame:
            frame[f"diff_{column}"] = frame[column] - frame[f"paper_{column}"]
    return frame


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


def markdown(frame: pd.DataFrame, columns: list[str], title: str) -> str:
    """One line per paper row: the paper's numbers, then each regime's measured numbers and the
    scale the row's best candidate used."""
    regimes = list(dict.fromkeys(frame["regime"]))
    header = ["row"] + [f"paper {_paper_label(c)}" for c in columns if f"paper_{_paper_key(c)}" in frame]
    for regime in regimes:
        header += [f"{regime} {c}" for c in columns] + [f"{regime} scale"]
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label in dict.fromkeys(frame["row"]):
        part = frame[frame["row"] == label]
        first = part.iloc[0]
        cells = [label] + [_fmt(first.get(f"paper_{_paper_key(c)}")) for c in columns if f"paper_{_paper_key(c)}" in frame]
        for regime in regimes:
            r = part[part["regime"] == regime]
            if r.empty or r.iloc[0]["status"] != "ok":
                status = "not run" if r.empty else r.iloc[0]["status"]
                cells += [status] + ["–"] * len(columns)
                continue
            r = r.iloc[0]
            cells += [_fmt(r.get(c)) for c in columns]
            scale = next((r[k] for k in ("best_scale", "best_cfg_scale") if k in r and not _isnan(r[k])), None)
            cells.append(("w=" if "best_cfg_scale" in r and not _isnan(r.get("best_cfg_scale")) else "") + _fmt(scale)
                         if scale is not None else "–")
        lines.append("| " + " | ".join(cells) + " |")
    lines += provenance_lines(frame)
    return "\n".join(lines) + "\n"


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


def _paper_label(column: str) -> str:
    return "time (h)" if column == "seconds" else column


def _paper_key(column: str) -> str:
    return "time_h" if column == "seconds" else column


def _isnan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
