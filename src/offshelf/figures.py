"""The paper's figures, as matplotlib PNGs written atomically."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("MPLBACKEND", "Agg")
from offshelf.extras import needs  # noqa: E402

needs(__name__, "matplotlib")  # offshelf[workflow]
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from offshelf.atomic import atomic_write  # noqa: E402


def save_figure(fig, path) -> None:
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png",
                                                   dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)


def calibration_curves(panels: dict, path, title: str) -> None:
    """Figures 1 and 2: ECE per sampling step (reverse time runs left to right), one panel per
    trajectory kind (panel title -> {probe: per-step table}: unguided, and guided per regime when
    measured), a probe keeping its color and line style in every panel."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.6), sharey=True, squeeze=False)
    styles = ["-", "--", ":", "-.", (0, (5, 1))]  # curves that coincide over a range stay visible
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (panel, tables) in zip(axes[0], panels.items()):
        for i, (label, table) in enumerate(tables.items()):
            ice = table["ece"].mean()
            ax.plot(table["step"], table["ece"], linestyle=styles[i % len(styles)], color=colors[i % len(colors)],
                    label=f"{label} (ICE {ice:.3f})")
        ax.invert_xaxis()
        ax.set_xlabel("sampling step t (T → 0)")
        if len(panels) == 1:
            ax.set_title(title)
        else:
            ax.set_title(f"{panel} trajectories", fontsize=9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("ECE")
    if len(panels) > 1:
        fig.suptitle(title)
    save_figure(fig, path)


def gaussian_mixture_directions(path, means=((-2.0, 0.0), (2.0, 0.0), (0.0, 2.5)), target: int = 0) -> None:
    """Figure 3, saved to ``path`` (:func:`gaussian_mixture_figure`)."""
    save_figure(gaussian_mixture_figure(means, target), path)


def gaussian_mixture_figure(means=((-2.0, 0.0), (2.0, 0.0), (0.0, 2.5)), target: int = 0):
    """Figure 3 (Prop. 4.2, identity covariances): the joint direction ∇log p(x, y) = μ_y − x
    points at the target mode; the conditional direction ∇log p(y|x) = μ_y − Σ_k p(k|x) μ_k can
    point into low-density regions."""
    means = np.asarray(means, dtype=np.float64)
    grid = np.linspace(-4, 4, 17)
    xx, yy = np.meshgrid(grid, grid)
    points = np.stack([xx.ravel(), yy.ravel()], 1)
    log_n = -0.5 * ((points[:, None, :] - means[None]) ** 2).sum(-1)
    post = np.exp(log_n - log_n.max(1, keepdims=True))
    post /= post.sum(1, keepdims=True)
    joint = means[target] - points
    conditional = means[target] - post @ means
    density = np.exp(log_n).sum(1).reshape(xx.shape)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for ax, field, name in ((axes[0], joint, "joint ∇log p(x, y)"), (axes[1], conditional, "conditional ∇log p(y | x)")):
        ax.contourf(xx, yy, density, levels=12, cmap="Greys", alpha=0.6)
        norm = np.linalg.norm(field, axis=1, keepdims=True) + 1e-12
        ax.quiver(points[:, 0], points[:, 1], *(field / norm).T, color="tab:blue", scale=30)
        ax.scatter(*means.T, c="tab:red", marker="x")
        ax.scatter(*means[target], s=120, facecolors="none", edgecolors="tab:red")
        ax.set_title(name)
        ax.set_xlabel("x₁")
        ax.set_ylabel("x₂")
        ax.set_aspect("equal")
    fig.suptitle("Gaussian mixture: guidance directions toward the circled mode (arrows: unit length)", fontsize=10)
    return fig


def guidance_schedules(betas: np.ndarray, sine_factors, path) -> None:
    """Figure 5, saved to ``path`` (:func:`guidance_schedules_figure`)."""
    save_figure(guidance_schedules_figure(betas, sine_factors), path)


def guidance_schedules_figure(betas: np.ndarray, sine_factors):
    """Figure 5: the guidance weight Σ_t (here the fixed-large variance β_t of the respaced
    schedule) and Σ_t + γ·sin(πt/T)·Σ_max for each sine factor γ."""
    num_steps = len(betas)
    steps = np.arange(num_steps)
    sigma_max = float(betas.max())
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for sine_factor in sine_factors:
        weight = betas + np.maximum(sine_factor * np.sin(math.pi * steps / num_steps), 0) * sigma_max
        ax.plot(steps, weight, label=f"γ = {sine_factor:g}" + (" (original)" if sine_factor == 0 else ""))
    ax.invert_xaxis()
    ax.set_xlabel("sampling step t (T → 0)")
    ax.set_ylabel("guidance weight Σ_t + γ·sin(πt/T)·Σ_max")
    ax.set_title("Guidance schedule by sine factor γ", fontsize=10)
    ax.legend(fontsize=7)
    return fig


def gradient_panels(panels: dict[str, list[np.ndarray]], steps: list[int], path) -> None:
    """Figure 4, saved to ``path`` (:func:`gradient_figure`)."""
    save_figure(gradient_figure(panels, steps), path)


def gradient_figure(panels: dict[str, list[np.ndarray]], steps: list[int]):
    """Figure 4: rows of images (x̂0 and classifier gradient per step) for each guidance mode; the
    shared axes say what the rows and columns are (the images themselves have no axes)."""
    rows = list(panels)
    fig, axes = plt.subplots(len(rows), len(steps), figsize=(1.4 * len(steps), 1.5 * len(rows)), squeeze=False)
    for r, name in enumerate(rows):
        for c, step in enumerate(steps):
            image = panels[name][c]
            ax = axes[r][c]
            cmap = "RdBu_r" if "gradient" in name else "gray"
            vmax = np.abs(image).max() + 1e-12 if "gradient" in name else 1
            ax.imshow(image, cmap=cmap, vmin=-vmax, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t={step}", fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.supxlabel("sampling step t (T → 0)", fontsize=8)
    fig.supylabel("image / gradient per guidance mode", fontsize=8)
    return fig
