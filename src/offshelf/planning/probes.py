"""Calibration probes: the classifier variants whose calibration the tables and figures show,
unguided (by probe name) and, with ``calibration.trajectories: [unguided, guided]``, along guided
trajectories at one fixed scale per regime (by setting name)."""

from __future__ import annotations

from dataclasses import replace

from offshelf.settings import Setting, probe_setting


def calibrates_guided(config: dict) -> bool:
    """Whether probes are also measured along guided trajectories (``calibration.trajectories``;
    default: unguided only)."""
    return "guided" in config.get("calibration", {}).get("trajectories", ["unguided"])


def guided_probe(config: dict, setting: Setting) -> Setting:
    """The trajectories of ``setting``'s guided calibration: its own design (classifier, input, β,
    τ1, τ2, γ, recurrent steps, regime) at its regime's ``calibration.guided_scale``, one fixed scale
    for every row, never the row's best-of-grid scale (docs/method.md §6)."""
    scales = config.get("calibration", {}).get("guided_scale", {})
    if setting.regime not in scales:
        raise ValueError(f"config key 'calibration.guided_scale.{setting.regime}' is missing: guided calibration "
                         f"of regime {setting.regime!r} needs its scale")
    return replace(setting, scale=float(scales[setting.regime])).canonical()


def figure_guided_probes(config: dict, figure: str) -> dict[str, list[Setting]]:
    """Regime -> the guided calibrations of a calibration figure's probes, in the figure's order: each
    probe's classifier with the other knobs at their defaults (τ1 = τ2 = 1, γ = 0, one step), the
    design of Tables 2-4's rows, so a figure's curve is the same file as the table's ``ice_guided``."""
    probes = config["figures"][figure]["probes"]
    return {regime: [guided_probe(config, replace(probe_setting(p), regime=regime)) for p in probes]
            for regime in config["regimes"]}


def figure_probes(config: dict) -> list[str]:
    """The probes Figures 1-2 show (unguided calibration)."""
    return [p for figure in ("figure1", "figure2") for p in config.get("figures", {}).get(figure, {}).get("probes", [])]


# Figure 4's sample: the paper's uncond, off-the-shelf x̂0 guidance (its Softplus/schedule knobs are
# the figure's own params).
FIGURE4_SETTING = Setting(regime="uncond", classifier="offshelf", input="x0", softplus_beta=3.0, sine_factor=0.3)


def figure_guided_settings(config: dict) -> list[Setting]:
    """The guided calibrations Figures 1-2 show (with guided calibration on)."""
    return [s for figure in ("figure1", "figure2") if figure in config.get("figures", {})
            for settings in figure_guided_probes(config, figure).values() for s in settings]


def report_figures(config: dict, backend) -> list[str]:
    """The report's figures: those the config asks for (calibration curves, the gradient panel) and
    the analytic figures of the backend's family (one figure_analytic job makes them all)."""
    from offshelf.backends.capabilities import Capability

    analytic = backend.analytic_figures if Capability.ANALYTIC_FIGURES in backend.capabilities else ()
    return sorted([f for f in ("figure1", "figure2", "figure4") if f in config.get("figures", {})] + list(analytic))
