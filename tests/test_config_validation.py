"""A typo or an invalid value stops the workflow before any job starts, naming the key."""

import copy

import pytest
import yaml

from offshelf.config import ConfigError, validate_config
from workflow_utils import REPO, snakemake


@pytest.fixture(scope="module")
def default_config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_shipped_configs_are_valid(default_config):
    validate_config(default_config)
    validate_config(yaml.safe_load((REPO / "config" / "ci.yaml").read_text()))


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c.update(scaels=c.pop("scales")), r"unknown key\(s\) \['scaels'\].*allowed keys:.*scales"),
    (lambda c: c["sampling"].update(num_sample=10), r"'sampling'.*\['num_sample'\].*num_samples"),
    (lambda c: c["tables"]["table6"]["rows"][0].update(sine_factr=0.1),
     r"tables\.table6\.rows\.0.*\['sine_factr'\].*sine_factor"),
    (lambda c: c["bases"]["resnet"].update(input="x1"), r"'bases\.resnet\.input' = 'x1'; allowed values: x0, xt"),
    (lambda c: c.update(regimes=["cond", "conditional"]), r"'regimes\.1' = 'conditional'; allowed values: cond, uncond"),
    (lambda c: c["sampling"].update(respacing="fast"), r"'sampling\.respacing' = 'fast'"),
    (lambda c: c["tables"]["table1"]["rows"][0].update(base="resnt"), r"base 'resnt' is not defined under 'bases'"),
    (lambda c: c["bases"]["resnet"].update(softplus_beta=-1), r"'bases\.resnet\.softplus_beta'"),
])
def test_bad_config_names_the_key(default_config, mutate, expected):
    config = copy.deepcopy(default_config)
    mutate(config)
    with pytest.raises(ConfigError, match=expected):
        validate_config(config)


def test_snakemake_stops_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling: {respacing: '50', num_samples: 10, shard_size: 5, batch_size: 5, seeds: 3}\n")
    proc = snakemake("-n", "--configfile", str(bad), check=False)
    assert proc.returncode != 0
    assert "unknown key(s) ['seeds']" in proc.stdout + proc.stderr
    assert "Job stats" not in proc.stdout
