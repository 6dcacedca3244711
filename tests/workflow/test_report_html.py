"""The sample grids in the reports, seen in a browser: `snakemake --report` embeds one grid per
reported table row (category Samples, one subcategory per table), and headless Chromium renders
one of them on screen, pixel for pixel.

How the screenshot is made to show a grid: Snakemake's report is a single HTML page whose React
app starts on the rule graph and shows a result only after a click. The test appends one script
to a copy of the page that does what clicking a result does (``app.setView({content: "img",
contentPath: <the result's data URI>, ...})``, as ``result_view_button.js``), once the app is up,
and lets Chromium run the page's timers before the screenshot (``--virtual-time-budget``). The
screenshot must then contain the grid's exact pixels, found by search: a blank or still-loading
page, or a scaled or missing image, fails.

Chromium: the Debian package ``chromium``. Without it the browser test skips, unless
``OFFSHELF_REQUIRE_CHROMIUM`` is set (CI sets it, .ci/run installs the package): then it fails.
"""

import base64
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml

from offshelf.grids import read_layout
from workflow_utils import REPO, snakemake

pytestmark = pytest.mark.slow
CI = REPO / "config" / "ci.yaml"
WINDOW = (1400, 1000)


def chromium() -> str:
    path = shutil.which("chromium")
    if path:
        return path
    if os.environ.get("OFFSHELF_REQUIRE_CHROMIUM"):
        pytest.fail("OFFSHELF_REQUIRE_CHROMIUM is set but `chromium` is not on PATH: install the Debian package "
                    "(apt-get install -y chromium)")
    pytest.skip("headless Chromium absent (Debian package `chromium`); set OFFSHELF_REQUIRE_CHROMIUM=1 to fail instead")


@pytest.fixture(scope="module")
def html_report(ci_run, tmp_path_factory):
    """The `snakemake --report` page of the ci workflow's run (conftest.py's ci_run, shared with
    test_workflow_e2e.py)."""
    html = tmp_path_factory.mktemp("report_html") / "report.html"
    snakemake("--configfile", str(CI), "--config", f"results={ci_run}", "--report", str(html))
    return ci_run / "ci", html


def script_json(html: str, name: str, variable: str):
    """A JSON object the report page assigns in its ``<script id=name>var variable = {...};``."""
    match = re.search(rf'<script id="{name}">\s*var {variable} = (.*?);\s*</script>', html, flags=re.S)
    assert match, f"report page has no <script id={name!r}>"
    return json.loads(match.group(1))


def decode_data_uri(uri: str) -> bytes:
    """The bytes of a PNG data URI (Snakemake writes ``data:image/png;charset=utf8;filename=...;base64,...``)."""
    match = re.fullmatch(r"data:image/png;(?:[^,;]+;)*base64,([A-Za-z0-9+/=]+)", uri)
    assert match, f"not a base64 PNG data URI: {uri[:100]}"
    return base64.b64decode(match.group(1))


def reported_rows(exp):
    """(table, 1-based row position, label, regime) of every table row the report shows numbers for."""
    config = yaml.safe_load(CI.read_text())
    rows = []
    for table, spec in config["tables"].items():
        frame = pd.read_csv(exp / "report" / f"{table}.csv")
        for position, row in enumerate(spec["rows"], start=1):
            for regime in config["regimes"]:
                line = frame[(frame["row"] == row["label"]) & (frame["regime"] == regime)].iloc[0]
                if line["status"] == "ok":
                    rows.append((table, position, row["label"], regime, line["setting"]))
    return rows


def test_every_reported_row_has_its_grid_embedded(html_report):
    exp, html = html_report
    text = html.read_text()
    results, categories = script_json(text, "results", "results"), script_json(text, "categories", "categories")
    rows = reported_rows(exp)
    assert rows, "the ci report shows no row"
    samples = {path: entry for path, entry in results.items() if "/report/samples/" in path}
    assert len(samples) == len(rows)  # one per reported row, nothing else
    config = yaml.safe_load(CI.read_text())
    for table, position, label, regime, setting in rows:
        path = str(exp / "report" / "samples" / table / f"{position:02d}-{regime}.png")
        entry = samples[path]
        assert entry["labels"] == {"row": label, "regime": regime}
        embedded = decode_data_uri(entry["data_uri"])
        assert embedded == (exp / "grids" / f"{setting}.png").read_bytes(), f"{table} / {label} / {regime}"
        subcategory = f"Table {table.removeprefix('table')}: {config['tables'][table]['title']}"
        assert path in categories["Samples"][subcategory]
    markdown = (exp / "report" / "README.md").read_text()
    for table, position, label, regime, _ in rows:
        assert f"![{label}, {regime}](samples/{table}/{position:02d}-{regime}.png)" in markdown


def test_grids_of_two_settings_show_the_same_seeds_per_line(html_report):
    """On the real shards: every setting's grid holds the same seeds on each line, and each seed's
    label in its shard is the line's class."""
    exp, _ = html_report
    layouts = {p.stem: read_layout(p) for p in sorted((exp / "grids").glob("*.png"))}
    assert len(layouts) > 2
    first = next(iter(layouts.values()))
    assert all(layout["seeds"] == first["seeds"] and layout["missing"] == 0 for layout in layouts.values())
    for setting in list(layouts)[:2]:
        with np.load(exp / "samples" / setting / "shard0.npz") as shard:
            label = dict(zip(shard["seeds"].tolist(), shard["arr_1"].tolist()))
        for c, line in zip(first["classes"], first["seeds"]):
            assert all(label[s] == c for s in line), (setting, c, line)


SHOW_RESULT = """
<script>
// What clicking the result's view button does (result_view_button.js), once the React app is up.
const offshelfShow = setInterval(function () {
  if (typeof app === "undefined" || app === undefined) return;
  clearInterval(offshelfShow);
  const path = %(path)s;
  app.setView({navbarMode: "subcategory", category: "Samples", subcategory: %(subcategory)s,
               content: "img", contentPath: results[path].data_uri, resultPath: path});
}, 50);
</script>
"""


def find(screen: np.ndarray, image: np.ndarray, tolerance: int = 2) -> list[tuple[int, int]]:
    """Top-left corners where ``image`` appears in ``screen`` (each channel within ``tolerance``)."""
    sh, sw, _ = screen.shape
    h, w, _ = image.shape
    if h > sh or w > sw:
        return []
    screen, image = screen.astype(np.int16), image.astype(np.int16)
    probes = np.random.default_rng(0).integers(0, [h, w], size=(64, 2))
    candidates = np.ones((sh - h + 1, sw - w + 1), bool)
    for y, x in probes:  # cheap filter: a few pixels of the image at every offset
        window = screen[y:y + sh - h + 1, x:x + sw - w + 1]
        candidates &= (np.abs(window - image[y, x]) <= tolerance).all(axis=-1)
    return [(int(y), int(x)) for y, x in zip(*np.nonzero(candidates))
            if (np.abs(screen[y:y + h, x:x + w] - image) <= tolerance).all()]


def test_chromium_shows_a_rows_grid(html_report, tmp_path):
    browser = chromium()
    exp, html = html_report
    config = yaml.safe_load(CI.read_text())
    table, position, regime = "table7", 1, "cond"  # the unguided baseline
    path = str(exp / "report" / "samples" / table / f"{position:02d}-{regime}.png")
    subcategory = f"Table 7: {config['tables'][table]['title']}"
    page = tmp_path / "view.html"
    inject = SHOW_RESULT % {"path": json.dumps(path), "subcategory": json.dumps(subcategory)}
    head, tag, tail = html.read_text().rpartition("</body>")  # the page's own: bundled scripts hold the text too
    page.write_text(head + inject + tag + tail)
    shot = tmp_path / "shot.png"
    headless = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                "--force-device-scale-factor=1", "--force-color-profile=srgb",
                f"--window-size={WINDOW[0]},{WINDOW[1]}", "--virtual-time-budget=10000"]
    proc = subprocess.run(headless + [f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and shot.is_file(), f"chromium failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    from PIL import Image

    screen = np.asarray(Image.open(shot).convert("RGB"))
    assert screen.shape == (WINDOW[1], WINDOW[0], 3)
    assert screen.std() > 10, "blank screenshot"
    grid = np.asarray(Image.open(path).convert("RGB"))
    found = find(screen, grid)
    assert len(found) == 1, f"the grid ({grid.shape[1]}x{grid.shape[0]} px) appears {len(found)} times on screen"

    # The rendered page (not the source): the grid's own data URI in an <img>, and the table's rows
    # listed beside it in the Samples navigation.
    dom = subprocess.run(headless + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=300).stdout
    data_uri = script_json(html.read_text(), "results", "results")[path]["data_uri"]
    assert decode_data_uri(data_uri) == open(path, "rb").read() and f'<img src="{data_uri}">' in dom
    app = dom[dom.index('<div id="app">'):]
    rendered = app[:app.index("<script")]  # the app's markup, not the page's data scripts after it
    for row in config["tables"][table]["rows"]:
        assert row["label"] in rendered, row["label"]
