"""Wall-clock of one CartPole sweep run by Hydra's joblib launcher vs the same jobs one after another.

    python scripts/sweep_speedup.py                       # 12 jobs: vpg, ppo_clip, trpo × 4 seeds
    python scripts/sweep_speedup.py --seeds 2 --steps 2048 --out /tmp/speedup.json   # a quick try

Both runs are the sweep ``sweeps/compare.yaml`` restricted to CartPole, logger off, one torch thread
per job: first with ``hydra/launcher=basic`` (every job in one process, one after another), then with
``hydra/launcher=joblib hydra.launcher.n_jobs=N``. Each whole command is timed (start-up included,
so the parallel run pays for its worker processes). Results go to results/sweep_speedup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from polopt.logging import read_metrics  # noqa: E402


def run_sweep(launcher: list[str], args: argparse.Namespace, out: Path) -> float:
    """Runs the sweep into ``out``; returns its wall-clock seconds. Every job must complete."""
    command = [sys.executable, "-m", "polopt", "-m", "-cd", str(ROOT / "sweeps"), "-cn", "compare",
               f"updater={','.join(args.updaters)}", f"seed=range({args.seeds})", "env=cartpole",
               f"total_steps={args.steps}", f"num_envs={args.num_envs}", f"steps_per_env={args.steps_per_env}",
               "logger.mode=disabled", "checkpoint_every=1000000", f"hydra.sweep.dir={out}", *launcher]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=out.parent, capture_output=True, text=True,
                            env={**os.environ, "WANDB_MODE": "disabled"})
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"sweep failed:\n{result.stderr[-3000:]}")
    statuses = [json.loads(p.read_text())["status"] for p in out.glob("*/status.json")]
    expected = len(args.updaters) * args.seeds
    if statuses.count("completed") != expected:
        raise SystemExit(f"{statuses.count('completed')} of {expected} jobs completed in {out}")
    return wall


def job_seconds(sweep_dir: Path) -> list[float]:
    """Training time of each job (sum of its iteration times, from metrics.jsonl)."""
    seconds = []
    for metrics in sorted(sweep_dir.glob("*/metrics.jsonl")):
        seconds.append(sum(r.get("time/iteration_s") or 0.0 for r in read_metrics(metrics)))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updaters", nargs="+", default=["vpg", "ppo_clip", "trpo"])
    parser.add_argument("--seeds", type=int, default=4, help="seeds per updater (jobs = updaters × seeds)")
    parser.add_argument("--steps", type=int, default=20_000, help="environment steps per job")
    parser.add_argument("--num-envs", type=int, default=4)
    parser.add_argument("--steps-per-env", type=int, default=256)
    parser.add_argument("--n-jobs", type=int, default=os.cpu_count() or 1, help="joblib workers")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "sweep_speedup.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sweep_speedup_"))
    try:
        load_before = os.getloadavg()
        sequential = run_sweep(["hydra/launcher=basic"], args, work / "sequential")
        parallel = run_sweep(["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.n_jobs}"], args,
                             work / "parallel")
        jobs_seq, jobs_par = job_seconds(work / "sequential"), job_seconds(work / "parallel")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "jobs": len(args.updaters) * args.seeds, "updaters": args.updaters, "seeds": args.seeds, "env": "cartpole",
        "steps_per_job": args.steps, "num_envs": args.num_envs, "steps_per_env": args.steps_per_env,
        "n_jobs": args.n_jobs, "cpu_count": os.cpu_count(), "torch_threads": 1,
        "wall_sequential_s": round(sequential, 2), "wall_parallel_s": round(parallel, 2),
        "speedup": round(sequential / parallel, 3), "ideal_speedup": min(args.n_jobs, len(args.updaters) * args.seeds),
        "job_train_s_sum_sequential": round(sum(jobs_seq), 2), "job_train_s_sum_parallel": round(sum(jobs_par), 2),
        "load_average_before": [round(x, 2) for x in load_before],
        "python": platform.python_version(), "platform": platform.platform(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
