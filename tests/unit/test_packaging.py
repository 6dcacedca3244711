"""The pinned requirements, the package metadata, the conda env and the installed versions agree."""

import re
import tomllib
from importlib import metadata

import yaml

from workflow_utils import REPO


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "envs" / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]+\])?==(\S+)$", line).groups()
            pins[name.lower()] = version
    return pins


def test_requirements_are_exact_pins_and_installed():
    pins = _pins()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    for name, version in pins.items():
        assert metadata.version(name).split("+")[0] == version, f"{name}: installed {metadata.version(name)}, pinned {version}"


def test_pyproject_agrees_with_the_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _pins()
    declared = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    for requirement in declared:
        name = re.match(r"^([A-Za-z0-9_.-]+)", requirement).group(1).lower()
        assert name in pins, f"{requirement} is declared in pyproject.toml but not pinned in envs/requirements.txt"
        spec = requirement[len(name):].split("[")[-1].split("]")[-1]
        for clause in filter(None, spec.split(",")):
            op, version = re.match(r"\s*(==|>=|<=|<|>)\s*(\S+)", clause).groups()
            pinned = tuple(int(x) for x in re.findall(r"\d+", pins[name])[:3])
            bound = tuple(int(x) for x in re.findall(r"\d+", version)[:3])
            ok = {"==": pinned == bound, ">=": pinned >= bound, "<=": pinned <= bound,
                  "<": pinned < bound, ">": pinned > bound}[op]
            assert ok, f"pyproject.toml says {requirement}, envs/requirements.txt pins {pins[name]}"


def test_conda_env_installs_the_same_pins():
    env = yaml.safe_load((REPO / "envs" / "offshelf.yaml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    assert pip == ["-r requirements.txt"]


def test_every_rule_runs_in_the_conda_env():
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        rules = re.findall(r"^\s*(?:rule|checkpoint) (\w+):", text, flags=re.M)
        assert text.count('conda: CONDA_ENV') == len(rules), f"{smk.name}: every rule needs `conda: CONDA_ENV`"


def test_the_repository_is_self_contained():
    """The golden fixtures ship in tests/fixtures/reference, the tests read them there by default,
    and no config, source file or doc cites a file outside the repository (the method facts the
    configs cite are in docs/method.md)."""
    import conftest
    from rehearsal import standins

    shipped = REPO / "tests" / "fixtures" / "reference"
    for name in ("README.md", "adm_state_dict_manifest.json", "adm_tiny_golden.pt", "adm_tiny_step250_golden.pt",
                 "edm_state_dict_manifest.json", "edm_tiny_golden.pt", "edm_tiny_heun10_golden.pt",
                 "edm_tiny_network.pkl"):
        assert (shipped / name).is_file(), f"{name} is missing from {shipped}"
    assert conftest.SHIPPED_REFERENCE_DIR == shipped
    assert standins.ROOT / "tests" / "fixtures" / "reference" == shipped
    outside = re.compile(r"elucd_spec|shared/reference|shared/method|\.\./method/|\.\./shared")
    files = [REPO / "config.yaml", REPO / "README.md", REPO / "Snakefile", REPO / ".ci" / "run", REPO / "Makefile"]
    for folder, pattern in (("config", "*.yaml"), ("src", "*.py"), ("docs", "*.md"), ("workflow", "*"),
                            ("tests", "*.py"), ("tests/fixtures/reference", "*.md")):
        files += [f for f in (REPO / folder).rglob(pattern) if f.is_file() and f.suffix not in (".pt", ".pkl")]
    cited = [f"{f.relative_to(REPO)}:{i}" for f in files
             for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1)
             if outside.search(line) and f.name != "test_packaging.py"]
    assert not cited, f"cites a file outside the repository: {cited}"
