"""From loaded runs to the numbers of the report: scores per method, aggregates with bootstrap
intervals, probabilities of improvement, hyperparameter grids, KL and wall-clock per update."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from polopt.report.runs import Run, method_labels, numeric, short_keys, varying_params
from polopt.report.stats import (
    interquartile_mean,
    percentile_interval,
    pooled_iqm,
    probability_of_improvement,
    stratified_bootstrap,
)

RETURN = "rollout/ep_return"


@dataclass
class Method:
    """The completed runs (seeds) of one method on one env and their final scores."""

    env: str
    label: str
    updater: str
    runs: list[Run]
    scores: np.ndarray


def group_methods(runs: list[Run], score: Callable[[Run], float]) -> list[Method]:
    """Completed runs with a finite score, grouped by (env, method label) in first-seen order."""
    labels = method_labels(runs)
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        if run.status == "completed":
            groups.setdefault((run.env, labels[str(run.path)]), []).append(run)
    methods = []
    for (env, label), members in groups.items():
        scored = [(run, score(run)) for run in members]
        scored = [(run, s) for run, s in scored if np.isfinite(s)]
        if scored:
            methods.append(Method(env, label, members[0].updater, [r for r, _ in scored],
                                  np.array([s for _, s in scored])))
    return methods


def aggregate_rows(methods: list[Method], reps: int, rng: np.random.Generator,
                   confidence: float = 0.95) -> list[dict[str, Any]]:
    """Per method: IQM of the final scores with its stratified-bootstrap interval, mean and median."""
    rows = []
    for m in methods:
        low, high = percentile_interval(stratified_bootstrap([[m.scores]], pooled_iqm, reps, rng), confidence)
        rows.append({"env": m.env, "method": m.label, "runs": int(m.scores.size),
                     "iqm": interquartile_mean(m.scores), "ci_low": low, "ci_high": high,
                     "mean": float(m.scores.mean()), "median": float(np.median(m.scores))})
    return rows


def normalized_strata(methods: list[Method]) -> dict[str, list[np.ndarray]]:
    """Scores of each method label present on every env, min–max normalized per env over all runs
    of that env (0 = worst run, 1 = best), one stratum per env — for an aggregate across envs."""
    envs = sorted({m.env for m in methods})
    labels = [label for label in dict.fromkeys(m.label for m in methods)
              if all(any(m.env == e and m.label == label for m in methods) for e in envs)]
    bounds = {}
    for env in envs:
        pooled = np.concatenate([m.scores for m in methods if m.env == env])
        bounds[env] = (pooled.min(), max(pooled.max() - pooled.min(), 1e-12))
    by_key = {(m.env, m.label): m.scores for m in methods}
    return {label: [(by_key[env, label] - bounds[env][0]) / bounds[env][1] for env in envs] for label in labels}


def across_env_rows(methods: list[Method], reps: int, rng: np.random.Generator,
                    confidence: float = 0.95) -> list[dict[str, Any]]:
    """IQM over envs of the normalized scores, with a bootstrap stratified by env (only with ≥ 2 envs)."""
    if len({m.env for m in methods}) < 2:
        return []
    rows = []
    for label, strata in normalized_strata(methods).items():
        low, high = percentile_interval(stratified_bootstrap([strata], pooled_iqm, reps, rng), confidence)
        pooled = np.concatenate(strata)
        rows.append({"env": "all (normalized)", "method": label, "runs": int(pooled.size),
                     "iqm": pooled_iqm(strata), "ci_low": low, "ci_high": high,
                     "mean": float(pooled.mean()), "median": float(np.median(pooled))})
    return rows


def improvement_rows(methods: list[Method], reps: int, rng: np.random.Generator,
                     confidence: float = 0.95) -> list[dict[str, Any]]:
    """P(X > Y) with its stratified-bootstrap interval for every ordered pair of methods of one env;
    P(Y > X) = 1 − P(X > Y), so each unordered pair is bootstrapped once."""
    rows = []
    for a, b in itertools.combinations(methods, 2):
        if a.env != b.env:
            continue
        p = probability_of_improvement([a.scores], [b.scores])
        samples = stratified_bootstrap([[a.scores], [b.scores]], probability_of_improvement, reps, rng)
        low, high = percentile_interval(samples, confidence)
        rows.append({"env": a.env, "x": a.label, "y": b.label, "p": p, "ci_low": low, "ci_high": high})
        rows.append({"env": a.env, "x": b.label, "y": a.label, "p": 1.0 - p, "ci_low": 1.0 - high,
                     "ci_high": 1.0 - low})
    return rows


def heatmaps(methods: list[Method]) -> list[dict[str, Any]]:
    """For each (env, updater) whose methods vary exactly two numeric hyperparameters (δ × damping
    in the grid sweeps): the IQM of the final scores over seeds in each cell (NaN where none)."""
    out = []
    for env, updater in dict.fromkeys((m.env, m.updater) for m in methods):
        members = [m for m in methods if m.env == env and m.updater == updater]
        runs = [run for m in members for run in m.runs]
        keys = [k for k in varying_params(runs) if all(numeric(r.params.get(k)) is not None for r in runs)]
        if len(keys) != 2 or len(members) < 2:
            continue
        rows_key, cols_key = keys
        row_values = sorted({float(r.params[rows_key]) for r in runs})
        col_values = sorted({float(r.params[cols_key]) for r in runs})
        cells: dict[tuple[float, float], list[float]] = {}
        for m in members:
            for run, s in zip(m.runs, m.scores, strict=True):
                cells.setdefault((float(run.params[rows_key]), float(run.params[cols_key])), []).append(s)
        grid = [[interquartile_mean(cells.get((r, c), [])) for c in col_values] for r in row_values]
        counts = [[len(cells.get((r, c), [])) for c in col_values] for r in row_values]
        names = short_keys([rows_key, cols_key])
        out.append({"env": env, "updater": updater, "rows": names[rows_key], "cols": names[cols_key],
                    "row_key": rows_key, "col_key": cols_key,
                    "row_values": row_values, "col_values": col_values, "iqm": grid, "runs": counts})
    return out


def _pooled(runs: list[Run], key: str) -> np.ndarray:
    values = np.concatenate([run.series(key)[1] for run in runs]) if runs else np.empty(0)
    return values[np.isfinite(values)]


def _stat(values: np.ndarray, fn: Callable[[np.ndarray], Any]) -> float:
    return float(fn(values)) if values.size else float("nan")


def cost_rows(methods: list[Method]) -> list[dict[str, Any]]:
    """KL per update and wall-clock per update (median over all updates of all seeds), and the
    wall-clock of a whole run (median over seeds of the summed iteration times)."""
    rows = []
    for m in methods:
        kl, update_s = _pooled(m.runs, "update/kl"), _pooled(m.runs, "time/update_s")
        run_s = np.array([np.nansum(run.series("time/iteration_s")[1]) for run in m.runs])
        rows.append({"env": m.env, "method": m.label, "updates": int(kl.size),
                     "kl_median": _stat(kl, np.median), "kl_p90": _stat(kl, lambda v: np.percentile(v, 90)),
                     "kl_max": _stat(kl, np.max), "update_s_median": _stat(update_s, np.median),
                     "iteration_s_median": _stat(_pooled(m.runs, "time/iteration_s"), np.median),
                     "run_s_median": _stat(run_s, np.median)})
    return rows


def not_completed(runs: list[Run]) -> list[dict[str, Any]]:
    """Runs that did not complete (failed, interrupted, or no status: killed or still running)."""
    return [{"run": run.name, "updater": run.updater, "env": run.env, "seed": run.seed, "status": run.status,
             "error": _last_line(run.error)} for run in runs if run.status != "completed"]


def _last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else ""
