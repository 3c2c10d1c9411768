"""Report statistics against explicit computations, and the report built from synthetic run folders
with known metrics."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from polopt.report import cli
from polopt.report.runs import load_runs, method_labels, parse_override
from polopt.report.stats import (
    bootstrap_band,
    final_score,
    interquartile_mean,
    percentile_interval,
    pooled_iqm,
    probability_of_improvement,
    resample_curve,
    stratified_bootstrap,
)
from polopt.report.wandb_report import build_report, publish

# --- statistics ---------------------------------------------------------------------------------


def test_iqm_is_the_mean_of_the_middle_half():
    assert interquartile_mean(np.arange(1, 9)) == pytest.approx((3 + 4 + 5 + 6) / 4)
    assert interquartile_mean([5, 1, 4, 2, 3]) == pytest.approx((2 + 3 + 4) / 3)  # ⌊5/4⌋ = 1 cut each side
    assert interquartile_mean([7.0, 1.0, 4.0]) == pytest.approx(4.0)  # fewer than 4: plain mean
    x = np.random.default_rng(0).normal(size=11)
    s = sorted(x)
    assert interquartile_mean(x) == pytest.approx(sum(s[2:9]) / 7)  # ⌊11/4⌋ = 2
    assert np.isnan(interquartile_mean([]))


def test_probability_of_improvement_counts_pairs_with_ties_as_half():
    x = [[1.0, 2.0, 3.0, 3.0], [0.0, 5.0]]
    y = [[2.0, 3.0, 0.5], [5.0, 1.0, 1.0]]
    per_task = []
    for xs, ys in zip(x, y, strict=True):
        wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in xs for b in ys)
        per_task.append(wins / (len(xs) * len(ys)))
    assert probability_of_improvement(x, y) == pytest.approx(sum(per_task) / 2)
    assert probability_of_improvement([[1.0, 2.0]], [[1.0, 2.0]]) == pytest.approx(0.5)
    assert probability_of_improvement(x, y) + probability_of_improvement(y, x) == pytest.approx(1.0)


def test_stratified_bootstrap_matches_a_reference_loop_and_keeps_strata():
    strata = [np.array([1.0, 2.0, 3.0]), np.array([100.0, 200.0, 300.0, 400.0, 500.0])]
    seen = []

    def record(resampled):
        seen.append([r.copy() for r in resampled])
        return pooled_iqm(resampled)

    samples = stratified_bootstrap([strata], record, 50, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    for r in range(50):
        draws = [s[rng.integers(0, s.size, s.size)] for s in strata]
        assert samples[r] == pytest.approx(interquartile_mean(np.concatenate(draws)))
    for resampled in seen:  # each stratum only from its own runs, with its own run count
        assert resampled[0].size == 3 and set(resampled[0]) <= {1.0, 2.0, 3.0}
        assert resampled[1].size == 5 and set(resampled[1]) <= {100.0, 200.0, 300.0, 400.0, 500.0}


def test_bootstrap_of_the_mean_has_the_textbook_spread():
    x = np.array([3.0, 7.0, 1.0, 9.0, 4.0, 6.0, 2.0, 8.0])
    samples = stratified_bootstrap([[x]], lambda s: float(np.concatenate(s).mean()), 20000,
                                   np.random.default_rng(0))
    assert samples.mean() == pytest.approx(x.mean(), abs=0.05)
    assert samples.std() == pytest.approx(x.std() / np.sqrt(x.size), rel=0.03)  # σ/√n, σ with ddof=0


def test_percentile_interval_and_constant_scores():
    assert percentile_interval(np.arange(101.0)) == pytest.approx((2.5, 97.5))
    samples = stratified_bootstrap([[np.full(5, 7.0)]], pooled_iqm, 100, np.random.default_rng(0))
    assert percentile_interval(samples) == (7.0, 7.0)


def test_bootstrap_band_resamples_whole_runs_and_skips_missing_steps():
    curves = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, np.nan], [5.0, 6.0, np.nan]])
    mean, low, high = bootstrap_band(curves, 200, np.random.default_rng(1))
    assert mean == pytest.approx([3.0, 4.0, 3.0])
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 3, (200, 3))
    boot = np.array([[np.nanmean(curves[r, j]) if np.isfinite(curves[r, j]).any() else np.nan for j in range(3)]
                     for r in rows])
    assert low == pytest.approx(np.nanpercentile(boot, 2.5, axis=0))
    assert high == pytest.approx(np.nanpercentile(boot, 97.5, axis=0))
    same = bootstrap_band(np.tile([1.0, 2.0], (4, 1)), 50, np.random.default_rng(0))
    assert all(band == pytest.approx([1.0, 2.0]) for band in same)


def test_final_score_and_resample_curve():
    steps = np.array([100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0, 900.0, 1000.0])
    values = np.array([0, 1, 2, 3, 4, 5, 6, 7, np.nan, 9.0])
    assert final_score(steps, values, fraction=0.1) == pytest.approx(9.0)  # steps ≥ 900: only 9 finite
    assert final_score(steps, values, fraction=0.25) == pytest.approx((7 + 9) / 2)  # steps ≥ 750
    assert final_score(steps, np.r_[values[:8], np.nan, np.nan], 0.1) == pytest.approx(7.0)  # last finite
    assert np.isnan(final_score(steps, np.full(10, np.nan)))
    grid = np.array([50.0, 100.0, 150.0, 850.0, 1000.0, 1100.0])
    out = resample_curve(steps, values, grid)
    assert np.isnan(out[0]) and np.isnan(out[-1])
    assert out[1:5] == pytest.approx([0.0, 0.5, 7.5, 9.0])  # 850: ¼ of the way from 800 (7) to 1000 (9)


# --- synthetic run folders ------------------------------------------------------------------------


def write_run(root: Path, name: str, updater: str, seed: int, finals: float, overrides: list[str],
              status: str | None = "completed", error: str | None = None, env: str = "cartpole") -> None:
    """A run folder as ``python -m polopt`` writes it: 1000 steps, return 0 before the last 10% of
    steps (≥ 900) and ``finals`` within it; KL 0.01·(seed + 1); 0.5 s per update, 1 s per iteration."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"updater={updater}", f"seed={seed}",
                                                                    *overrides, "total_steps=1000"]))
    choices = {"updater": updater, "env": env, "logger": "none", "hydra/launcher": "joblib"}
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    (run / "config_resolved.yaml").write_text(yaml.safe_dump({"seed": seed, "logger": {"group": "synthetic"}}))
    rows = [{"step": 100 * i, "rollout/ep_return": float(finals) if i >= 9 else 0.0,
             "update/kl": 0.01 * (seed + 1), "time/update_s": 0.5, "time/iteration_s": 1.0} for i in range(1, 11)]
    rows.insert(3, {"step": 350, "update/kl": 0.01 * (seed + 1), "time/update_s": 0.5, "time/iteration_s": 1.0})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if status is not None:
        (run / "status.json").write_text(json.dumps({"status": status, "error": error}))


@pytest.fixture
def comparison(tmp_path: Path) -> Path:
    root = tmp_path / "multirun"
    a, b = [10.0, 20.0, 30.0, 40.0], [15.0, 25.0, 35.0, 45.0]
    for seed, value in enumerate(a):
        write_run(root, f"{seed}_vpg_cartpole_seed{seed}", "vpg", seed, value, [])
    for seed, value in enumerate(b):
        write_run(root, f"{4 + seed}_ppo_clip_cartpole_seed{seed}", "ppo_clip", seed, value, [])
    write_run(root, "8_trpo_cartpole_seed0", "trpo", 0, 99.0, [], status="failed",
              error="Traceback...\nValueError: it diverged")
    write_run(root, "9_trpo_cartpole_seed1", "trpo", 1, 99.0, [], status=None)
    return root


def test_report_tables_hold_the_known_aggregates(comparison: Path):
    report = cli.main([str(comparison), "--bootstrap", "300"])
    out = report.parent
    for name in ("learning_curves_cartpole.png", "final_return_cartpole.png", "kl_walltime_cartpole.png"):
        assert (out / name).stat().st_size > 5000, name
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["method"]: r for r in summary["aggregates"]}
    assert set(rows) == {"vpg", "ppo_clip"}  # the trpo runs did not complete
    assert rows["vpg"]["iqm"] == pytest.approx(25.0) and rows["ppo_clip"]["iqm"] == pytest.approx(30.0)
    assert rows["vpg"]["mean"] == pytest.approx(25.0) and rows["vpg"]["runs"] == 4
    assert 10.0 <= rows["vpg"]["ci_low"] <= 25.0 <= rows["vpg"]["ci_high"] <= 40.0
    wins = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in itertools.product([10, 20, 30, 40],
                                                                                     [15, 25, 35, 45]))
    poi = {(r["x"], r["y"]): r for r in summary["improvement"]}
    assert poi["vpg", "ppo_clip"]["p"] == pytest.approx(wins / 16)
    assert poi["ppo_clip", "vpg"]["p"] == pytest.approx(1 - wins / 16)
    costs = {r["method"]: r for r in summary["costs"]}
    assert costs["vpg"]["kl_median"] == pytest.approx(np.median([0.01, 0.02, 0.03, 0.04]))
    assert costs["vpg"]["kl_max"] == pytest.approx(0.04) and costs["vpg"]["updates"] == 44
    assert costs["ppo_clip"]["update_s_median"] == pytest.approx(0.5)
    assert costs["ppo_clip"]["run_s_median"] == pytest.approx(11.0)
    failed = {r["run"]: r for r in summary["not_completed"]}
    assert failed["8_trpo_cartpole_seed0"]["status"] == "failed"
    assert failed["8_trpo_cartpole_seed0"]["error"] == "ValueError: it diverged"
    assert failed["9_trpo_cartpole_seed1"]["status"] == "unknown"
    page = report.read_text()
    assert "| vpg | 4 | 25 |" in page and "| ppo_clip | 4 | 30 |" in page
    assert f"| vpg | – | {wins / 16:.2f} [" in page
    assert "8_trpo_cartpole_seed0" in page and "ValueError: it diverged" in page
    assert "![learning curves](learning_curves_cartpole.png)" in page
    assert "no W&B Report" in page


def test_grid_sweep_gets_a_heatmap_of_final_returns(tmp_path: Path):
    root, job = tmp_path / "grid", 0
    expected = {}
    for max_kl, damping in itertools.product([0.01, 0.1], [0.1, 1.0]):
        for seed in range(2):
            value = 1000 * max_kl + damping + seed
            expected.setdefault((max_kl, damping), []).append(value)
            write_run(root, f"{job}_trpo_cartpole_seed{seed}", "trpo", seed, value,
                      [f"updater.step_rule.max_kl={max_kl}", f"updater.fvp.damping={damping}"])
            job += 1
    report = cli.main([str(root), "--out", str(tmp_path / "out"), "--bootstrap", "100"])
    assert (report.parent / "heatmap_cartpole_trpo.png").stat().st_size > 5000
    (grid,) = json.loads((report.parent / "summary.json").read_text())["heatmaps"]
    assert (grid["rows"], grid["cols"]) == ("max_kl", "damping")
    assert grid["row_values"] == [0.01, 0.1] and grid["col_values"] == [0.1, 1.0]
    for i, j in itertools.product(range(2), range(2)):
        cell = expected[grid["row_values"][i], grid["col_values"][j]]
        assert grid["iqm"][i][j] == pytest.approx(sum(cell) / 2) and grid["runs"][i][j] == 2
    methods = {r["method"] for r in json.loads((report.parent / "summary.json").read_text())["aggregates"]}
    assert "trpo max_kl=0.01 damping=0.1" in methods and len(methods) == 4
    assert "| max_kl \\ damping | 0.1 | 1 |" in report.read_text()


def test_two_envs_get_an_aggregate_stratified_by_env(tmp_path: Path):
    root = tmp_path / "two_envs"
    for i, (env, updater, value) in enumerate([("cartpole", "vpg", 10), ("cartpole", "vpg", 20),
                                               ("cartpole", "trpo", 30), ("cartpole", "trpo", 40),
                                               ("pendulum", "vpg", -100), ("pendulum", "trpo", -300)]):
        write_run(root, f"{i}_{updater}_{env}", updater, i, value, [f"env={env}"], env=env)
    summary = json.loads((cli.main([str(root), "--bootstrap", "100"]).parent / "summary.json").read_text())
    assert summary["envs"] == ["cartpole", "pendulum"]
    across = {r["method"]: r for r in summary["across_envs"]}
    # min–max per env: cartpole vpg 0, 1/3; trpo 2/3, 1; pendulum vpg 1, trpo 0.
    assert across["vpg"]["mean"] == pytest.approx((0 + 1 / 3 + 1) / 3)
    assert across["trpo"]["mean"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_labels_and_overrides():
    assert parse_override("++updater.lr=1e-3") == ("updater.lr", "1e-3")
    assert parse_override("~updater.lr") is None


def test_method_labels_name_the_swept_values(tmp_path: Path):
    for i, lr in enumerate(["3e-4", "1e-3"]):
        for seed in range(2):
            write_run(tmp_path, f"{2 * i + seed}_vpg", "vpg", seed, 1.0, [f"updater.lr={lr}", "env=cartpole"])
    labels = set(method_labels(load_runs(tmp_path)).values())
    assert labels == {"vpg lr=3e-4", "vpg lr=1e-3"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pydantic v1-style validators in wandb-workspaces
def test_wandb_report_offline_says_so_and_builds_the_panels(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    line = publish("t", "polopt", None, groups=["g"], group_keys=[], grid_keys=[], tables_markdown="")
    assert line.startswith("no W&B Report: W&B is offline")
    pytest.importorskip("wandb_workspaces")
    report = build_report("Sweep x", "polopt", "someone", groups=["trpo_grid"],
                          group_keys=["updater.step_rule.max_kl", "updater.fvp.damping"],
                          grid_keys=[["updater.step_rule.max_kl", "updater.fvp.damping"]], tables_markdown="| a |")
    grid = report.blocks[0]
    assert grid.runsets[0].filters == "Group = 'trpo_grid'"
    assert grid.runsets[0].groupby == ["config.choices.updater", "config.updater.step_rule.max_kl",
                                       "config.updater.fvp.damping"]
    titles = [p.title for p in grid.panels]
    assert titles[:4] == ["Episode return (training)", "Final return (last logged)", "KL per update",
                          "Wall-clock per update (s)"]
    assert len(grid.panels) == 5  # + parallel coordinates over the grid
