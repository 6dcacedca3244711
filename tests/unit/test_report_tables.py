"""What a report table prints (offshelf.tables, offshelf.statistics.interval_centre): every cell's
estimate inside its own printed interval, and the same cells in Markdown and in the HTML page the
HTML report shows."""

import math
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from offshelf import statistics
from offshelf.statistics import METHODS, interval, interval_centre, intervals
from offshelf.tables import (CORRECTED_LEGEND, INTERVAL_METRICS, add_paired_differences, add_reported_estimates,
                             html_table, markdown, table_cells)

#: ``estimate[†] [lo, hi]`` at the start of a cell (Markdown and HTML print the same text).
CELL = re.compile(r"^(-?[0-9.e+-]+)(†?) \[(-?[0-9.e+-]+), (-?[0-9.e+-]+)\]")


def test_interval_centre_lies_in_its_interval_where_the_estimate_does_not():
    """Property over seeded draws of every interval method, clipped or not, skewed, heavy-tailed:
    the centre lies in the interval of the same replicates. The draws include the cases the
    estimate itself misses (a large upward bias reflected by the basic interval) and replicates
    whose *mean* lies outside their 2.5-97.5 % range (one outlier among 200), where a mean-based
    correction would miss too."""
    rng = np.random.default_rng(0)
    missed_by_estimate = missed_by_mean = 0
    for draw in range(3000):
        point = float(rng.uniform(0, 1))
        spread = float(rng.uniform(0.001, 0.5))
        replicates = point + float(rng.uniform(-0.2, 0.8)) + spread * rng.standard_gamma(rng.uniform(0.3, 3), 200)
        if draw % 10 == 0:
            replicates[0] = 1e6  # one outlier: drags the mean above the 97.5 % quantile
        method = ("basic", "percentile", "centred")[draw % 3]
        bounds = ((0.0, np.inf), (-np.inf, np.inf), (0.0, 1.0))[draw % 3 if draw % 7 else 1]
        lo, hi = interval(point, replicates, method, bounds=bounds)
        centre = interval_centre(point, replicates, method, bounds)
        assert lo <= centre <= hi, (draw, method, point, lo, hi, centre)
        missed_by_estimate += not lo <= point <= hi
        if method == "basic":
            missed_by_mean += not lo <= max(2 * point - replicates.mean(), 0.0) <= hi
    assert missed_by_estimate > 100 and missed_by_mean > 10  # the cases the property is about do occur


def _fid_row(row: str, setting: str, point: float, replicates: np.ndarray, baseline: bool = False) -> dict:
    """A table row whose FID interval comes from ``replicates`` as the evaluate job makes it."""
    out = {"table": "t", "row": row, "regime": "cond", "baseline": baseline, "status": "ok", "setting": setting,
           "fid": point, "paper_fid": 5.0}
    out.update(intervals({"fid": point}, {"fid": replicates}))
    return out


def test_a_biased_fid_prints_its_bias_corrected_estimate_inside_its_interval():
    """The issue's cell: FID 0.315 whose bootstrap FIDs sit well above it, so the basic interval
    (bias-corrected) is [0, 0.31]. Printed as it is, the cell read ``0.315 [0, 0.31]``; now it
    shows the bias-corrected estimate, marked †, and the legend says so."""
    rng = np.random.default_rng(1)
    replicates = 0.33 + 0.005 * rng.standard_normal(200)  # median ≈ 0.33: bias ≈ +0.015
    row = _fid_row("biased", "B", 0.315, replicates, baseline=True)
    assert row["fid_hi"] < 0.315  # the interval lies below the estimate
    frame = pd.DataFrame([row])
    with pytest.raises(ValueError, match=r"row 'biased'.*fid 0.315 lies outside its interval"):
        markdown(frame, ["fid"], "T")  # never printed as it is
    frame = add_reported_estimates(frame, {"B": {"replicate_fid": replicates}}.get)
    assert frame.loc[0, "fid_corrected"] and frame.loc[0, "fid"] == 0.315  # the CSV keeps the plain estimate
    corrected = 2 * 0.315 - np.median(replicates)
    assert frame.loc[0, "fid_shown"] == pytest.approx(corrected)
    text = markdown(frame, ["fid"], "T")
    lo, hi = frame.loc[0, "fid_lo"], frame.loc[0, "fid_hi"]
    cell = text.splitlines()[4].split(" | ")[2]
    assert cell == f"{corrected:.3f}".rstrip("0") + f"† [{math.floor(lo * 100) / 100:g}, {math.ceil(hi * 100) / 100:g}]"
    assert CORRECTED_LEGEND in text


def test_a_cell_outside_its_interval_without_replicates_is_an_error_naming_the_row():
    row = _fid_row("biased", "B", 0.315, 0.33 + np.zeros(200), baseline=True)
    with pytest.raises(ValueError, match=r"row 'biased' \(B\).*replicate_fid.*rerun its evaluate job"):
        add_reported_estimates(pd.DataFrame([row]), {}.get)


def test_interval_ends_are_rounded_outward():
    """An estimate a hair inside its interval stays inside once printed: 0.31495 [0.3, 0.31497]
    printed nearest-rounded read 0.315 [0.3, 0.31]."""
    frame = pd.DataFrame([{"table": "t", "row": "r", "regime": "cond", "baseline": True, "status": "ok", "setting": "A",
                           "fid": 0.31495, "fid_lo": 0.30001, "fid_hi": 0.31497}])
    cell = markdown(frame, ["fid"], "T").splitlines()[4].split(" | ")[1]
    assert cell == "0.315 [0.3, 0.32]"


def _cells(text: str) -> list[str]:
    return [c.strip() for line in text.splitlines() if line.startswith("| ") and not line.startswith("| row")
            for c in line.strip("| \n").split(" | ")]


def random_table(seed: int) -> tuple[pd.DataFrame, dict]:
    """Rows of every interval metric with replicates like an evaluate job's: FID biased upward by
    up to a few times its spread (so some basic intervals miss their estimate), rates near 0 and 1."""
    rng = np.random.default_rng(seed)
    rows, reps = [], {}
    for i in range(6):
        setting = f"S{i}"
        point, rep = {}, {}
        fid = float(rng.uniform(0.01, 3))
        rep["fid"] = fid + float(rng.uniform(0, 0.1)) + float(rng.uniform(0.001, 0.05)) * rng.standard_normal(200)
        point["fid"] = fid
        for metric in ("precision", "recall", "accuracy"):
            p = float(rng.choice([rng.uniform(0.9, 1), rng.uniform(0, 0.1), rng.uniform(0, 1)]))
            point[metric] = p
            rep[metric] = np.clip(p + float(rng.uniform(-0.02, 0.02)) + 0.02 * rng.standard_normal(200), 0, 1)
        row = {"table": "t", "row": f"design {i % 3}", "regime": ("cond", "uncond")[i // 3], "baseline": i % 3 == 0,
               "status": "ok", "setting": setting, "paper_fid": 5.0, **point}
        row.update(intervals(point, rep))
        rows.append(row)
        reps[setting] = {f"replicate_{k}": v for k, v in rep.items()} | {"digest": "d"}
    return pd.DataFrame(rows), reps


@pytest.mark.parametrize("seed", range(20))
def test_every_printed_cell_lies_in_its_printed_interval(seed):
    """Property: for every cell of a table (Markdown and HTML), estimate ∈ [lo, hi] as printed;
    every paired difference inside its own interval (so its printed sign agrees with its star)."""
    frame, reps = random_table(seed)
    frame = add_reported_estimates(add_paired_differences(frame, reps.get), reps.get)
    columns = list(INTERVAL_METRICS)
    text = markdown(frame, columns, "T")
    checked = 0
    for cell in _cells(text):
        match = CELL.match(cell)
        if match:
            estimate, _, lo, hi = match.groups()
            assert float(lo) <= float(estimate) <= float(hi), cell
            checked += 1
    assert checked == len(frame) * len(columns)
    for metric in columns:  # a difference's sign (and so its star) is that of its interval
        shown, lo, hi = frame[f"{metric}_diff_shown"], frame[f"{metric}_diff_lo"], frame[f"{metric}_diff_hi"]
        assert ((lo <= shown) & (shown <= hi)).all()
    header, lines, _ = table_cells(frame, columns)
    assert _html_cells(html_table(frame, columns, "T")) == [header, *lines]


def test_the_random_tables_exercise_corrected_cells():
    """The property above is not vacuous: some of its cells are corrected ones."""
    corrected = 0
    for seed in range(20):
        frame, reps = random_table(seed)
        frame = add_reported_estimates(add_paired_differences(frame, reps.get), reps.get)
        corrected += int(sum(frame[f"{m}_corrected"].sum() for m in INTERVAL_METRICS))
    assert corrected > 5


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append(self._cell)
            self._cell = None


def _html_cells(page: str) -> list[list[str]]:
    parser = _Cells()
    parser.feed(page)
    return parser.rows


def test_the_html_page_shows_the_markdown_tables_cells_with_the_paper_beside():
    frame, reps = random_table(3)
    frame = add_reported_estimates(add_paired_differences(frame, reps.get), reps.get)
    page = html_table(frame, ["fid"], "Table 7: title & <more>", note="Tiny models: undertrained.")
    rows = _html_cells(page)
    assert rows[0] == ["row", "paper fid", "cond fid", "cond scale", "uncond fid", "uncond scale"]
    markdown_rows = [line.strip("| \n").split(" | ") for line in markdown(frame, ["fid"], "T").splitlines()[4:7]]
    assert rows[1:] == markdown_rows and rows[1][1] == "5"
    assert "<h3>Table 7: title &amp; &lt;more&gt;</h3>" in page and "Tiny models: undertrained." in page
    assert '<th class="paper">paper fid</th>' in page and statistics.LEVEL == 0.95


def test_the_markdown_report_folder_holds_every_image_it_shows(tmp_path):
    """write_report copies the figures into the report folder and links them there: the folder
    copied alone still shows them (it linked ../figures/, outside it). Each table also gets its
    HTML page, and the config's report_note opens both."""
    import json
    import shutil

    from offshelf.config import read_yaml, validate_config
    from offshelf.report import write_report
    from workflow_utils import REPO

    config = validate_config(read_yaml(REPO / "config" / "ci.yaml"))
    assert "undertrained" in config["report_note"]
    metrics = tmp_path / "metrics" / "cond_unguided.json"
    metrics.parent.mkdir()
    metrics.write_text(json.dumps({"fid": 1.0, "n": 64}))
    figures = []
    for name in ("figure1", "figure3"):
        figures.append(tmp_path / "figures" / f"{name}.png")
        figures[-1].parent.mkdir(exist_ok=True)
        figures[-1].write_bytes(name.encode())  # bytes to compare, not an image to look at
    out = tmp_path / "exp" / "report" / "README.md"
    write_report(config, [str(metrics)], [], [str(f) for f in figures], str(out), "ci")
    copy = tmp_path / "elsewhere" / "report"
    shutil.copytree(out.parent, copy)
    text = (copy / "README.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links == ["figures/figure1.png", "figures/figure3.png"]
    assert [(copy / link).read_bytes() for link in links] == [b"figure1", b"figure3"]
    assert "*Figure 3*" in text and text.index("**Note.**") < text.index("## Figures")
    for table in config["tables"]:
        page = (copy / "tables" / f"{table}.html").read_text()
        assert "<table>" in page and "not meant to look like digits" in page, table
