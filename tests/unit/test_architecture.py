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
                                  ["checkpoints", "fetch"], ["checkpoints", "verify"], ["checkpoints", "list"]])
def test_every_command_answers_help(args):
    proc = subprocess.run([str(OFFSHELF), *args, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: offshelf" in proc.stdout


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
