"""The pinned requirements, the package metadata, the conda env and the installed versions agree."""

import re
import tomllib
from importlib import metadata

import pytest
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


# ------------------------------------------------------- the library needs torch, torchvision, numpy

LIBRARY_MODULES = ["offshelf", "offshelf.guidance", "offshelf.samplers.ddpm", "offshelf.samplers.edm",
                   "offshelf.samplers.dit", "offshelf.classifiers", "offshelf.classifiers.softplus",
                   "offshelf.classifiers.zoo", "offshelf.classifiers.clip", "offshelf.backbones.adm",
                   "offshelf.backbones.edm", "offshelf.backbones.dit", "offshelf.backbones.digits",
                   "offshelf.integrations.diffusers", "offshelf.diffusion", "offshelf.seeding", "offshelf.images"]


def _without(missing: list[str], code: str):
    """Run ``code`` in a fresh interpreter where ``missing`` cannot be imported."""
    import subprocess
    import sys

    prelude = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in missing)
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=120)


def test_the_library_declares_and_imports_only_torch_torchvision_numpy():
    from offshelf.extras import EXTRA_OF

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = [re.match(r"^([A-Za-z0-9_.-]+)", d).group(1).lower() for d in project["dependencies"]]
    assert sorted(names) == ["numpy", "torch", "torchvision"]
    assert not any("==" in d for d in project["dependencies"]), "ranges, not pins (pins: envs/requirements.txt)"
    proc = _without(sorted(EXTRA_OF), "import importlib\n" + "".join(
        f"importlib.import_module({m!r})\n" for m in LIBRARY_MODULES) + "print('imported')")
    assert proc.returncode == 0 and proc.stdout == "imported\n", proc.stderr


def test_every_optional_package_belongs_to_the_extra_it_names():
    from offshelf.extras import EXTRA_OF

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"workflow", "diffusers", "clip"} <= set(extras)
    for module, (extra, distribution) in EXTRA_OF.items():
        declared = [re.match(r"^([A-Za-z0-9_.-]+)", d).group(1).lower() for d in extras[extra]]
        assert distribution in declared, f"{module}: offshelf[{extra}] does not declare {distribution}"


@pytest.mark.parametrize("missing, module", [
    ("pandas", "offshelf.report"), ("yaml", "offshelf.config"), ("yaml", "offshelf.cli"),
    ("scipy", "offshelf.metrics"), ("matplotlib", "offshelf.figures"), ("jsonschema", "offshelf.config"),
])
def test_a_workflow_module_without_its_extra_names_the_extra(missing, module):
    proc = _without([missing], f"import {module}")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("offshelf.extras.MissingExtraError: ") and "pip install 'offshelf[workflow]'" in last, last


def test_a_download_without_a_progress_bar_needs_no_tqdm():
    proc = _without(["tqdm"], "from offshelf.checkpoints import _progress_bar\n"
                              "with _progress_bar(False)(total=3, desc='x', disable=True) as bar: bar.update(3)\n"
                              "try:\n    _progress_bar(True)\nexcept ModuleNotFoundError as err:\n    print(err)\n")
    assert proc.returncode == 0 and "pip install 'offshelf[workflow]'" in proc.stdout, proc.stderr
