"""Learning figures: train updaters × seeds on one env, evaluate each final checkpoint deterministically.

    python scripts/learning_figures.py --updaters trpo tnpg npg --seeds 0 1 2 --env hopper --steps 1000000

Each run is ``python -m polopt updater=U env=E seed=S total_steps=N logger=none`` in its own process
(``--jobs`` at a time), then ``python -m polopt.evaluate``-style deterministic evaluation of its final
checkpoint (``--episodes`` episodes). Results are appended to ``results/learning.jsonl`` (one row per
run) and summarized as a Markdown table in ``results/learning.md`` (median and range over seeds).
Extra Hydra overrides after ``--`` apply to every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from polopt.evaluate import evaluate_checkpoint  # noqa: E402
from polopt.logging import read_metrics  # noqa: E402


def train_and_evaluate(updater: str, env: str, seed: int, args: argparse.Namespace) -> dict:
    run_dir = Path(args.out) / "runs" / f"{updater}_{env}_seed{seed}"
    command = [sys.executable, "-m", "polopt", f"updater={updater}", f"env={env}", f"seed={seed}",
               f"total_steps={args.steps}", "logger=none", "progress=false", "torch_threads=1",
               f"hydra.run.dir={run_dir}", *args.overrides]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=run_dir.parent, capture_output=True, text=True)
    wall = time.perf_counter() - start
    row: dict = {"updater": updater, "env": env, "seed": seed, "steps": args.steps, "wall_s": round(wall, 1),
                 "overrides": args.overrides}
    if result.returncode != 0:
        row["error"] = result.stderr[-2000:]
        return row
    returns = evaluate_checkpoint(run_dir / "checkpoints" / "last.pt", episodes=args.episodes, seed=10_000 + seed)
    metrics = read_metrics(run_dir / "metrics.jsonl")
    train_returns = [m["rollout/ep_return"] for m in metrics if m.get("rollout/ep_return") is not None]
    row.update({"eval_return": statistics.fmean(returns), "eval_std": statistics.pstdev(returns),
                "train_return_last": statistics.fmean(train_returns[-10:]) if train_returns else None,
                "sps": args.steps / wall})
    return row


def summarize(rows: list[dict]) -> str:
    lines = ["| updater | env | steps | seeds | eval return median | min | max | train return (last) | wall min/run |",
             "|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if "eval_return" in row:
            groups.setdefault((row["updater"], row["env"], row["steps"], tuple(row["overrides"])), []).append(row)
    for (updater, env, steps, overrides), runs in sorted(groups.items()):
        evals = [r["eval_return"] for r in runs]
        trains = [r["train_return_last"] for r in runs if r["train_return_last"] is not None]
        name = updater + (f" ({' '.join(overrides)})" if overrides else "")
        train = f"{statistics.median(trains):.0f}" if trains else "–"
        wall = statistics.median(r["wall_s"] for r in runs) / 60
        lines.append(f"| {name} | {env} | {steps:,} | {len(runs)} | {statistics.median(evals):.0f} | "
                     f"{min(evals):.0f} | {max(evals):.0f} | {train} | {wall:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updaters", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--env", default="hopper")
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    args = parser.parse_args()
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    jobs = [(u, args.env, s) for u in args.updaters for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        for row in pool.map(lambda job: train_and_evaluate(*job, args), jobs):
            print(json.dumps(row), flush=True)
            with (out / "learning.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
    rows = read_metrics(out / "learning.jsonl")
    (out / "learning.md").write_text(summarize(rows))
    print(summarize(rows))


if __name__ == "__main__":
    main()
