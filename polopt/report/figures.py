"""PNG figures of a sweep report (matplotlib, no display needed)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from polopt.report.analysis import RETURN, Method
from polopt.report.stats import bootstrap_band, resample_curve


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def step_grid(methods: list[Method], key: str, points: int) -> np.ndarray:
    """Common step grid from the earliest to the latest step logged with ``key`` by any run."""
    steps = [run.series(key)[0][np.isfinite(run.series(key)[1])] for m in methods for run in m.runs]
    steps = [s for s in steps if s.size]
    if not steps:
        return np.empty(0)
    return np.linspace(min(s[0] for s in steps), max(s[-1] for s in steps), points)


def _band_plot(ax: Any, methods: list[Method], key: str, points: int, reps: int,
               rng: np.random.Generator) -> None:
    grid = step_grid(methods, key, points)
    for m in methods:
        curves = np.stack([resample_curve(*run.series(key), grid) for run in m.runs])
        mean, low, high = bootstrap_band(curves, reps, rng)
        (line,) = ax.plot(grid, mean, label=f"{m.label} ({len(m.runs)})")
        ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("environment steps")
    ax.grid(alpha=0.3)


def learning_curves(env: str, methods: list[Method], path: Path, points: int, reps: int,
                    rng: np.random.Generator) -> Path:
    """Mean training episode return per method with a 95% bootstrap band over seeds."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    _band_plot(ax, methods, RETURN, points, reps, rng)
    ax.set_ylabel("episode return (training)")
    ax.set_title(f"{env}: learning curves (mean over seeds, 95% bootstrap band)")
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def final_scores(env: str, methods: list[Method], rows: list[dict[str, Any]], path: Path) -> Path:
    """IQM of the final return per method with its 95% interval, and every run's score as a dot."""
    fig, ax = plt.subplots(figsize=(7.0, max(2.4, 0.8 + 0.45 * len(methods))))
    for i, (m, row) in enumerate(zip(methods, rows, strict=True)):
        ax.plot([row["ci_low"], row["ci_high"]], [i, i], linewidth=6, alpha=0.4, solid_capstyle="butt")
        ax.plot([row["iqm"]], [i], marker="|", markersize=14, color="black")
        ax.scatter(m.scores, np.full(m.scores.size, i), s=10, color="black", alpha=0.6, zorder=3)
    ax.set_yticks(range(len(methods)), [m.label for m in methods], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("final return (IQM, 95% stratified bootstrap interval; dots: runs)")
    ax.set_title(f"{env}: final return")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def heatmap(grid: dict[str, Any], path: Path) -> Path:
    """Final-return IQM over two swept hyperparameters (e.g. δ × damping)."""
    values = np.array(grid["iqm"], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * values.shape[1], 1.4 + 0.6 * values.shape[0]))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label="final return (IQM over seeds)")
    ax.set_xticks(range(values.shape[1]), [f"{v:g}" for v in grid["col_values"]])
    ax.set_yticks(range(values.shape[0]), [f"{v:g}" for v in grid["row_values"]])
    ax.set_xlabel(grid["cols"])
    ax.set_ylabel(grid["rows"])
    finite = values[np.isfinite(values)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for (r, c), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(c, r, f"{v:.3g}", ha="center", va="center", fontsize=8,
                    color="black" if v > middle else "white")
    ax.set_title(f"{grid['env']}: {grid['updater']}")
    return _save(fig, path)


def kl_and_time(env: str, methods: list[Method], path: Path, points: int, reps: int,
                rng: np.random.Generator) -> Path:
    """Left: KL(π_old‖π_new) of each update along training. Right: wall-clock of each update."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    _band_plot(left, methods, "update/kl", points, reps, rng)
    left.set_yscale("log", nonpositive="mask")  # KL ≥ 0; exact zeros (no change) are left out
    left.set_ylabel("KL per update")
    left.set_title(f"{env}: KL per update (mean, 95% band)")
    left.legend(fontsize=7, loc="best")
    times = []
    for m in methods:
        values = np.concatenate([run.series("time/update_s")[1] for run in m.runs])
        times.append(values[np.isfinite(values)])
    right.boxplot(times, orientation="horizontal", showfliers=False)
    right.set_yticks(range(1, len(methods) + 1), [m.label for m in methods], fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("seconds per update (policy + value)")
    right.set_title(f"{env}: wall-clock per update")
    right.grid(axis="x", alpha=0.3)
    return _save(fig, path)
