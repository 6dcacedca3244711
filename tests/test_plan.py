"""Settings expand from the config like a Paramspace; names change exactly when samples would."""

import dataclasses
import math

import pytest
import yaml

from offshelf.plan import all_probes, all_settings, num_shards, shard_seeds, table_rows
from offshelf.settings import Setting, probe_setting
from workflow_utils import REPO, dry_run_jobs


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_names_are_stable_and_parameter_derived():
    s = Setting(regime="cond", softplus_beta=3, marginal_temperature=0.5, sine_factor=0.3, scale=2)
    assert s.name == "cond_offshelf-x0_sp3_tj1_tm0.5_g0.3_s2_r1"
    assert Setting(method="unguided", scale=5, softplus_beta=3).name == "cond_unguided"
    assert Setting(method="cfg", cfg_scale=1.5, regime="uncond").name == "uncond_cfg-w1.5"
    assert Setting(classifier="combined", switch_step=10).name.endswith("_sw10")
    # the switch step only matters for the combined classifier
    assert Setting(switch_step=10).name == Setting().name


def test_setting_from_dict_casts_numpy_and_rejects_unknown_keys():
    np = pytest.importorskip("numpy")
    s = Setting.from_dict({"softplus_beta": np.float64(3.0), "recurrent_steps": np.int64(2)})
    assert type(s.softplus_beta) is float and type(s.recurrent_steps) is int
    with pytest.raises(ValueError, match="unknown setting key"):
        Setting.from_dict({"scal": 1})
    with pytest.raises(ValueError, match="allowed values: offshelf, finetuned, combined"):
        Setting(classifier="resnet")


def test_probe_round_trip():
    for s in (Setting(softplus_beta=math.inf), Setting(softplus_beta=3.5, input="xt"),
              Setting(classifier="combined", switch_step=10), Setting(classifier="finetuned", input="xt")):
        back = probe_setting(s.probe)
        assert back.probe == s.probe


def test_every_row_sweeps_its_regime_grid(config):
    rows = table_rows(config)
    tables = {r.table for r in rows}
    assert tables == {f"table{i}" for i in range(1, 8)}
    for row in rows:
        if row.candidates[0].method == "guided":
            assert [c.scale for c in row.candidates] == [float(s) for s in config["scales"][row.regime]]
    # shared rows (e.g. ReLU baseline in Tables 2, 3, 4) are sampled once
    settings = all_settings(config)
    names = [c.name for r in rows for c in r.candidates]
    assert len(settings) == len(set(names)) < len(names)
    assert set(config["figures"]["figure1"]["probes"]) <= set(all_probes(config))


def test_shards_are_disjoint_fixed_seed_ranges(config):
    n = num_shards(config)
    seeds = [s for i in range(n) for s in shard_seeds(config, i)]
    assert seeds == list(range(config["sampling"]["num_samples"]))


def test_dry_run_lists_every_stage(tmp_path):
    jobs = dry_run_jobs("--config", f"results={tmp_path}")
    for rule in ("train_model", "calibrate", "sample", "reference_features", "evaluate",
                 "figure_calibration", "figure_analytic", "figure_gradients", "sample_grid", "report", "all"):
        assert jobs.get(rule, 0) >= 1, f"stage {rule} missing from the dry run: {jobs}"
    assert jobs["train_model"] == 4


def test_job_params_do_not_depend_on_key_order():
    from offshelf.plan import canonical, sampling_params

    a = {"sampling": {"respacing": "50", "batch_size": 8, "num_samples": 10, "shard_size": 5, "variance": "fixed_large"}}
    b = {"sampling": {"variance": "fixed_large", "shard_size": 5, "num_samples": 99, "batch_size": 8, "respacing": "50"}}
    # same text, whatever the key order, and the shard count does not enter a shard's params
    assert repr(sampling_params(a)) == repr(sampling_params(b))
    assert list(canonical({"b": 1, "a": {"d": 2, "c": [{"f": 1, "e": 2}]}})) == ["a", "b"]
    assert repr(canonical({"b": 1, "a": {"d": 2, "c": [{"f": 1, "e": 2}]}})) == "{'a': {'c': [{'e': 2, 'f': 1}], 'd': 2}, 'b': 1}"


@pytest.mark.parametrize("path", ["config.yaml", "config/ci.yaml", "config/imagenet128_ddpm.yaml"])
def test_table5_is_planned_at_sine_factor_0_3(path):
    """Table 5 (marginal temperature) runs at γ = 0.3: only then do the paper's numbers agree. Its
    τ2 = 1.0 row (6.20) is Table 4's Softplus β=3 row (6.61) but for γ, and its τ2 = 0.5 row (5.27)
    is Table 6's γ = 0.3 row (5.24; γ = 0 there gives 5.57)."""
    config = yaml.safe_load((REPO / path).read_text())
    rows = table_rows(config)
    table5 = [r for r in rows if r.table == "table5"]
    assert table5 and all(s.sine_factor == 0.3 for r in table5 for s in r.candidates)
    by_label = {(r.table, r.label, r.regime): r.candidates for r in rows}
    for regime in config["regimes"]:
        tau1 = by_label[("table5", "tau2=1.0", regime)]
        beta3 = by_label[("table4", "Softplus beta=3", regime)]
        # the same setting as Table 4's β = 3 row except for the sine factor
        assert [s.name for s in tau1] != [s.name for s in beta3]
        assert [dataclasses.replace(s, sine_factor=0.0).name for s in tau1] == [s.name for s in beta3]
        # τ2 = 0.5 at γ = 0.3 is exactly the calibrated design of Table 6's γ = 0.3 row: sampled once
        assert ([s.name for s in by_label[("table5", "tau2=0.5", regime)]]
                == [s.name for s in by_label[("table6", "gamma=0.3", regime)]])


def test_cost_plan_counts_network_evaluations_by_hand():
    """Algorithm 1 at 250 steps: 250 denoiser calls and, guided, 250 classifier gradients per sample;
    r recurrent passes at every step but the last; EDM's Heun: 2N − 1 calls and N gradients."""
    from offshelf.config import load_config
    from offshelf.plan import cost_plan

    ddpm = {r["table"]: r for r in cost_plan(load_config(REPO / "config" / "imagenet128_ddpm.yaml"))}
    passes = sum(250 + (r - 1) * 249 for r in (1, 2, 3)) + 250  # Table 1: r = 1, 2, 3 and ours (r = 1)
    assert ddpm["table1"]["denoiser"] == ddpm["table1"]["classifier"] == 10_000 * passes
    # Table 7: unguided (no gradient), fine-tuned CG, ResNet-101 and ResNet-50, 50k samples each
    assert ddpm["table7"]["denoiser"] == 4 * 50_000 * 250 and ddpm["table7"]["classifier"] == 3 * 50_000 * 250
    edm = cost_plan(load_config(REPO / "config" / "imagenet64_edm.yaml"), {"denoiser": 0.01, "classifier": 0.02})
    total = edm[-1]
    per_n = {n: (2 * n - 1, n) for n in (10, 18, 36)}  # guided and unguided rows per step count
    assert total["denoiser"] == sum(2 * 50_000 * d for d, _ in per_n.values())
    assert total["classifier"] == sum(50_000 * g for _, g in per_n.values())
    assert total["hours"] == pytest.approx((total["denoiser"] * 0.01 + total["classifier"] * 0.02) / 3600)
