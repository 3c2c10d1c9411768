"""``python scripts/report.py MULTIRUN_DIR [--out DIR]``: the method-comparison report of a sweep.

Reads every run under MULTIRUN_DIR from its local files (metrics.jsonl, status.json, .hydra/) and
writes report.md (figures as PNG beside it, tables inline) and summary.json (every number of the
tables) into --out (default MULTIRUN_DIR/report). With --wandb-project, when W&B is online and
logged in, it also saves a W&B Report with the equivalent panels.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from polopt.report import analysis, figures, page
from polopt.report.runs import Run, load_runs, varying_params
from polopt.report.stats import final_score


def training_score(fraction: float) -> Callable[[Run], float]:
    def score(run: Run) -> float:
        return final_score(*run.series(analysis.RETURN), fraction=fraction)
    return score


def evaluation_score(episodes: int) -> Callable[[Run], float]:
    from polopt.evaluate import evaluate_checkpoint

    def score(run: Run) -> float:
        checkpoint = run.path / "checkpoints" / "last.pt"
        if not checkpoint.is_file():
            return float("nan")
        return statistics.fmean(evaluate_checkpoint(checkpoint, episodes, seed=10_000 + (run.seed or 0)))
    return score


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def summarize(runs: list[Run], methods: list[analysis.Method], args: argparse.Namespace,
              rng: np.random.Generator) -> dict[str, Any]:
    score = (f"mean deterministic return of {args.eval_episodes} evaluation episodes of the final checkpoint"
             if args.eval_episodes else
             f"mean training episode return over the last {args.final_fraction:.0%} of its steps")
    completed = sum(run.status == "completed" for run in runs)
    source = Path(args.multirun_dir).resolve()
    return {"title": f"{source.parent.name}/{source.name}", "source": str(args.multirun_dir),
            "envs": list(dict.fromkeys(m.env for m in methods)),
            "counts": {"runs": len(runs), "completed": completed, "not_completed": len(runs) - completed},
            "aggregates": analysis.aggregate_rows(methods, args.bootstrap, rng),
            "across_envs": analysis.across_env_rows(methods, args.bootstrap, rng),
            "improvement": analysis.improvement_rows(methods, args.bootstrap, rng),
            "heatmaps": analysis.heatmaps(methods), "costs": analysis.cost_rows(methods),
            "not_completed": analysis.not_completed(runs),
            "settings": {"score": score, "reps": args.bootstrap, "seed": args.seed}}


def draw(summary: dict[str, Any], methods: list[analysis.Method], out: Path, args: argparse.Namespace,
         rng: np.random.Generator) -> dict[str, dict[str, Any]]:
    """All figures, per env; returns their file names (relative to ``out``) for the page."""
    names: dict[str, dict[str, Any]] = {}
    for env in summary["envs"]:
        env_methods = [m for m in methods if m.env == env]
        rows = [r for r in summary["aggregates"] if r["env"] == env]
        tag = figures.slug(env)
        names[env] = {
            "curves": figures.learning_curves(env, env_methods, out / f"learning_curves_{tag}.png",
                                              args.points, args.bootstrap, rng).name,
            "final": figures.final_scores(env, env_methods, rows, out / f"final_return_{tag}.png").name,
            "cost": figures.kl_and_time(env, env_methods, out / f"kl_walltime_{tag}.png", args.points,
                                        args.bootstrap, rng).name,
            "heatmaps": [figures.heatmap(g, out / f"heatmap_{tag}_{figures.slug(g['updater'])}.png").name
                         for g in summary["heatmaps"] if g["env"] == env]}
    return names


def wandb_line(summary: dict[str, Any], runs: list[Run], args: argparse.Namespace) -> str:
    if not args.wandb_project:
        return "no W&B Report: not requested (add --wandb-project NAME when online and logged in)"
    from polopt.report.wandb_report import publish

    tables = "\n\n".join(page.table([r for r in summary["aggregates"] if r["env"] == env], page.AGGREGATE_COLUMNS)
                         for env in summary["envs"])
    groups = sorted({run.group for run in runs if run.group and run.status == "completed"})
    return publish(f"Sweep {summary['title']}", args.wandb_project, args.wandb_entity, groups=groups,
                   group_keys=varying_params(runs), tables_markdown=tables,
                   grid_keys=[[g["row_key"], g["col_key"]] for g in summary["heatmaps"]])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("multirun_dir", type=Path, help="a sweep's output folder (or any folder of runs)")
    parser.add_argument("--out", type=Path, help="where to write the report (default: MULTIRUN_DIR/report)")
    parser.add_argument("--final-fraction", type=float, default=0.1,
                        help="final return = mean training return over this last fraction of steps")
    parser.add_argument("--eval-episodes", type=int, default=0,
                        help="score runs by deterministic evaluation of their final checkpoint instead")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--points", type=int, default=100, help="points of the learning-curve step grid")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument("--wandb-project", help="also save a W&B Report in this project (online only)")
    parser.add_argument("--wandb-entity", help="W&B entity of the project (default: yours)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    out = args.out or args.multirun_dir / "report"
    runs = load_runs(args.multirun_dir, exclude=out)
    if not runs:
        raise SystemExit(f"no runs (folders with .hydra/) under {args.multirun_dir}")
    score = evaluation_score(args.eval_episodes) if args.eval_episodes else training_score(args.final_fraction)
    methods = analysis.group_methods(runs, score)
    rng = np.random.default_rng(args.seed)
    summary = summarize(runs, methods, args, rng)
    out.mkdir(parents=True, exist_ok=True)
    names = draw(summary, methods, out, args, rng)
    summary["wandb"] = wandb_line(summary, runs, args)
    (out / "report.md").write_text(page.render(summary, names))
    (out / "summary.json").write_text(json.dumps(_json_safe(summary), indent=1) + "\n")
    print(f"{len(runs)} runs ({summary['counts']['not_completed']} not completed) → {out / 'report.md'}")
    print(summary["wandb"])
    return out / "report.md"
