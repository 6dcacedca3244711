"""The documentation's code blocks run (tests/doc_blocks.py: the markers), and the results page's
generated part is the workflow's to write and nothing else (offshelf.results_doc)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from doc_blocks import NEEDS, REPO, RUNNABLE, all_blocks, block_environment, blocks, repo_view
from offshelf.config import ConfigError, validate_config
from offshelf.results_doc import BEGIN, END, ResultsDocError, check_results_doc, publish, report_tables

BLOCKS = all_blocks()
# A shell line that starts Snakemake (directly, through make, or through offshelf's wrapper) belongs
# to a workflow test: the unit tests never start it (tests/unit/test_architecture.py).
STARTS_SNAKEMAKE = re.compile(r"(^|[\s/;&|(])(snakemake|make|offshelf resume)(\s|$)", re.M)
BLOCK_TIMEOUT_S = 120


def unmarked(language: str) -> list:
    return [b for b in BLOCKS if b.language == language and not b.needs and "runs" not in b.marks]


def problems(block) -> list[str]:
    """Why a block is neither run nor properly marked (empty: it is)."""
    found = []
    if not block.language:
        found.append("a fence without a language: say what the block is (python, bash, yaml, json, text)")
    if block.language not in RUNNABLE | {"yaml", "json", "text"}:
        found.append(f"language {block.language!r}: expected python, bash, yaml, json or text")
    unknown = set(block.marks) - {"needs", "runs", "test", "file"}
    if unknown:
        found.append(f"unknown marker key(s) {sorted(unknown)}: expected needs, runs, test, file")
    if block.needs - NEEDS:
        found.append(f"needs {sorted(block.needs - NEEDS)}: expected some of {sorted(NEEDS)}")
    if "runs" in block.marks:
        if block.marks["runs"] != "workflow":
            found.append(f"runs: {block.marks['runs']!r}: expected 'workflow'")
        test = block.marks.get("test", "")
        file, _, function = test.partition("::")
        path = REPO / "tests" / "workflow" / file
        if not (function and path.is_file() and re.search(rf"^def {re.escape(function)}\(", path.read_text(), re.M)):
            found.append(f"runs: workflow names test {test!r}, which is no function of tests/workflow/ "
                         "(expected test: FILE::FUNCTION)")
    elif "test" in block.marks:
        found.append("test: without runs: workflow")
    if block.language == "bash" and not block.needs and "runs" not in block.marks \
            and STARTS_SNAKEMAKE.search(block.text):
        found.append("starts Snakemake: mark it runs: workflow and run it from a test in tests/workflow/")
    return found


def test_every_code_block_is_run_or_marked():
    assert len(BLOCKS) > 20 and {b.path for b in BLOCKS} >= {"README.md", "docs/backends.md", "docs/results.md"}
    bad = {b.where: problems(b) for b in BLOCKS if problems(b)}
    assert not bad, bad


def test_the_marker_check_refuses_what_it_should(tmp_path):
    """The convention's refusals, on a page made for the purpose."""
    page = tmp_path / "page.md"
    page.write_text("```\nno language\n```\n\n<!-- runs: workflow; test: test_nothing.py::nope -->\n```bash\nls\n```\n\n"
                    "```bash\nsnakemake --cores 1\n```\n\n<!-- needs: quantum -->\n```python\npass\n```\n\n"
                    "<!-- needs: gpu, download -->\n```bash\nnvidia-smi\n```\n")
    found = [problems(b) for b in blocks(page, tmp_path)]
    assert "without a language" in found[0][0]
    assert "no function of tests/workflow/" in found[1][0]
    assert "starts Snakemake" in found[2][0]
    assert "needs ['quantum']" in found[3][0]
    assert found[4] == []


def _saved_files(path: str, folder: Path) -> None:
    """The page's ``file:`` yaml blocks, saved for its other blocks (``my_overrides.yaml``...)."""
    for block in BLOCKS:
        if block.path == path and "file" in block.marks and "runs" not in block.marks:
            (folder / block.marks["file"]).write_text(block.text)


def _run(command: list[str], block, folder: Path) -> None:
    repo_view(folder)
    _saved_files(block.path, folder)
    proc = subprocess.run(command, cwd=folder, env=block_environment(), capture_output=True, text=True,
                          timeout=BLOCK_TIMEOUT_S)
    assert proc.returncode == 0, f"{block.where} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("block", unmarked("python"), ids=lambda b: b.where)
def test_python_block_runs(block, tmp_path):
    _run([sys.executable, "-c", block.text], block, tmp_path)


@pytest.mark.parametrize("block", unmarked("bash"), ids=lambda b: b.where)
def test_shell_block_runs(block, tmp_path):
    _run(["bash", "-euo", "pipefail", "-c", block.text], block, tmp_path)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.language in ("yaml", "json")], ids=lambda b: b.where)
def test_data_block_parses(block):
    data = json.loads(block.text) if block.language == "json" else yaml.safe_load(block.text)
    assert isinstance(data, dict), block.where


def test_a_failing_block_fails_its_test(tmp_path):
    """The runner reports a block's failure (exit status, and the traceback's last lines)."""
    page = tmp_path / "page.md"
    page.write_text("```python\nraise SystemExit('the documented call broke')\n```\n")
    (block,) = blocks(page, tmp_path)
    with pytest.raises(AssertionError, match="the documented call broke"):
        _run([sys.executable, "-c", block.text], block, tmp_path / "run")


def test_the_plugin_page_shows_the_plugin_the_tests_use():
    """docs/backends.md's module is tests/plugin/toy_backend.py, verbatim: the page's example and the
    unit tests' plug-in (test_backends_capabilities.py) cannot drift apart."""
    (module,) = [b for b in BLOCKS if b.marks.get("file") == "toy_backend.py"]
    assert module.path == "docs/backends.md"
    assert module.text == (REPO / "tests" / "plugin" / "toy_backend.py").read_text()


# ---------------------------------------------------------------- the results page (offshelf.results_doc)

REPORT = """# offshelf report: digits

Backbone `digits`: 500 samples per setting.

Samples judged by: the evaluation network.

## Networks

| network | training config | held-out metrics |
|---|---|---|
| denoiser | width 32 | loss 0.1 |

**Table 1: Recurrent guidance (500 samples)**

| row | cond fid |
|---|---|
| baseline (baseline) | 0.43 [0.3, 0.5] |

Cells: estimate [95% bootstrap interval].
CSV: [table1.csv](table1.csv)

*Samples, Table 1*: one line per class (0, 1), the first 2 seeds of each class.

| row | cond |
|---|---|
| baseline | ![baseline, cond](samples/table1/01-cond.png) |

**Table 2: ReLU vs Softplus (500 samples)**

| row | cond fid |
|---|---|
| ReLU (baseline) | 0.41 [0.3, 0.5] |

CSV: [table2.csv](table2.csv)

## Figures

![figure1](../figures/figure1.png)

A caption under the figure.
"""


def test_report_tables_keep_text_and_tables_and_drop_what_only_the_report_folder_holds():
    text = report_tables(REPORT)
    for kept in ("### offshelf report: digits", "#### Networks", "| denoiser | width 32 | loss 0.1 |",
                 "**Table 1: Recurrent guidance (500 samples)**", "| baseline (baseline) | 0.43 [0.3, 0.5] |",
                 "Cells: estimate [95% bootstrap interval].", "**Table 2: ReLU vs Softplus (500 samples)**",
                 "| ReLU (baseline) | 0.41 [0.3, 0.5] |"):
        assert kept in text, kept
    for dropped in ("CSV:", "![", "*Samples", "| row | cond |\n", "Figures", "caption"):
        assert dropped not in text, dropped
    assert "\n\n\n" not in text and text.endswith("|\n")


def test_publish_rewrites_only_between_the_markers(tmp_path):
    report = tmp_path / "README.md"
    report.write_text(REPORT)
    page = tmp_path / "results.md"
    before, after = "# Results\n\nWritten by hand.\n\n", "\n## Findings\n\nTable 1 shows 0.43.\n"
    page.write_text(f"{before}{BEGIN}\nthe old tables\n{END}\n{after}")
    publish(report, page)
    text = page.read_text()
    assert text.startswith(f"{before}{BEGIN}\n") and text.endswith(f"\n{END}\n{after}")
    assert "the old tables" not in text and "| baseline (baseline) | 0.43 [0.3, 0.5] |" in text
    publish(report, page)  # a second run changes nothing
    assert page.read_text() == text


PARETO = """# offshelf: quality per unit of compute (digits)

Made by `snakemake pareto`. 500 samples per method.

**FID against compute (500 samples per method)**

| regime | method | FID | denoiser | front |
|---|---|---|---|---|
| cond | calibrated guidance (baseline) | 0.361 [0, 0.44] | 25 | yes |

CSV: [pareto.csv](pareto.csv)

![FID against denoiser evaluations per sample](pareto.png)
"""


def test_publish_adds_the_pareto_reports_tables_after_the_reports(tmp_path):
    """Where `all` makes the pareto target (pareto_in_all), the page shows its table too, after the
    report's, and without what only its folder holds (the figure, the CSV link)."""
    report, pareto, page = tmp_path / "README.md", tmp_path / "pareto.md", tmp_path / "results.md"
    report.write_text(REPORT)
    pareto.write_text(PARETO)
    page.write_text(f"# Results\n\n{BEGIN}\n{END}\n")
    publish(report, page, pareto)
    text = page.read_text()
    tables, rest = text.index("**Table 2: ReLU vs Softplus"), text.index("### offshelf: quality per unit of compute")
    assert tables < rest < text.index("| cond | calibrated guidance (baseline) | 0.361 [0, 0.44] | 25 | yes |") < text.index(END)
    assert "pareto.png" not in text and "pareto.csv" not in text
    publish(report, page)  # without it, the report's tables alone
    assert "quality per unit of compute" not in page.read_text()


@pytest.mark.parametrize("content, found", [("# Results\n", "(found 0 and 0)"),
                                            (f"{BEGIN}\n{END}\n{BEGIN}\n{END}\n", "(found 2 and 2)"),
                                            (f"{END}\n{BEGIN}\n", "(found 1 and 1)")])
def test_a_page_without_one_pair_of_markers_is_refused(tmp_path, content, found):
    page = tmp_path / "results.md"
    page.write_text(content)
    with pytest.raises(ResultsDocError, match=re.escape(found)):
        check_results_doc(page)
    report = tmp_path / "README.md"
    report.write_text(REPORT)
    with pytest.raises(ResultsDocError):
        publish(report, page)
    assert page.read_text() == content  # untouched


def test_the_config_check_names_the_key(tmp_path, monkeypatch):
    """config.yaml's page is checked with the config, before any job: one line naming the key."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    assert config["results_doc"] == "docs/results.md"
    check_results_doc(REPO / config["results_doc"])  # the shipped page holds its markers
    monkeypatch.chdir(tmp_path)  # a mapping read from no file: its page is read from here, with no docs/
    config["results"] = str(tmp_path / "results")
    with pytest.raises(ConfigError, match=r"^config key 'results_doc' = 'docs/results.md': no such file"):
        validate_config(config)
