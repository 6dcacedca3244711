"""The generated part of a results page (``docs/results.md``): the report's tables, copied by the
workflow's ``publish_results`` rule between two marker lines, so that ``make run`` refreshes the
numbers the page shows and the page's own text (how they were made, what they show) stays as
written.

The page is both hand-written and generated, so it is not an output in the usual sense: the
workflow owns the lines between :data:`BEGIN` and :data:`END` and nothing else. It rewrites them
atomically, leaves every other line as it was, and refuses to touch a page that lacks the markers
(checked with the config, before any job runs: config key ``results_doc``).
"""

from __future__ import annotations

import re
from pathlib import Path

from offshelf.atomic import save_text

BEGIN = "<!-- BEGIN results: written by the workflow (publish_results rule, `make run`); edit outside these markers -->"
END = "<!-- END results -->"


class ResultsDocError(ValueError):
    """A results page the workflow cannot update (missing, or without exactly one pair of markers)."""


def marker_span(text: str, where: str) -> tuple[int, int]:
    """The character span of the generated part (between the marker lines, markers excluded)."""
    begins = [m.end() for m in re.finditer(re.escape(BEGIN) + r"\n", text)]
    ends = [m.start() for m in re.finditer(r"^" + re.escape(END) + r"$", text, flags=re.M)]
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise ResultsDocError(f"{where}: expected one line {BEGIN!r} and, below it, one line {END!r} "
                              f"(found {len(begins)} and {len(ends)}): the workflow writes only between them")
    return begins[0], ends[0]


def check_results_doc(path: str | Path, key: str = "results_doc") -> None:
    """Refuse, before any job runs, a results page the workflow could not update."""
    where = f"config key {key!r} = {str(path)!r}"
    if not Path(path).is_file():
        raise ResultsDocError(f"{where}: no such file (a config file's relative results_doc is read "
                              f"from that file's folder); expected a "
                              f"Markdown page holding the marker lines {BEGIN!r} and {END!r}")
    marker_span(Path(path).read_text(), where)


def report_tables(report_text: str) -> str:
    """What a results page shows of a Markdown report (offshelf.report.write_report): its text and
    tables, headings two levels down (the page's title and its section hold them), without what only the report's
    folder holds: images (figures, sample grids), the Samples sections and the CSV links."""
    kept, skipping = [], None
    for line in report_text.splitlines():
        if line.startswith("#"):
            skipping = "figures" if line.lstrip("#").strip().lower().startswith("figures") else None
            if skipping is None:
                kept.append("##" + line)
            continue
        if skipping == "figures":
            continue
        if skipping == "samples":  # its caption line, then its table of grids: up to the next text
            if line.startswith("|") or not line.strip():
                kept.append("")
                continue
            skipping = None
        if line.startswith("*Samples"):
            skipping = "samples"
            continue
        if line.startswith("CSV: [") or line.lstrip().startswith("!["):
            continue
        kept.append(line)
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()
    return text + "\n"


def publish(report_path: str | Path, doc_path: str | Path, pareto_path: str | Path | None = None) -> Path:
    """Replace the generated part of ``doc_path`` by :func:`report_tables` of the report at
    ``report_path``, followed by those of the pareto target's report (``pareto_path``, where the
    run made it: ``pareto_in_all``); every line outside the markers is kept byte for byte."""
    doc = Path(doc_path)
    text = doc.read_text()
    start, end = marker_span(text, str(doc))
    tables = report_tables(Path(report_path).read_text())
    if pareto_path is not None:
        tables += "\n" + report_tables(Path(pareto_path).read_text())
    return save_text(doc, text[:start] + f"\n{tables}\n" + text[end:])
