"""The pareto target (offshelf.pareto, the config's `pareto` table): the methods' settings and names,
its plan kept apart from `all`'s, the work it counts, and the front of its table and figure."""

import json
import math

import pytest
import yaml

from offshelf.compute import ddpm_work
from offshelf.config import validate_config
from offshelf.pareto import on_front, pareto_frame, pareto_markdown
from offshelf.planning.plan import build_plan, pareto_config
from offshelf.settings import Setting
from workflow_utils import REPO


@pytest.fixture(scope="module")
def config():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    validate_config(config)
    return config


def test_new_methods_have_stable_names_and_old_names_do_not_change():
    calibrated = dict(softplus_beta=3, marginal_temperature=0.5, sine_factor=0.3)
    assert Setting(**calibrated, scale=2).name == "cond_offshelf-x0_sp3_tj1_tm0.5_g0.3_s2_r1"  # unchanged
    assert Setting(**calibrated, scale=2, through_denoiser=True).name == "cond_offshelf-x0_sp3_tj1_tm0.5_g0.3_s2_r1_td"
    # Best-of-N: no gradient, so neither scale, γ nor recurrence is part of it
    bon = Setting(**calibrated, method="best_of_n", num_candidates=4, scale=7, recurrent_steps=3)
    assert bon.name == "cond_offshelf-x0_sp3_tj1_tm0.5_bon4"
    smc = Setting(**calibrated, method="smc", scale=0.5, num_particles=4, resample_every=5)
    assert smc.name == "cond_offshelf-x0_sp3_tj1_tm0.5_s0.5_smc4-m5"
    # the new keys are absent from a job's params at their defaults: older jobs keep theirs
    assert not {"through_denoiser", "num_candidates", "num_particles", "resample_every"} & set(
        Setting(**calibrated).to_dict())
    for s in (bon, smc, Setting(through_denoiser=True)):
        assert Setting.from_dict(s.to_dict()).name == s.name
    with pytest.raises(ValueError, match="'num_particles' must be >= 1"):
        Setting(method="smc", num_particles=0)
    with pytest.raises(ValueError, match="'through_denoiser' must be true or false"):
        Setting.from_dict({"through_denoiser": "yes"})


def test_the_pareto_plan_is_apart_from_all(config):
    plan = build_plan(config)
    assert plan.pareto is not None
    rows = {(r.label, r.regime): r for r in plan.pareto.rows}
    assert {label for label, _ in rows} == {row["label"] for row in config["pareto"]["rows"]}
    # SMC's potential scale is searched like a guidance scale; Best-of-N has no scale to search
    assert rows[("SMC k=4, m=5", "cond")].search is not None
    assert rows[("Best-of-8", "cond")].search is None
    assert rows[("calibrated guidance", "cond")].baseline
    # the tables (their report) never wait on a pareto-only setting or search...
    only_pareto = set(plan.pareto.evaluations) - set(plan.evaluations)
    assert "cond_offshelf-x0_sp3_tj1_tm0.5_bon8" in only_pareto
    assert not any("smc" in name for name in plan.searches)
    # ...while the jobs still find them: a sample job's setting, an evaluation's sample count
    assert plan.setting("cond_offshelf-x0_sp3_tj1_tm0.5_bon8").num_candidates == 8
    assert plan.evaluation("uncond_offshelf-x0_sp3_tj1_tm0.5_bon2") == ("uncond_offshelf-x0_sp3_tj1_tm0.5_bon2", 500)
    assert any("smc4-m5" in name for name in plan.all_searches)
    assert "pareto" not in pareto_config(config) and list(pareto_config(config)["tables"]) == ["pareto"]


def test_on_front_is_the_non_dominated_set():
    costs = [25, 50, 50, 75, 100, 200]
    fids = [9.0, 7.0, 8.0, 7.0, 5.0, 5.0]
    # (50, 8) is dominated by (50, 7); (75, 7) by (50, 7); (200, 5) by (100, 5)
    assert on_front(costs, fids) == [True, True, False, False, True, False]
    assert on_front([1, 1], [2.0, 2.0]) == [True, True]  # equal points dominate neither


def test_pareto_table_counts_work_and_marks_the_front(tmp_path):
    """From metrics files alone (no features: no paired differences): the work columns are the
    backend's counts of the reported setting, seconds are per sample, the front is per regime."""
    config = yaml.safe_load((REPO / "config" / "ci.yaml").read_text())
    config = {**config, "regimes": ["cond"], "search": None}
    config.pop("search")
    config["scales"] = {"cond": [1.0]}
    plan = build_plan(config).pareto
    fids = {"unguided": 30.0, "CFG": 20.0, "calibrated guidance": 12.0, "calibrated, 2 recurrent steps": 13.0,
            "calibrated, through the denoiser": 11.0, "Best-of-2": 25.0, "SMC k=2, m=3": 10.0}
    files = []
    for row in plan.rows:
        setting = row.candidates[0]
        path = tmp_path / f"{setting.name}.json"
        path.write_text(json.dumps({"fid": fids[row.label], "accuracy": 0.5, "seconds": 6.4}))
        files.append(str(path))
    frame = pareto_frame(pareto_config(config), files, [], [], lambda s: ddpm_work(s, 10).to_dict())
    by_label = frame.set_index("row")
    assert by_label.loc["SMC k=2, m=3", "denoiser"] == 20 and by_label.loc["SMC k=2, m=3", "classifier_forward"] == 8
    assert by_label.loc["calibrated, through the denoiser", "denoiser_backward"] == 10
    assert by_label.loc["CFG", "denoiser"] == 20 and by_label.loc["Best-of-2", "classifier_backward"] == 0
    assert by_label.loc["unguided", "seconds_per_sample"] == pytest.approx(6.4 / 64)
    # cost 10: unguided 30, guided 12, through-denoiser 11 (→ front); 19: r=2 13 (dominated by 11);
    # 20: CFG 20, Best-of-2 25, SMC 10 (→ front)
    assert sorted(by_label.index[by_label["front"]]) == ["SMC k=2, m=3", "calibrated, through the denoiser"]
    text = pareto_markdown(frame, "t")
    assert text.count("| yes |") == 2 and "clf bwd" in text
    assert not math.isnan(by_label.loc["Best-of-2", "fid"])


def test_offshelf_plan_counts_the_pareto_target_apart_from_the_total(config):
    from offshelf.planning.costs import cost_plan

    config = dict(config, pareto_in_all=False)  # a named target (ci.yaml, the ImageNet configs)
    lines = {r["table"]: r for r in cost_plan(config, build_plan(config))}
    without = {k: v for k, v in config.items() if k != "pareto"}
    assert lines["total"] == {r["table"]: r for r in cost_plan(without, build_plan(without))}["total"]
    pareto = lines["pareto (own target, not in total)"]
    # forwards without a backward, by hand: Best-of-2/4/8 score 2 + 4 + 8 candidates (500 samples x 2
    # regimes); SMC k = 4, m = 5 at 25 steps scores each particle after steps 20, 15, 10, 5 and at the
    # end: 4 x 5 = 20 per sample, over every sample its λ search may draw (low and full fidelity, at most)
    from offshelf.search import max_evaluations

    smc = [r.search.spec for r in build_plan(config).pareto.rows if r.label.startswith("SMC")]
    smc_samples = sum(low * s.low_fidelity + full * s.full_fidelity for s in smc for low, full in [max_evaluations(s)])
    assert len(smc) == 2 and smc_samples > 0
    assert pareto["classifier"] - pareto["classifier_backward"] == 1000 * (2 + 4 + 8) + 20 * smc_samples


def test_offshelf_plan_counts_the_pareto_target_in_the_total_where_it_is_in_all(config):
    """config.yaml (pareto_in_all): the pareto line is the same work, and the total is that of the
    tables and the pareto table together, a setting both sample counted once."""
    from offshelf.planning.costs import cost_plan

    assert config["pareto_in_all"] is True
    lines = {r["table"]: r for r in cost_plan(config, build_plan(config))}
    apart = {r["table"]: r for r in cost_plan(dict(config, pareto_in_all=False), build_plan(config))}
    assert lines["pareto (in all)"] == dict(apart["pareto (own target, not in total)"], table="pareto (in all)")
    one_table = {k: v for k, v in config.items() if k not in ("pareto", "pareto_in_all")}
    one_table["tables"] = {**config["tables"], "pareto_as_a_table": config["pareto"]}
    together = {r["table"]: r for r in cost_plan(one_table, build_plan(one_table))}["total"]
    assert lines["total"] == together and lines["total"]["denoiser"] > apart["total"]["denoiser"]
