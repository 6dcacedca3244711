"""Settings expand from the config like a Paramspace; names change exactly when samples would."""

import dataclasses
import json
import math

import pytest
import yaml

from offshelf.config import validate_config
from offshelf.planning.params import num_shards, shard_seeds
from offshelf.planning.plan import build_plan
from offshelf.planning.rows import table_rows
from offshelf.settings import Setting, probe_setting
from workflow_utils import REPO


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


def test_churn_names_only_stochastic_settings():
    """EDM's churn enters a name (and a sample job's params) only when S_churn > 0: deterministic
    settings keep their names and params; a changed churn value is another setting."""
    churn = dict(S_churn=40, S_min=0.05, S_max=50, S_noise=1.003)
    sde = Setting(method="unguided", num_steps=256, **churn)
    assert sde.name == "cond_unguided_churn40-0.05-50-1.003_n256"
    assert Setting(method="guided", input="xt", num_steps=256, **churn).name.endswith("_churn40-0.05-50-1.003_n256")
    assert Setting(method="unguided", num_steps=256, **{**churn, "S_noise": 1.007}).name != sde.name
    assert sde.churn() == {"S_churn": 40.0, "S_min": 0.05, "S_max": 50.0, "S_noise": 1.003}
    # S_churn 0: the other three change no sample, so no name, no param, the sampler's defaults
    ode = Setting(method="unguided", num_steps=18, S_min=0.05, S_max=50, S_noise=1.003)
    assert ode.name == Setting(method="unguided", num_steps=18).name == "cond_unguided_n18"
    assert ode.churn() == {"S_churn": 0.0, "S_min": 0.0, "S_max": math.inf, "S_noise": 1.0}
    assert not {"S_churn", "S_min", "S_max", "S_noise"} & set(Setting(num_steps=18).to_dict())
    for s in (sde, ode, Setting(method="cfg", S_churn=3)):
        assert Setting.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="S_churn >= 0"):
        Setting(S_churn=-1)
    with pytest.raises(ValueError, match="S_min .* above S_max"):
        Setting(S_churn=40, S_min=50, S_max=0.05)


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


def row_settings(row):
    """The settings a row is planned at: its candidates, or a searched row's setting (scale open)."""
    return [row.search.setting] if row.search else row.candidates


def test_every_guided_row_is_searched(config):
    rows = table_rows(config)
    tables = {r.table for r in rows}
    assert tables == {f"table{i}" for i in range(1, 8)}
    for row in rows:
        guided = row_settings(row)[0].method == "guided"
        assert (row.search is not None) == guided, row.label
        if guided:
            assert row.candidates == []  # no result yet: the scale is the search's to choose
            assert row.search.spec.initial == tuple(float(s) for s in config["search"]["initial"][row.regime])
            assert row.search.spec.full_fidelity == config["sampling"]["num_samples"]
    # shared rows (e.g. ReLU baseline in Tables 2, 3, 4) are searched once
    searches = build_plan(config).searches
    names = [r.search.name for r in rows if r.search]
    assert len(searches) == len(set(names)) < len(names)
    assert set(config["figures"]["figure1"]["probes"]) <= set(build_plan(config).probes)


def test_without_search_every_guided_row_sweeps_its_regime_grid(config):
    config = dict(config, scales={"cond": [1, 3], "uncond": [3, 10]})
    del config["search"]
    validate_config(config)
    rows = table_rows(config)
    for row in rows:
        assert row.search is None
        if row.candidates[0].method == "guided":
            assert [c.scale for c in row.candidates] == [float(s) for s in config["scales"][row.regime]]
    settings = build_plan(config).settings
    names = [c.name for r in rows for c in r.candidates]
    assert len(settings) == len(set(names)) < len(names)


def test_shards_are_disjoint_fixed_seed_ranges(config):
    n = num_shards(config)
    seeds = [s for i in range(n) for s in shard_seeds(config, i)]
    assert seeds == list(range(config["sampling"]["num_samples"]))


def test_job_params_do_not_depend_on_key_order():
    from offshelf.planning.params import canonical, sampling_params

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
    assert table5 and all(s.sine_factor == 0.3 for r in table5 for s in row_settings(r))
    by_label = {(r.table, r.label, r.regime): row_settings(r) for r in rows}
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
    r recurrent passes at every step but the last; EDM's Heun: 2N − 1 calls and N gradients (churn
    adds none: Table C.1's 256 stochastic steps count as 256 deterministic ones)."""
    from offshelf.config import load_config
    from offshelf.planning.costs import EvaluationCosts, cost_plan

    ddpm_config = load_config(REPO / "config" / "imagenet128_ddpm.yaml")
    ddpm = {r["table"]: r for r in cost_plan(ddpm_config, build_plan(ddpm_config))}
    passes = sum(250 + (r - 1) * 249 for r in (1, 2, 3)) + 250  # Table 1: r = 1, 2, 3 and ours (r = 1)
    assert ddpm["table1"]["denoiser"] == ddpm["table1"]["classifier"] == 10_000 * passes
    # Table 7: unguided (no gradient), fine-tuned CG, ResNet-101 and ResNet-50, 50k samples each
    assert ddpm["table7"]["denoiser"] == 4 * 50_000 * 250 and ddpm["table7"]["classifier"] == 3 * 50_000 * 250
    edm_config = load_config(REPO / "config" / "imagenet64_edm.yaml")
    edm = cost_plan(edm_config, build_plan(edm_config), EvaluationCosts(denoiser=0.01, classifier=0.02, source="test"))
    total = edm[-1]
    per_n = {n: (2 * n - 1, n) for n in (10, 18, 36, 256)}  # guided and unguided rows per step count
    assert total["denoiser"] == sum(2 * 50_000 * d for d, _ in per_n.values())
    assert total["classifier"] == sum(50_000 * g for _, g in per_n.values())
    assert total["hours"] == pytest.approx((total["denoiser"] * 0.01 + total["classifier"] * 0.02) / 3600)


def write_costs(path, backbones, **top):
    """A hand-made costs file in benchmarks/gpu_throughput.py's format."""
    data = {"device": "hand-made stand-in", "torch": "none", "command": "written by the test", **top,
            "backbones": {name: {"levers": {"precision": "fp32"}, "batch": 64, "seconds_per_denoiser": d,
                                 "seconds_per_classifier": c} for name, (d, c) in backbones.items()}}
    path.write_text(json.dumps(data))
    return path


def printed_table(out: str) -> dict[str, list[str]]:
    """``offshelf plan``'s Markdown table: row label -> its cells."""
    rows = [line.strip("|").split("|") for line in out.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}  # the header row under "table"


def count(cell: str) -> int:
    return int(cell.replace(",", ""))


def test_plan_costs_file_gives_gpu_hours_per_table_and_in_total_by_hand(tmp_path, capsys):
    """ImageNet-128 DDPM with 0.0036 s per denoiser evaluation and 0.0072 s per classifier gradient
    (per image): hours = evaluations × seconds / 3600, i.e. 1 h per million denoiser evaluations
    and 2 h per million gradients. The file's edm64 entry is another backbone's: never read."""
    from offshelf.cli import main

    costs = write_costs(tmp_path / "costs.json", {"edm64": (1.0, 1.0), "adm128": (0.0036, 0.0072)})
    assert main(["plan", "--config", str(REPO / "config" / "imagenet128_ddpm.yaml"), "--costs", str(costs)]) == 0
    out = capsys.readouterr().out
    table = printed_table(out)
    assert table["table"][-1] == "GPU-hours"
    # Table 1: r = 1, 2, 3 and ours, 10,000 samples each at 250 steps: 250 + 499 + 748 + 250 = 1747
    # passes, each one denoiser evaluation and one gradient: 17,470,000 of each
    assert count(table["table1"][2]) == count(table["table1"][3]) == 17_470_000
    assert table["table1"][4] == "52.41"  # 17.47 h + 2 × 17.47 h
    # Table 7: 4 rows × 50,000 samples × 250 steps of the denoiser, 3 of them guided
    assert (count(table["table7"][2]), count(table["table7"][3])) == (50_000_000, 37_500_000)
    assert table["table7"][4] == "125.00"  # 50 h + 2 × 37.5 h
    # the total counts each setting once (Table 1's "ours" is Tables 2-6's baseline too)
    assert (count(table["total"][2]), count(table["total"][3])) == (102_470_000, 89_970_000)
    assert table["total"][4] == "282.41"  # 102.47 h + 2 × 89.97 h
    for label, cells in table.items():
        if label != "table":  # every row: its own counts × the file's seconds
            assert cells[4] == f"{(count(cells[2]) * 0.0036 + count(cells[3]) * 0.0072) / 3600:,.2f}", label
    assert f"costs: {costs}, backbone adm128: batch 64" in out and "written by the test" in out
    # the by-hand shorthand goes through the same function: the same hours
    assert main(["plan", "--config", str(REPO / "config" / "imagenet128_ddpm.yaml"),
                 "--seconds-per-denoiser", "0.0036", "--seconds-per-classifier", "0.0072"]) == 0
    assert {k: v[4] for k, v in printed_table(capsys.readouterr().out).items()} == {k: v[4] for k, v in table.items()}


def test_plan_costs_count_the_cfg_pair_as_two_denoiser_evaluations(tmp_path, capsys):
    """DiT-256, Table 9: the CFG baseline and the guided row (CFG + classifier through the VAE
    decoder), 50,000 samples × 250 steps, both evaluate the DiT twice per step (the CFG pair); only
    the guided row takes a gradient. 0.0018 s per DiT evaluation, 0.0144 s per gradient."""
    from offshelf.cli import main

    costs = write_costs(tmp_path / "costs.json", {"dit256": (0.0018, 0.0144)})
    assert main(["plan", "--config", str(REPO / "config" / "imagenet256_dit.yaml"), "--costs", str(costs)]) == 0
    row = printed_table(capsys.readouterr().out)["table9"]
    assert (count(row[2]), count(row[3])) == (2 * 50_000 * 250 * 2, 50_000 * 250)
    assert row[4] == "75.00"  # 50,000,000 × 0.0018 / 3600 = 25 h, + 12,500,000 × 0.0144 / 3600 = 50 h


def test_plan_refuses_a_costs_file_without_the_configs_backbone_in_one_line(tmp_path, capsys):
    from offshelf.cli import main

    costs = write_costs(tmp_path / "costs.json", {"edm64": (0.01, 0.02)})
    assert main(["plan", "--config", str(REPO / "config" / "imagenet128_ddpm.yaml"), "--costs", str(costs)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(costs) in err and "'backbones.adm128'" in err and "it has edm64" in err
    assert main(["plan", "--config", str(REPO / "config" / "imagenet128_ddpm.yaml"), "--costs", str(costs),
                 "--seconds-per-denoiser", "1", "--seconds-per-classifier", "1"]) == 2
    assert "not both" in capsys.readouterr().err


@pytest.mark.parametrize("change, key", [
    (lambda d: d.pop("command"), "'command'"),
    (lambda d: d.update(backbones=[]), "'backbones'"),
    (lambda d: d["backbones"]["adm128"].update(seconds_per_denoiser="fast"), "'backbones.adm128.seconds_per_denoiser'"),
    (lambda d: d["backbones"]["adm128"].update(seconds_per_classifier=float("nan")), "'backbones.adm128.seconds_per_classifier'"),
    (lambda d: d["backbones"]["adm128"].update(seconds_per_denoiser=-0.1), "'backbones.adm128.seconds_per_denoiser'"),
    (lambda d: d["backbones"]["adm128"].pop("seconds_per_classifier"), "'backbones.adm128.seconds_per_classifier'"),
    (lambda d: d["backbones"]["adm128"].update(batch=0), "'backbones.adm128.batch'"),
    (lambda d: d["backbones"]["adm128"].update(levers="fp32"), "'backbones.adm128.levers'"),
])
def test_a_malformed_costs_file_is_refused_naming_file_and_key(tmp_path, change, key):
    from offshelf.planning.costs import CostsFileError, read_costs

    path = write_costs(tmp_path / "costs.json", {"adm128": (0.01, 0.02)})
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(CostsFileError) as refused:
        read_costs(path, "adm128")
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"costs file {path}: key {key}")
    path.write_text("{not json")
    with pytest.raises(CostsFileError, match=f"costs file {path}: not readable as JSON"):
        read_costs(path, "adm128")


# --- guidance-scale search: the workflow's glue (search.smk calls these) ---------------------------

def fid_of(optimum):
    """A synthetic FID, unimodal in log(scale); the same at every sample count."""
    return lambda scale: 0.3 + (math.log(scale) - math.log(optimum)) ** 2


def run_rounds(plan, fid):
    """What search.smk does, without Snakemake: round k from round k - 1 and its proposals'
    metrics, up to the final round; and every metrics file the evaluate jobs would write."""
    from offshelf.planning.searches import search_round_record

    metrics = {}

    def evaluate(record):
        for (scale, n), name in zip(record["proposals"], record["evaluations"]):
            proposal = record["evaluates"][name]  # the record names each proposal's setting, with its parameters
            assert proposal["setting"] == plan.at(scale).name and proposal["num_samples"] == n
            assert Setting.from_dict(record["settings"][proposal["setting"]]) == plan.at(scale)
            assert name == (plan.at(scale).name + ("" if n == plan.all_samples else f"+n{n}"))
            metrics[name] = {"fid": fid(scale)}

    rounds = [search_round_record(plan, None, {})]
    while not rounds[-1]["final"]:
        evaluate(rounds[-1])
        rounds.append(search_round_record(plan, rounds[-1], metrics))
    evaluate(rounds[-1])  # the finalists: the report reads their metrics
    return rounds, metrics


def test_search_rounds_reproduce_the_in_process_search(config):
    from offshelf.planning.searches import search_result_record
    from offshelf.search import run_search

    plan = build_plan(config).searches["uncond_offshelf-x0_sp3_tj1_tm0.5_g0.3_ssearch_r1"]
    fid = fid_of(40.0)
    rounds, metrics = run_rounds(plan, fid)
    assert [r["round"] for r in rounds] == list(range(len(rounds)))
    low = plan.spec.low_fidelity
    # low-fidelity evaluations read the first samples (+n<low>), the finalist all of the row's (no suffix)
    assert rounds[0]["evaluations"] == [f"uncond_offshelf-x0_sp3_tj1_tm0.5_g0.3_s{s}_r1+n{low}" for s in (1, 3, 10)]
    full = config["sampling"]["num_samples"]
    assert low < full and rounds[-1]["proposals"] and all(n == full for _, n in rounds[-1]["proposals"])
    assert not any(r["final"] for r in rounds[:-1])
    record = search_result_record(plan, rounds[-1], metrics, denoiser_per_sample=50)
    expected = run_search(plan.spec, lambda scale, n: fid(scale))
    assert record["scale"] == expected.scale and record["samples"] == expected.samples_spent
    assert record["denoiser_evaluations"] == 50 * expected.samples_spent
    assert record["setting"] == plan.at(expected.scale).name == record["evaluation"]  # full fidelity: no +n
    assert record["on_edge"] is None and record["rounds"] == len(rounds)
    # the report picks the chosen setting for every row sharing this search
    rows = [r for r in table_rows(config, {plan.name: record}) if r.search and r.search.name == plan.name]
    assert len(rows) >= 2 and all([c.name for c in r.candidates] == [record["setting"]] for r in rows)


def test_unfinished_search_has_no_result(config):
    from offshelf.planning.searches import search_result_record, search_round_record

    plan = next(iter(build_plan(config).searches.values()))
    first = search_round_record(plan, None, {})
    with pytest.raises(ValueError, match="is not its last"):
        search_result_record(plan, first, {})
    with pytest.raises(ValueError, match=rf"no metrics for .*\+n{plan.spec.low_fidelity}"):
        search_round_record(plan, first, {})
    # a broken evaluation (NaN FID) stops the search, naming the scale
    nan = {name: {"fid": math.nan} for name in first["evaluations"]}
    with pytest.raises(ValueError, match=r"objective at scale .* is nan"):
        search_round_record(plan, first, nan)


def test_a_proposed_scale_resolves_to_its_setting(config, tmp_path):
    """A searched scale's setting is data: the round that proposed it names it with its parameters;
    a name no round proposed is refused, even one that spells a scale of a searched row."""
    from offshelf.planning.searches import family_name, lookup_setting, search_round_record

    the_plan = build_plan(config)
    searches, settings = the_plan.searches, the_plan.settings
    plan = searches["cond_combined-x0_relu_tj1_tm1_g0_ssearch_r1_sw5"]
    assert plan.family == family_name(plan.setting) == plan.name
    round0 = search_round_record(plan, None, {})
    scales = (0.111, 5.48, 90.0)
    record = dict(round0, settings={plan.at(s).name: plan.at(s).to_dict() for s in scales})
    for scale in scales:
        setting = plan.at(scale)
        assert lookup_setting(settings, searches, [round0, record], setting.name) == setting
        assert the_plan.setting(setting.name, [record]) == setting
    for (scale, n), name in zip(round0["proposals"], round0["evaluations"]):
        assert the_plan.evaluation(name, [round0]) == (plan.at(scale).name, n)
    assert lookup_setting(settings, searches, [], "cond_unguided").method == "unguided"
    for name in ("cond_offshelf-x0_relu_tj1_tm1_g0.7_s3_r1", "cond_offshelf-x0_relu_tj1_tm1_g0_sX_r1", "nonsense",
                 plan.at(7.0).name):  # a scale of the searched row no round proposed
        with pytest.raises(ValueError, match="neither a table row's setting nor a scale of a searched row"):
            lookup_setting(settings, searches, [round0, record], name)
    # a record whose parameters disagree with the name it gives them is refused, naming both
    wrong = dict(record, settings={plan.at(5.48).name: plan.at(6.0).to_dict()})
    with pytest.raises(ValueError, match="has the parameters of"):
        lookup_setting(settings, searches, [wrong], plan.at(5.48).name)
    # a round made before records carried their proposals' settings is refused, naming the fix
    from offshelf.planning.searches import read_rounds

    folder = tmp_path / "search"
    (folder / plan.name).mkdir(parents=True)
    old = {k: v for k, v in round0.items() if k not in ("settings", "evaluates")}
    (folder / plan.name / "round1.json").write_text(json.dumps(dict(old, round=1)))
    with pytest.raises(ValueError, match="made by an older offshelf.*delete"):
        list(read_rounds(folder, {plan.name: plan}))
    # a round of a search the plan does not hold proposes nothing
    with pytest.raises(ValueError, match="neither"):
        lookup_setting(settings, {}, [record], plan.at(5.48).name)


def test_search_plan_round_trips_through_job_params(config):
    from offshelf.planning.searches import SearchPlan

    for plan in build_plan(config).searches.values():
        assert SearchPlan.from_dict(plan.to_dict()) == plan


def test_a_table_evaluating_fewer_samples_searches_at_its_own_count(config):
    config = dict(config, tables={"table6": dict(config["tables"]["table6"], num_samples=250)})
    plan = table_rows(config)[0].search
    assert plan.name.endswith("_ssearch_r1+n250") and plan.spec.full_fidelity == 250
    assert plan.evaluation(3.0, 250).endswith("_s3_r1+n250")


def test_job_counts_bound_the_searches(config):
    from offshelf.planning.plan import build_plan
    from offshelf.search import max_evaluations, max_rounds

    config = dict(config, pareto_in_all=False)  # the tables' searches alone (the pareto target's: below)
    counts = build_plan(config).job_counts
    searches = build_plan(config).searches
    assert counts["searches"] == len(searches) == 38
    # config.yaml: 3 initial scales + 2 steps past an edge, then the finalist in full: 6 evaluations;
    # the 5 low-fidelity ones drawn and judged inside the rounds, the finalist's 500 samples in one
    # sample job (one shard of 500) and an evaluate job
    assert [max_evaluations(p.spec) for p in searches.values()] == [(5, 1)] * 38
    assert counts["search_evaluate"] == 38 * 1 and counts["search_sample"] == 38 * 1
    # 4 rounds of proposals, the first the plan's own (initial_round: no job)
    assert counts["search_round"] == sum(max_rounds(p.spec) - 1 for p in searches.values()) == 38 * 3
    # the fixed settings (unguided, CFG) apart: one evaluation each, every shard
    assert counts["evaluate"] == len(build_plan(config).settings) and counts["sample"] == counts["settings"] * counts["shards"]
    # and every other job a run makes: per search its result, per experiment a handful (the report
    # draws the sample grids: no job of their own)
    assert counts["search_result"] == 38 and "sample_grid" not in counts and "search_grid" not in counts
    assert counts["total"] == sum(counts[k] for k in ("sample", "evaluate", "calibrate", "search_sample",
                                                       "search_evaluate", "search_round", "search_result",
                                                       "train_model", "fetch_checkpoint", "reference_features",
                                                       "figure", "publish_results", "report", "all"))
    assert counts["publish_results"] == 1  # config.yaml's results_doc: `all` refreshes docs/results.md
    assert counts["pareto_report"] == counts["pareto"] == 0  # a target of its own (build_plan(config).pareto)


def test_all_counts_the_pareto_target_where_the_config_puts_it_there(config):
    """config.yaml's `all` runs the pareto target (pareto_in_all): its count is the tables' jobs and
    the target's, each job the two share (same setting, evaluation or search) once, as if the
    pareto table were one more table, plus its report; `snakemake pareto`, the named target, is not run."""
    assert config["pareto_in_all"] is True
    both = build_plan(config).job_counts
    tables = build_plan(dict(config, pareto_in_all=False)).job_counts
    one_table = dict(config, tables={**config["tables"], "pareto_as_a_table": config["pareto"]})
    one_table.pop("pareto")
    one_table.pop("pareto_in_all")
    merged = build_plan(one_table)
    assert both["pareto_report"] == 1 and both["pareto"] == 0
    for kind in ("sample", "evaluate", "calibrate", "search_round", "search_sample", "search_evaluate",
                 "search_result", "searches", "train_model", "fetch_checkpoint", "reference_features", "figure"):
        assert both[kind] == merged.job_counts[kind], kind
    assert len(set(merged.settings) - set(build_plan(config).settings)) > 0  # the target adds settings of its own
    assert both["total"] == merged.job_counts["total"] + 1
    # shared jobs counted once: fewer than the tables' count plus the named target's "at most N more"
    pareto = build_plan(config).pareto.job_counts
    assert tables["total"] < both["total"] < tables["total"] + pareto["total"]


def test_job_count_of_all_with_the_pareto_target_by_hand():
    """The small config below (Table 7, cond), with a pareto table of four rows in `all`: two rows
    the table already runs (unguided; calibrated guidance, its search), Best-of-2 (a fixed setting)
    and 2 recurrent steps (a search of its own): each new job counted by hand from the rules."""
    from offshelf.planning.costs import describe_job_counts

    config = yaml.safe_load((REPO / "config" / "ci.yaml").read_text())
    config.update(regimes=["cond"], tables={"table7": config["tables"]["table7"]}, figures={}, pareto_in_all=True)
    labels = ("unguided", "calibrated guidance", "Best-of-2", "calibrated, 2 recurrent steps")
    config["pareto"] = dict(config["pareto"], rows=[r for r in config["pareto"]["rows"] if r["label"] in labels])
    validate_config(config)
    plan = build_plan(config)
    shards = 64 // 64  # sampling.num_samples / shard_size
    assert len(plan.all_searches) == 3  # the table's two and the recurrent one: calibrated guidance's is shared
    tables = 22  # test_job_count_of_a_small_config_by_hand
    best_of_2 = shards + 1  # its samples and its evaluation
    recurrent = 2 + shards + 1 + 1  # rounds 1 and 2, the finalist's samples and evaluation, the result
    assert plan.job_counts["total"] == tables + best_of_2 + recurrent + 1 == 30  # + pareto_report
    # before any round: Best-of-2's jobs, the recurrent search's round 1 and result, the report
    assert plan.job_counts["first_dag"] == 16 + best_of_2 + 2 + 1 == 21
    line = describe_job_counts(config, plan)
    assert line.startswith("offshelf: 30 jobs planned (") and "1 pareto_report" in line
    assert "target `pareto` in `all`" in line and "not in `all`" not in line


def test_searched_rows_report_the_chosen_scale_its_trace_and_an_edge(config):
    """Table 6's rows: one search ends inside its range, one on its upper edge; the CSV names the
    chosen scale, the trace and its samples; the Markdown marks the edge and explains it."""
    from offshelf.planning.searches import search_result_record
    from offshelf.tables import EDGE_LEGEND, SEARCH_LEGEND, markdown, table_frame

    config = dict(config, tables={"table6": config["tables"]["table6"]}, regimes=["uncond"])
    plans = [row.search for row in table_rows(config)]
    records = {}
    for plan, optimum in zip(plans, (2.5, 1e5, 2.5, 2.5, 2.5)):
        rounds, fids = run_rounds(plan, fid_of(optimum))
        records[plan.name] = search_result_record(plan, rounds[-1], fids, denoiser_per_sample=50)
    rows = table_rows(config, records)
    by_setting = {row.candidates[0].name: {"fid": records[row.search.name]["fid"]} for row in rows}
    frame = table_frame(rows, by_setting, {})
    assert list(frame["status"]) == ["ok"] * 5
    assert list(frame["scale"]) == [3.0, 90.0, 3.0, 3.0, 3.0]
    assert list(frame["scale_on_edge"]) == ["", "high", "", "", ""]
    # bracketed at once: 3 scales x 250 + the finalist's 500; the edge: 5 x 250 + 500
    assert frame["search_samples"][0] == 1250 and frame["search_samples"][1] == 1750
    assert frame["search_denoiser_evaluations"][1] == 1750 * 50
    fid = fid_of(2.5)
    assert frame["search_trace"][0] == f"1@250:{fid(1):.4g} 3@250:{fid(3):.4g} 10@250:{fid(10):.4g} 3@500:{fid(3):.4g}"
    assert frame["fid"][1] == pytest.approx(records[plans[1].name]["fid"])
    text = markdown(frame, ["fid"], "Table 6")
    assert "| 90 (edge) |" in text and "| 3 |" in text and SEARCH_LEGEND in text and EDGE_LEGEND in text


def test_the_plan_is_built_once_per_validation(config, tmp_path, monkeypatch):
    from offshelf.config import validated_plan
    from offshelf.planning.plan import COUNT_BUILDS, Plan

    counter = tmp_path / "builds.txt"
    monkeypatch.setenv(COUNT_BUILDS, str(counter))
    plan = validated_plan(dict(config))
    assert isinstance(plan, Plan) and len(counter.read_text().split()) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.settings = {}


def test_read_rounds_parses_a_round_file_again_only_when_it_changed(config, tmp_path, monkeypatch):
    """The workflow's input functions ask for the rounds once per job they expand: an unchanged file
    (same mtime_ns, size, inode) is not parsed again; a rewritten one is, and a deleted one is gone.
    Round 0 is the plan's own (initial_round), read from no file."""
    import offshelf.planning.searches as searches
    from offshelf.atomic import save_json

    plan = next(iter(build_plan(config).searches.values()))
    folder = tmp_path / "search"
    round0 = searches.search_round_record(plan, None, {})
    round1, round2 = dict(round0, round=1), dict(round0, round=2)
    save_json(folder / plan.name / "round1.json", round1)
    save_json(folder / plan.name / "round2.json", round2)
    parsed = []
    real_loads = json.loads
    monkeypatch.setattr(searches, "json", type("CountingJson", (), {
        "loads": staticmethod(lambda text: parsed.append(text) or real_loads(text))}))
    first = list(searches.read_rounds(folder, {plan.name: plan}))
    assert [r["round"] for r in first] == [0, 1, 2] and len(parsed) == 2
    assert first[0] == round0 and not (folder / plan.name / "round0.json").exists()
    assert list(searches.read_rounds(folder, {plan.name: plan})) == first and len(parsed) == 2  # nothing parsed again
    save_json(folder / plan.name / "round2.json", dict(round2, final=not round2["final"]))  # a rerun round
    again = list(searches.read_rounds(folder, {plan.name: plan}))
    assert again[2]["final"] == (not round2["final"]) and len(parsed) == 3  # only the changed file
    (folder / plan.name / "round2.json").unlink()
    assert [r["round"] for r in searches.read_rounds(folder, {plan.name: plan})] == [0, 1]


def test_job_count_of_a_small_config_by_hand():
    """config/ci.yaml cut to Table 7 in the cond regime, without figures: every job a run makes,
    counted by hand from the rules (workflow/rules/*.smk), and the share Snakemake's first dry run
    lists (before the search rounds, checkpoints, add the rest)."""
    from offshelf.planning.costs import describe_job_counts

    config = yaml.safe_load((REPO / "config" / "ci.yaml").read_text())
    config.update(regimes=["cond"], tables={"table7": config["tables"]["table7"]}, figures={})
    validate_config(config)
    plan = build_plan(config)
    counts = plan.job_counts
    shards = 64 // 64  # sampling.num_samples / shard_size
    # fixed settings: the unguided baseline and CFG at its one scale; the two guided rows (fine-tuned
    # CG, off-the-shelf) each get a search
    assert len(plan.settings) == 2 and len(plan.searches) == 2
    by_hand = {
        "sample": 2 * shards, "evaluate": 2, "calibrate": 0,  # Table 7 shows no calibration error
        # each search: round 1 (draws the initial scale the plan's round 0 proposes; proposes one step
        # past the edge), the final round (proposes the finalist); the one finalist sampled in full
        # and evaluated; one result
        "search_round": 2 * 2, "search_sample": 2 * shards, "search_evaluate": 2, "search_result": 2,
        # every setting loads denoiser, off-the-shelf and fine-tuned networks; the evaluator judges
        "train_model": 4, "fetch_checkpoint": 0, "reference_features": 1,
        "figure": 1,  # Figures 3 and 5, the DDPM family's analytic figures, in one job
        "report": 1, "all": 1,  # the report draws the sample grids: no job of their own
    }
    assert {k: counts[k] for k in by_hand} == by_hand
    assert counts["total"] == sum(by_hand.values()) == 22
    # before any round has run, Snakemake knows each search's round 1 and result, not the later
    # rounds nor the finalists' sample and evaluate jobs they propose
    assert counts["first_dag"] == 22 - 2 * 1 - 2 * shards - 2 == 16
    line = describe_job_counts(config, plan)
    assert line.startswith("offshelf: 22 jobs planned (") and "at most" in line and "lists 16 of them" in line
