"""The paper's figures (offshelf.figures): every axis a reader must read is labelled."""

import numpy as np

from offshelf.figures import gaussian_mixture_figure, gradient_figure, guidance_schedules_figure, plt


def _labels(ax) -> tuple[str, str]:
    return ax.get_xlabel(), ax.get_ylabel()


def test_figure3_panels_name_both_coordinates_and_the_direction_they_show():
    fig = gaussian_mixture_figure()
    try:
        assert [_labels(ax) for ax in fig.axes] == [("x₁", "x₂")] * 2
        assert [ax.get_title() for ax in fig.axes] == ["joint ∇log p(x, y)", "conditional ∇log p(y | x)"]
    finally:
        plt.close(fig)


def test_figure4_says_what_its_rows_and_columns_are():
    steps = [9, 5, 0]
    panels = {"cond x̂0": [np.zeros((8, 8))] * 3, "cond gradient": [np.ones((8, 8))] * 3}
    fig = gradient_figure(panels, steps)
    try:
        assert fig.get_supxlabel() == "sampling step t (T → 0)" and fig.get_supylabel()
        assert [ax.get_title() for ax in fig.axes[:3]] == [f"t={s}" for s in steps]
        assert [fig.axes[0].get_ylabel(), fig.axes[3].get_ylabel()] == list(panels)
    finally:
        plt.close(fig)


def test_figure5_labels_step_and_weight():
    fig = guidance_schedules_figure(np.linspace(1e-4, 0.02, 10), [0.0, 0.3])
    try:
        (ax,) = fig.axes
        xlabel, ylabel = _labels(ax)
        assert xlabel == "sampling step t (T → 0)" and ylabel.startswith("guidance weight")
        assert [line.get_label() for line in ax.get_lines()] == ["γ = 0 (original)", "γ = 0.3"]
    finally:
        plt.close(fig)
