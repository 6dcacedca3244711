"""The package's shape: its import graph has no cycle (counting imports inside functions, which is
where a cycle hides), and the installed ``offshelf`` command and each subcommand answer --help."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
OFFSHELF = Path(sys.executable).with_name("offshelf")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the offshelf modules it imports anywhere in its source (``from a import b`` counts
    ``a.b`` when that is a module, else ``a``)."""
    modules = {module_name(p): p for p in (SRC / "offshelf").rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
                for alias in node.names:
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 30 and "offshelf.backends.base" in graph["offshelf.backends.digits"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("args", [[], ["sample"], ["calibrate"], ["evaluate"], ["plan"], ["tune"], ["checkpoints"], ["check-config"],
                                  ["checkpoints", "fetch"], ["checkpoints", "verify"], ["checkpoints", "list"],
                                  ["text2image"], ["resume"]])
def test_every_command_answers_help(args):
    proc = subprocess.run([str(OFFSHELF), *args, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: offshelf" in proc.stdout


def test_one_entry_point():
    """``offshelf`` (offshelf.cli.main, also ``python -m offshelf``) is the only command line: no
    other module of the package defines ``main`` or runs as ``__main__``."""
    mains = []
    for path in (SRC / "offshelf").rglob("*.py"):
        tree = ast.parse(path.read_text())
        mains += [f"{module_name(path)}.main" for node in tree.body
                  if isinstance(node, ast.FunctionDef) and node.name == "main"]
        mains += [f"{module_name(path)}: __main__" for node in tree.body if isinstance(node, ast.If)
                  and "__main__" in ast.unparse(node.test) and path.name != "cli.py"]
    assert mains == ["offshelf.cli.main"], mains
    proc = subprocess.run([sys.executable, "-m", "offshelf", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "usage: offshelf" in proc.stdout, proc.stderr


@pytest.mark.parametrize("args, argument", [
    (["--backend", "nope", "--setting", "regime=cond", "--seeds", "2"], "--backend: 'nope'"),
    (["--backend", "digits", "--setting", "regime=cond,bogus=1", "--seeds", "2"], "--setting: unknown setting key"),
    (["--backend", "digits", "--setting", "regime=sideways", "--seeds", "2"], "--setting: setting key 'regime'"),
    (["--backend", "digits", "--setting", "regime=cond", "--seeds", "5:2"], "--seeds: '5:2' holds no seed"),
    (["--backend", "digits", "--setting", "regime=cond", "--seeds", "x"], "--seeds: 'x' is not START:STOP"),
    (["--backend", "digits", "--setting", "regime=cond", "--seeds", "2"], "--checkpoint: role 'denoiser' needs a file"),
    (["--backend", "digits", "--setting", "regime=cond", "--seeds", "2", "--checkpoint", "denoiser=/no/such.pt",
      "--checkpoint", "offshelf=/no/such.pt", "--checkpoint", "finetuned=/no/such.pt"], "/no/such.pt does not exist"),
    (["--backend", "digits", "--setting", "regime=cond", "--seeds", "2", "--option", "oops"], "--option: 'oops'"),
])
def test_sample_errors_are_one_line_naming_the_argument(args, argument, tmp_path):
    out = tmp_path / "shard.npz"
    proc = subprocess.run([str(OFFSHELF), "sample", *args, "--out", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("offshelf sample: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert argument in proc.stderr
    assert not out.exists()




def test_unit_tests_never_start_snakemake():
    """Tests that run Snakemake (even a dry run) belong in tests/workflow/, which is marked slow:
    the default suite stays unit tests."""
    starts = re.compile(r"workflow_utils import[^\n]*\b(snakemake|dry_run_jobs|dry_run_outputs|SNAKEMAKE)\b"
                        r"|[\"']-m[\"'],\s*[\"']snakemake[\"']|[\"']snakemake[\"'],\s*[\"']-")
    unit = Path(__file__).resolve().parent
    offenders = [path.name for path in sorted(unit.glob("*.py"))
                 if path.name != Path(__file__).name and starts.search(path.read_text())]
    assert offenders == [], f"move the Snakemake runs of {offenders} to tests/workflow/"


# --- a setting's parameters are data, never parsed from its name --------------------------------

PLANNING_PATH = ["offshelf.planning", "offshelf.settings", "offshelf.search", "offshelf.config", "offshelf.grids",
                 "offshelf.report", "offshelf.tables"]
RE_CALLS = {"match", "search", "fullmatch", "findall", "finditer", "compile", "sub", "subn", "split"}
# what a setting or evaluation name holds: _s<scale>_r<steps>, _ssearch, +n<samples>, _g, _tj, _tm, _sw, _n<steps>
SETTING_MARKERS = ("_s", "_r", "+n", r"\+n", "ssearch", "_g", "_tj", "_tm", "_sw", "_n")


def test_the_planning_path_does_not_import_re():
    """The modules that plan, name and look up settings do not import ``re`` at all: a searched
    scale's setting comes from its search round's record, an evaluation's from the Plan."""
    modules = {module_name(p): p for p in (SRC / "offshelf").rglob("*.py")}
    offenders = []
    for name, path in modules.items():
        if not any(name == m or name.startswith(m + ".") for m in PLANNING_PATH):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import) and any(a.name == "re" for a in node.names):
                offenders.append(f"{name}:{node.lineno}")
            elif isinstance(node, ast.ImportFrom) and node.module == "re":
                offenders.append(f"{name}:{node.lineno}")
    assert not offenders, f"the planning path imports re: {offenders}"


def test_nothing_matches_a_setting_name_with_a_regex():
    """No ``re.<call>`` in src/offshelf has a pattern holding a setting-name marker, and nothing
    splits a name at ``+n`` (the former ``parse_evaluation_name``) or ``_s`` (``lookup_setting``)."""
    offenders = []
    for path in (SRC / "offshelf").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            literals = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            calls_re = isinstance(node.func.value, ast.Name) and node.func.value.id == "re" and node.func.attr in RE_CALLS
            splits = node.func.attr in ("partition", "rpartition", "split", "rsplit")
            if (calls_re or splits) and any(m in lit for lit in literals for m in SETTING_MARKERS):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, f"a setting name parsed with a pattern: {offenders}"


def test_the_workflow_parses_no_setting_name():
    """The Snakefile and its rules read a searched setting from its round's record (common.smk:
    search_rounds), never from the name: no regex matching and no ``+n`` split in workflow/."""
    root = SRC.parent
    files = [root / "Snakefile", *sorted((root / "workflow").rglob("*.smk")), *sorted((root / "workflow").rglob("*.py"))]
    offenders = [f"{p.relative_to(root)}:{i}: {line.strip()}" for p in files
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if any(f"re.{c}(" in line for c in RE_CALLS) or "parse_evaluation_name" in line
                 or 'partition("+n")' in line or "lookup_setting(" in line and "re." in line]
    assert not offenders, offenders
