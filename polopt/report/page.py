"""Markdown tables and the report page."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers with ``digits`` significant digits ('–' for NaN/None); anything else as text, with the
    characters that would break a Markdown table cell escaped."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` with (key, header) ``columns``."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(k)) for k, _ in columns) + " |" for row in rows]
    return "\n".join(lines)


AGGREGATE_COLUMNS = [("method", "method"), ("runs", "runs"), ("iqm", "IQM"), ("ci_low", "95% CI low"),
                     ("ci_high", "95% CI high"), ("mean", "mean"), ("median", "median")]
COST_COLUMNS = [("method", "method"), ("updates", "updates"), ("kl_median", "KL median"), ("kl_p90", "KL p90"),
                ("kl_max", "KL max"), ("update_s_median", "s/update (median)"),
                ("iteration_s_median", "s/iteration (median)"), ("run_s_median", "s/run (median)")]
FAILED_COLUMNS = [("run", "run"), ("updater", "updater"), ("env", "env"), ("seed", "seed"), ("status", "status"),
                  ("error", "error")]


def improvement_matrix(rows: list[dict[str, Any]], methods: list[str]) -> str:
    """Markdown matrix: cell (X, Y) = P(X > Y) [95% interval]."""
    cells = {(r["x"], r["y"]): r for r in rows}
    lines = ["| P(row > column) | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 1)]
    for x in methods:
        entries = []
        for y in methods:
            r = cells.get((x, y))
            entries.append(f"{r['p']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]" if r else "–")
        lines.append(f"| {fmt(x)} | " + " | ".join(entries) + " |")
    return "\n".join(lines)


def heatmap_table(grid: dict[str, Any]) -> str:
    header = f"| {grid['rows']} \\ {grid['cols']} | " + " | ".join(f"{v:g}" for v in grid["col_values"]) + " |"
    lines = [header, "|" + "---|" * (len(grid["col_values"]) + 1)]
    for value, row, counts in zip(grid["row_values"], grid["iqm"], grid["runs"], strict=True):
        lines.append(f"| {value:g} | " + " | ".join(f"{fmt(v)} ({n})" for v, n in zip(row, counts, strict=True))
                     + " |")
    return "\n".join(lines)


def env_section(env: str, summary: dict[str, Any], figures: dict[str, str]) -> list[str]:
    """The part of the page about one env."""
    methods = [r["method"] for r in summary["aggregates"] if r["env"] == env]
    out = [f"## {env}", "", "### Learning curves", "", f"![learning curves]({figures['curves']})", "",
           "### Final return", "", f"![final return]({figures['final']})", "",
           table([r for r in summary["aggregates"] if r["env"] == env], AGGREGATE_COLUMNS), "",
           "### Probability of improvement", "",
           improvement_matrix([r for r in summary["improvement"] if r["env"] == env], methods), ""]
    grids = [g for g in summary["heatmaps"] if g["env"] == env]
    if grids:
        out += ["### Hyperparameter grid", ""]
        for grid, name in zip(grids, figures["heatmaps"], strict=True):
            out += [f"**{grid['updater']}**: final-return IQM over seeds (runs per cell in brackets)", "",
                    f"![{grid['updater']} grid]({name})", "", heatmap_table(grid), ""]
    out += ["### KL and wall-clock per update", "", f"![KL and wall-clock]({figures['cost']})", "",
            table([r for r in summary["costs"] if r["env"] == env], COST_COLUMNS), ""]
    return out


def render(summary: dict[str, Any], figures: dict[str, dict[str, Any]]) -> str:
    """The whole Markdown page: per env sections, the aggregate across envs, failed runs, method notes."""
    counts = summary["counts"]
    out = [f"# Sweep report: {summary['title']}", "",
           f"{counts['runs']} runs: {counts['completed']} completed, {counts['not_completed']} not completed. "
           f"Source: `{summary['source']}`.", ""]
    for env in summary["envs"]:
        out += env_section(env, summary, figures[env])
    if summary["across_envs"]:
        out += ["## All envs (scores min–max normalized per env)", "",
                table(summary["across_envs"], AGGREGATE_COLUMNS), ""]
    out += ["## Runs that did not complete", ""]
    out += [table(summary["not_completed"], FAILED_COLUMNS) if summary["not_completed"] else "None.", ""]
    s = summary["settings"]
    out += ["## Method", "",
            f"- Final return of a run: {s['score']}.",
            "- IQM: mean of the middle 50% of the runs' final returns; intervals: 95% percentile "
            f"bootstrap, stratified by env, {s['reps']} resamples (Agarwal et al. 2021, "
            "\"Deep Reinforcement Learning at the Edge of the Statistical Precipice\").",
            "- P(X > Y): probability that a run of X has a higher final return than a run of Y "
            "(ties count ½), averaged over envs (same source).",
            "- Learning curves: training episode returns interpolated onto a common step grid, mean over "
            "seeds, pointwise 95% bootstrap band over seeds.",
            f"- W&B: {summary['wandb']}", ""]
    return "\n".join(out)
