"""A typo or an invalid value stops the workflow before any job starts, naming the key."""

import copy
import os
import re
from pathlib import Path

import pytest
import yaml

from offshelf.config import ConfigError, validate_config
from workflow_utils import REPO


@pytest.fixture(scope="module")
def default_config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_shipped_configs_are_valid(default_config):
    validate_config(default_config)
    validate_config(yaml.safe_load((REPO / "config" / "ci.yaml").read_text()))


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c.update(serach=c.pop("search")), r"unknown key\(s\) \['serach'\].*allowed keys:.*search"),
    (lambda c: c["sampling"].update(num_sample=10), r"'sampling'.*\['num_sample'\].*num_samples"),
    (lambda c: c["tables"]["table6"]["rows"][0].update(sine_factr=0.1),
     r"tables\.table6\.rows\.0.*\['sine_factr'\].*sine_factor"),
    (lambda c: c["bases"]["resnet"].update(input="x1"), r"'bases\.resnet\.input' = 'x1'; allowed values: x0, xt"),
    (lambda c: c.update(regimes=["cond", "conditional"]), r"'regimes\.1' = 'conditional'; allowed values: cond, uncond"),
    (lambda c: c["sampling"].update(respacing="fast"), r"'sampling\.respacing' = 'fast'"),
    (lambda c: c["tables"]["table1"]["rows"][0].update(base="resnt"), r"base 'resnt' is not defined under 'bases'"),
    (lambda c: c["bases"]["resnet"].update(softplus_beta=-1), r"'bases\.resnet\.softplus_beta'"),
    (lambda c: c["search"].update(low_fidelity=2000), r"'search\.low_fidelity' = 2000 exceeds the 500 samples"),
    (lambda c: c["search"]["initial"].pop("uncond"), r"'search\.initial\.uncond' is missing"),
    (lambda c: c["search"].update(factor=1), r"'search\.factor' = 1"),
    (lambda c: c["search"].update(bounds=[10, 1]), r"config key 'search': search\.bounds must be"),
    (lambda c: c["search"].update(fidelity=3), r"'search'.*\['fidelity'\]"),
    (lambda c: c["search"]["initial"].update(cond=[0, 1]), r"'search\.initial\.cond\.0' = 0"),
    (lambda c: c["tables"]["table6"]["rows"][0].update(S_churn=-1), r"tables\.table6\.rows\.0\.S_churn' = -1"),
    (lambda c: c["tables"]["table6"]["rows"][0].update(s_churn=40), r"\['s_churn'\].*S_churn"),
    (lambda c: c.update(pareto_in_all="yes"), r"^config key 'pareto_in_all' = 'yes'"),
    (lambda c: c.pop("pareto"), r"^config key 'pareto_in_all' = True: the config has no 'pareto' table to run"),
])
def test_bad_config_names_the_key(default_config, mutate, expected):
    config = copy.deepcopy(default_config)
    mutate(config)
    with pytest.raises(ConfigError, match=expected):
        validate_config(config)


# ---------------------------------------------------------------- the schema: one file, defined once


def test_schema_is_one_file_found_two_ways():
    """The package ships the schema (importlib.resources, any install); the workflow reaches the
    same file through workflow/schemas, a relative symlink, so the two can never drift."""
    from offshelf.config import schema_text

    link = REPO / "workflow" / "schemas" / "config.schema.yaml"
    assert link.is_symlink() and not Path(os.readlink(link)).is_absolute()
    assert link.resolve() == (REPO / "src" / "offshelf" / "schemas" / "config.schema.yaml").resolve()
    assert schema_text() == link.read_text()


def test_setting_keys_are_defined_once():
    from offshelf.config import schema_text
    from offshelf.settings import Setting

    schema = yaml.safe_load(schema_text())
    defs = schema["$defs"]
    assert set(defs["setting"]["properties"]) == set(Setting.__dataclass_fields__) - {"regime"}
    for name in ("base", "row"):  # both reuse the one definition, and still refuse other keys
        assert defs[name]["$ref"] == "#/$defs/setting" and defs[name]["unevaluatedProperties"] is False
        assert not set(defs[name].get("properties", {})) & set(defs["setting"]["properties"])
    assert "setting_keys" not in defs


def test_schema_backbone_rules_name_exactly_the_built_in_backends():
    from offshelf.backends import BACKENDS
    from offshelf.config import schema_text

    rules = yaml.safe_load(schema_text())["allOf"]
    builtins = next(r["if"]["properties"]["backbone"]["enum"] for r in rules if "backend_options" in str(r.get("then")))
    assert sorted(builtins) == sorted(BACKENDS)


# ---------------------------------------------------------------- guards (issue 11; end to end in
# tests/workflow/test_config_refusals.py, the library-only details here)


def test_backbone_is_checked_before_anything_else(default_config):
    config = copy.deepcopy(default_config)
    config.update(backbone="dgits", sampling=None, scales=float("nan"))  # worse errors follow it
    with pytest.raises(ConfigError, match=r"^config key 'backbone' = 'dgits': expected one of digits, adm128"):
        validate_config(config)
    del config["backbone"]
    with pytest.raises(ConfigError, match=r"^config key 'backbone' is missing"):
        validate_config(config)


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """A backend in a module outside offshelf, importable by path."""
    (tmp_path / "my_backend_for_config_tests.py").write_text(
        "from toy_backend import ToyMixtureBackend\n"
        "class Mine(ToyMixtureBackend):\n"
        "    num_train_timesteps = 100\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "plugin"))
    return "my_backend_for_config_tests:Mine"


def test_third_party_backend_takes_backend_options_and_no_builtin_sections(default_config, third_party):
    config = {k: v for k, v in copy.deepcopy(default_config).items() if k != "digits"}
    config.update(backbone=third_party, backend_options={"anything": [1, 2]})
    config["figures"]["figure4"]["label"] = 2  # the toy backend has classes 0..2
    config["grids"]["classes"] = [0, 1, 2]
    validate_config(config)
    with pytest.raises(ConfigError, match=r"^config key 'digits' is not allowed with backbone 'my_backend"):
        validate_config(dict(config, digits=default_config["digits"]))
    with pytest.raises(ConfigError, match=r"^config key 'sampling\.respacing' = '200': not possible with the 100-step"):
        validate_config(dict(config, sampling=dict(config["sampling"], respacing="200")))
    with pytest.raises(ConfigError, match=r"^config key 'backbone' = 'my_backend_for_config_tests:Missing'"):
        validate_config(dict(config, backbone="my_backend_for_config_tests:Missing"))
    with pytest.raises(ConfigError, match=r"^config key 'backend_options' is not allowed with backbone 'digits'"):
        validate_config(dict(default_config, backend_options={}))


def test_relu_is_still_written_inf(default_config):
    """`softplus_beta: inf` (a YAML string) keeps meaning ReLU; only the float .inf is refused."""
    from offshelf.planning.plan import build_plan

    assert default_config["bases"]["resnet"]["softplus_beta"] == "inf"
    searched = [plan.setting for plan in build_plan(validate_config(default_config)).searches.values()]
    assert any(s.name.split("_")[2] == "relu" for s in searched)
    config = copy.deepcopy(default_config)
    config["bases"]["resnet"]["softplus_beta"] = "relu"
    validate_config(config)


def test_digits_respacing_bound_is_the_denoisers_schedule(default_config):
    from offshelf.backbones.digits import TrainConfig

    config = copy.deepcopy(default_config)
    config["sampling"]["respacing"] = str(TrainConfig.num_train_timesteps)
    validate_config(config)  # every step of the schedule: allowed
    config["sampling"]["respacing"] = str(TrainConfig.num_train_timesteps + 1)
    with pytest.raises(ConfigError, match=r"'sampling\.respacing'"):
        validate_config(config)


def test_yaml_error_names_file_line_and_column(tmp_path):
    from offshelf.config import load_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: x\nsampling:\n  num_samples: 10\n   shard_size: 5\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad))}:4:\d+: not valid YAML: "):
        load_config(bad)


def test_paths_resolve_inside_results(default_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = copy.deepcopy(default_config)
    # results_doc (docs/results.md) is a repository page, beside config.yaml, not under `results`:
    # it has its own tests (tests/unit/test_docs.py, test_check_config_gives_the_same_answer_from_any_folder)
    config.pop("results_doc", None)
    validate_config(config)  # relative `results`, not yet created: fine
    (tmp_path / "results" / "logs").mkdir(parents=True)
    (tmp_path / "results" / "logs" / "digits").write_text("")
    with pytest.raises(ConfigError, match=r"config key 'results' = 'results': results/logs/digits exists and is not a folder"):
        validate_config(config)


# ---------------------------------------------------------------- each backend owns its section (issue 22)


def test_each_backend_owns_its_config_section():
    """The main schema holds a placeholder for `digits:` / `imagenet:`; the keys are the backend's
    (``config_schema``, a YAML file beside its module), merged in for that backbone only."""
    from offshelf.backends import BACKENDS, resolve
    from offshelf.config import backend_schema, schema_text

    main = yaml.safe_load(schema_text())
    assert set(main["properties"]["digits"]) <= {"type", "description"} and "train" not in main["$defs"]
    sections = {name: set(backend_schema(resolve(name)).get("properties", {})) for name in BACKENDS}
    assert sections == {"digits": {"digits"}, "adm128": {"imagenet"}, "edm64": {"imagenet"}, "dit256": {"imagenet"}}
    assert "train" in backend_schema(resolve("digits"))["$defs"]


def test_a_backend_schema_may_not_redefine_a_shared_key(default_config, third_party, monkeypatch):
    from offshelf.backends import resolve

    config = {k: v for k, v in copy.deepcopy(default_config).items() if k != "digits"}
    config.update(backbone=third_party, backend_options={"std": 0.2})
    config["figures"]["figure4"]["label"] = 2
    config["grids"]["classes"] = [0, 1, 2]  # the toy backend's classes
    cls = resolve(third_party)
    monkeypatch.setattr(cls, "config_schema", {"properties": {"backend_options": {
        "type": "object", "additionalProperties": False, "properties": {"std": {"type": "number"}}}}})
    validate_config(config)
    with pytest.raises(ConfigError, match=r"^config key 'backend_options': unknown key\(s\) \['mean'\]"):
        validate_config(dict(config, backend_options={"mean": 1}))
    monkeypatch.setattr(cls, "config_schema", {"properties": {"sampling": {"type": "object"}}})
    with pytest.raises(ConfigError, match=r"redefines the shared config keys \['sampling'\]"):
        validate_config(config)


def test_a_config_asking_for_an_undeclared_capability_is_one_line(default_config, third_party, monkeypatch):
    from offshelf.backends import resolve
    from offshelf.backends.capabilities import Capability

    config = {k: v for k, v in copy.deepcopy(default_config).items() if k != "digits"}
    config.update(backbone=third_party, backend_options={})
    config["figures"]["figure4"]["label"] = 2
    config["grids"]["classes"] = [0, 1, 2]  # the toy backend's classes
    cls = resolve(third_party)
    monkeypatch.setattr(cls, "capabilities", cls.capabilities - {Capability.GRADIENTS})
    with pytest.raises(ConfigError, match=r"^config key 'backbone' = 'my_backend_for_config_tests:Mine': backend "
                                          r"'toy-mixture' does not declare capability 'gradient_trajectories' "
                                          r"\(figures\.figure4 needs it\)"):
        validate_config(config)
    del config["figures"]["figure4"]
    validate_config(config)
    monkeypatch.setattr(cls, "capabilities", cls.capabilities - {Capability.GRADIENTS, Capability.TUNING})
    with pytest.raises(ConfigError, match=r"does not declare capability 'tuning' \(the tune section needs it\)"):
        validate_config(dict(config, tune={}))


# ------------------------------------------------------------ one way to read a config: read_config

SHIPPED_CONFIGS = ["config.yaml", *sorted(str(p.relative_to(REPO)) for p in (REPO / "config").glob("*.yaml"))]


@pytest.mark.parametrize("path", SHIPPED_CONFIGS)
def test_every_shipped_config_passes_check_config(path, capsys):
    """`offshelf check-config FILE` on every shipped file (config/clip_text2image.yaml is checked as
    the text-to-image config it is)."""
    from offshelf.cli import main

    assert main(["check-config", str(REPO / path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"offshelf: {REPO / path}: valid"), out
    assert ("text2image config" in out) == path.endswith("clip_text2image.yaml")


def test_a_config_is_read_alone_or_with_the_base_it_names(tmp_path):
    """Nothing is merged in implicitly: a partial digits file is refused as incomplete; with
    `base:` (relative to the file) it is the base with the file's keys laid over it."""
    from offshelf.config import merge, read_config, read_yaml

    (tmp_path / "sub").mkdir()
    partial = {"experiment": "one", "sampling": {"num_samples": 64}}
    alone = tmp_path / "alone.yaml"
    alone.write_text(yaml.safe_dump(partial))
    assert read_config(alone) == partial
    with pytest.raises(ConfigError, match="backbone|required|missing"):
        validate_config(read_config(alone))

    (tmp_path / "sub" / "base.yaml").write_text((REPO / "config" / "ci.yaml").read_text())
    derived = tmp_path / "derived.yaml"
    derived.write_text(yaml.safe_dump({"base": "sub/base.yaml", **partial}))
    config = read_config(derived)
    assert config == merge(read_yaml(REPO / "config" / "ci.yaml"), partial) and "base" not in config
    validate_config(config)
    chained = tmp_path / "sub" / "chained.yaml"  # bases chain, each relative to its own file
    chained.write_text(yaml.safe_dump({"base": "../derived.yaml", "threads_per_job": 2}))
    assert read_config(chained) == dict(config, threads_per_job=2)


@pytest.mark.parametrize("base, expected", [
    ("nowhere.yaml", r"config key 'base' = 'nowhere.yaml': no such file"),
    ("a.yaml", r"the bases form a cycle"),
    (3, r"config key 'base' = 3: must be the path of another config file"),
])
def test_a_bad_base_is_one_line(tmp_path, base, expected):
    from offshelf.config import read_config

    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"base": "b.yaml"}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"base": base}))
    with pytest.raises(ConfigError, match=expected):
        read_config(tmp_path / "b.yaml")


def test_check_config_checks_each_file_on_its_own(tmp_path, capsys):
    """Two files are two configs, not an overlay: a partial file fails on its own (today it was
    merged onto the first), a complete one passes, and the exit status says whether any failed."""
    from offshelf.cli import main

    partial = tmp_path / "partial.yaml"
    partial.write_text(yaml.safe_dump({"experiment": "x", "sampling": {"num_samples": 10}}))
    ci = REPO / "config" / "ci.yaml"
    assert main(["check-config", str(ci), str(partial)]) == 1
    captured = capsys.readouterr()
    assert f"{ci}: valid" in captured.out and str(partial) not in captured.out
    assert captured.err.startswith("offshelf: ") and captured.err.count("\n") == 1
    assert main(["check-config", str(ci), str(REPO / "config.yaml")]) == 0


def test_check_config_gives_the_same_answer_from_any_folder(tmp_path, monkeypatch, capsys):
    """A relative results_doc is read from the folder of the config file that names it, not from
    the working directory: from an empty folder, check-config accepts config.yaml (its page is the
    repository's docs/results.md; it was refused, as no docs/ was there), an overlay naming it as
    its base keeps that page, and a file naming its own page is checked against the page beside it."""
    from offshelf.cli import main
    from offshelf.config import read_config

    monkeypatch.chdir(tmp_path)
    repository_page = str(REPO / "docs" / "results.md")
    assert main(["check-config", str(REPO / "config.yaml")]) == 0
    assert read_config(REPO / "config.yaml")["results_doc"] == repository_page
    (tmp_path / "elsewhere").mkdir()
    overlay = tmp_path / "elsewhere" / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"base": str(REPO / "config.yaml"), "results": str(tmp_path / "results")}))
    assert read_config(overlay)["results_doc"] == repository_page
    assert main(["check-config", str(overlay)]) == 0

    own = tmp_path / "elsewhere" / "own.yaml"
    own.write_text(yaml.safe_dump({"base": "overlay.yaml", "results_doc": "page.md"}))
    page = tmp_path / "elsewhere" / "page.md"
    page.write_text("# a page without the markers\n")
    capsys.readouterr()
    assert main(["check-config", str(own)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"offshelf: config key 'results_doc' = '{page}': expected one line") and "(found 0 and 0)" in err
    page.write_text((REPO / "docs" / "results.md").read_text())
    assert main(["check-config", str(own)]) == 0
    assert capsys.readouterr().out == f"offshelf: {own}: valid (built-in backbone 'digits')\n"


def test_the_workflow_reads_one_config_file(tmp_path, monkeypatch):
    """The Snakefile's file: its one --configfile, else ./config.yaml; two are refused (an overlay
    names its base instead)."""
    from offshelf.config import workflow_config_file

    assert workflow_config_file([Path("a.yaml")]) == Path("a.yaml")
    with pytest.raises(ConfigError, match=r"give one config file.*base: a\.yaml"):
        workflow_config_file([Path("a.yaml"), Path("b.yaml")])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no config"):
        workflow_config_file([])
    (tmp_path / "config.yaml").write_text("{}")
    assert workflow_config_file(()) == Path("config.yaml")
