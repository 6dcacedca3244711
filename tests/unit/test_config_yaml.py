"""The one YAML reader (offshelf.yaml_file) and how its two callers word its errors: a config file
(ConfigError, ``file:line:column``) and registry overrides (CheckpointError, ``at line N``)."""

import re

import pytest

from offshelf.checkpoints import CheckpointError, load_registry_overrides
from offshelf.config import ConfigError, read_yaml
from offshelf.yaml_file import YAMLSyntaxError, read_yaml_file

UNCLOSED = "a: 1\nb:\n  c: [1, 2\nd: 3\n"  # the '[' opened on line 3 is never closed


def test_valid_yaml_is_parsed(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("a: 1\nb: [x, y]\n")
    assert read_yaml_file(path) == {"a": 1, "b": ["x", "y"]}
    assert read_yaml(path) == {"a": 1, "b": ["x", "y"]}
    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml_file(tmp_path / "empty.yaml") is None


def test_syntax_error_is_located(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(UNCLOSED)
    with pytest.raises(YAMLSyntaxError) as err:
        read_yaml_file(path)
    # PyYAML marks the ':' of line 4 (it expected ',' or ']'); the line the '[' opened on is named too
    assert (err.value.line, err.value.column) == (4, 2)
    assert err.value.location == f"{path}:4:2"
    assert "while parsing a flow sequence at line 3" in err.value.problem
    assert str(err.value) == f"{path}:4:2: not valid YAML: {err.value.problem}"


def test_config_caller_names_file_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(UNCLOSED)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:4:2: not valid YAML: .*at line 3\)$"):
        read_yaml(path)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(tmp_path / 'nope.yaml'))}: cannot read config file "
                                          r"\(No such file or directory\)$"):
        read_yaml(tmp_path / "nope.yaml")


def test_overrides_caller_keeps_its_own_wording(tmp_path):
    path = tmp_path / "overrides.yaml"
    path.write_text(UNCLOSED)
    with pytest.raises(CheckpointError, match=rf"^registry overrides {re.escape(str(path))}: not valid YAML at line 4 "
                                              r"\(.*while parsing a flow sequence at line 3\)\)$"):
        load_registry_overrides(path)
    with pytest.raises(CheckpointError, match=r"registry overrides .*nope\.yaml: cannot read it \(No such file"):
        load_registry_overrides(tmp_path / "nope.yaml")
    broken_json = tmp_path / "overrides.json"
    broken_json.write_text("{\"resnet50_v2\": ")
    with pytest.raises(CheckpointError, match=r"overrides\.json: not valid JSON \(Expecting value"):
        load_registry_overrides(broken_json)


def test_a_binary_file_is_a_named_error_not_a_traceback(tmp_path):
    path = tmp_path / "weights.yaml"  # e.g. a checkpoint passed where a config belongs
    path.write_bytes(b"\x80\x02}q\x00")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: not valid YAML: not UTF-8 text \(byte 0: "):
        read_yaml(path)
    with pytest.raises(CheckpointError, match=r"weights\.yaml: not valid YAML \(not UTF-8 text"):
        load_registry_overrides(path)
