"""The measurements behind scripts/benchmark.py (each returns a JSON-ready dict)."""

from __future__ import annotations

import importlib.util
import inspect
import math
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "results" / "runs" / "benchmark"


def _physics_worker(id: str, seconds: float, barrier: Any, rates: Any) -> None:
    """Random controls (fixed seed), state reset every 1000 env steps as at Hopper's time limit."""
    import gymnasium as gym
    import mujoco
    import numpy as np

    env = gym.make(id)
    sim: Any = env.unwrapped
    model, data, frame_skip = sim.model, sim.data, sim.frame_skip
    env.reset(seed=0)
    low, high = model.actuator_ctrlrange.T
    controls = np.random.default_rng(0).uniform(low, high, (1000, model.nu))
    barrier.wait()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        mujoco.mj_resetData(model, data)
        for control in controls:
            data.ctrl[:] = control
            mujoco.mj_step(model, data, nstep=frame_skip)
        steps += len(controls)
    rates.put(steps / (time.perf_counter() - start))


def _physics_rates(id: str, processes: int, seconds: float) -> list[float]:
    ctx = mp.get_context("spawn")
    barrier, rates = ctx.Barrier(processes), ctx.Queue()
    workers = [ctx.Process(target=_physics_worker, args=(id, seconds, barrier, rates)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    results = [rates.get(timeout=120 + 2 * seconds) for _ in workers]
    for worker in workers:
        worker.join()
    return results


def raw_physics(id: str, cores: int, seconds: float, e2e_cores: int = 1) -> dict:
    """Env steps/s of a plain mj_step loop (the env's model and frame skip): one process alone, one process
    per core used running at once (their sum is the rate of the cores used), and the rate of `e2e_cores`
    cores (the denominator of the pinned end-to-end runs: one process per core, at once)."""
    import gymnasium as gym

    env = gym.make(id)
    if not hasattr(env.unwrapped, "frame_skip"):
        raise SystemExit(f"{id} is not a MuJoCo env: the benchmark measures MuJoCo physics")
    frame_skip = env.unwrapped.frame_skip
    env.close()
    single = _physics_rates(id, 1, seconds)[0]
    together = _physics_rates(id, cores, seconds) if cores > 1 else [single]
    if e2e_cores == 1:
        pinned = single
    elif e2e_cores == cores:
        pinned = sum(together)
    else:
        pinned = sum(_physics_rates(id, e2e_cores, seconds))
    return {"frame_skip": frame_skip, "per_core_steps_per_s": single, "cores": cores,
            "per_process_when_all_run_steps_per_s": together, "cores_used_steps_per_s": sum(together),
            "e2e_cores": e2e_cores, "e2e_cores_steps_per_s": pinned}


def collector_variants(id: str, num_envs: int) -> list[dict[str, Any]]:
    from polopt.envpool_backend import VERIFIED_IDS, envpool_available

    variants: list[dict[str, Any]] = [{"name": "gymnasium sync", "backend": "gymnasium", "vectorization": "sync"},
                {"name": "gymnasium async", "backend": "gymnasium", "vectorization": "async"}]
    if envpool_available() and id in VERIFIED_IDS:
        variants += [{"name": f"envpool {n} thread(s)", "backend": "envpool", "kwargs": {"num_threads": n}}
                     for n in (1, 2)]
    variants += [{**v, "name": v["name"] + ", torch 2 threads", "torch_threads": 2} for v in variants[:1]]
    return [{"torch_threads": 1, **v} for v in variants]


def _inference_us(policy: Any, obs: Any, repeats: int = 300) -> float:
    import torch

    x = torch.from_numpy(obs)
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(repeats):
            policy.distribution.sample(policy(x)).numpy()
    return (time.perf_counter() - start) / repeats * 1e6


def collector(id: str, num_envs: int, steps: int, variant: dict) -> dict:
    import torch

    from polopt.envs import make_vector_env
    from polopt.networks import make_policy
    from polopt.rollout import Collector

    torch.set_num_threads(variant["torch_threads"])
    envs = make_vector_env(id, num_envs, backend=variant["backend"], vectorization=variant.get("vectorization", "sync"),
                           kwargs=variant.get("kwargs"))
    policy = make_policy(envs.single_observation_space, envs.single_action_space)
    rollouts = Collector(envs, 256, seed=0)
    rollouts.collect(policy)  # warm-up: process start, first resets, allocator
    iterations = max(1, math.ceil(steps / (256 * num_envs)))
    start = time.perf_counter()
    for _ in range(iterations):
        rollouts.collect(policy)
    elapsed = time.perf_counter() - start
    inference = _inference_us(policy, rollouts.obs)
    envs.close()
    rate = iterations * 256 * num_envs / elapsed
    return {**variant, "num_envs": num_envs, "steps_per_s": rate, "inference_us_per_step": inference,
            "inference_share": inference * 1e-6 * rate / num_envs}


def collectors(id: str, num_envs: int, steps: int) -> dict:
    results = {}
    for variant in collector_variants(id, num_envs):
        try:
            results[variant["name"]] = collector(id, num_envs, steps, variant)
        except Exception as err:  # one broken backend must not lose the rest of the run
            results[variant["name"]] = {**variant, "error": repr(err)}
        print(f"collector {variant['name']}: {results[variant['name']].get('steps_per_s', 'failed')}", flush=True)
    return results


def e2e_backend(choice: str, id: str) -> str:
    from polopt.envpool_backend import VERIFIED_IDS, envpool_available

    if choice != "auto":
        return choice
    return "envpool" if envpool_available() and id in VERIFIED_IDS else "gymnasium"


def time_split(rows: list[dict]) -> dict:
    """Steps/s and seconds per phase from a run's metrics rows, its first iteration (warm-up) left out."""
    timed = rows[1:]

    def total(key: str) -> float:
        return sum(r.get(key) or 0.0 for r in timed)

    steps = rows[-1]["step"] - rows[0]["step"]
    iteration = total("time/iteration_s")
    split = {name: total(f"time/{name}_s") for name in ("collect", "advantage", "policy_update", "value_update")}
    split["other_update"] = total("time/update_s") - split["policy_update"] - split["value_update"]
    returns = [r["rollout/ep_return"] for r in rows if r.get("rollout/ep_return") is not None]
    return {"steps_per_s": steps / iteration, "steps_timed": steps, "iterations_timed": len(timed),
            "seconds": {**split, "iteration": iteration},
            "share": {name: seconds / iteration for name, seconds in split.items()},
            "median_iteration_sps": statistics.median(r["time/sps"] for r in timed),
            "last_train_return": returns[-1] if returns else None}


def _run_dir(label: str) -> Path:
    run_dir = RUNS / "".join(c if c.isalnum() or c in "._-" else "_" for c in label)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    return run_dir


def _launch(updater: str, env: str, steps: int, device: str, backend: str, overrides: list[str], label: str,
            seed: int = 0, cpus: list[int] | None = None) -> dict:
    """Starts one `python -m polopt` run in the background, pinned to `cpus` (None: not pinned)."""
    run_dir = _run_dir(label)
    command = [sys.executable, "-m", "polopt", f"updater={updater}", f"env={env}", f"total_steps={steps}",
               "logger=none", "progress=false", f"device={device}", f"env.backend={backend}", f"seed={seed}",
               f"hydra.run.dir={run_dir}", *overrides]
    pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
    with (run_dir / "output.log").open("w") as log:
        process = subprocess.Popen(command, cwd=run_dir, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pin)
    shown = [arg for arg in command[1:] if not arg.startswith("hydra.run.dir=")]
    row = {"command": " ".join(["python", *shown]), "backend": backend, "overrides": overrides, "seed": seed,
           "cpus": cpus, "cores": len(cpus if cpus is not None else os.sched_getaffinity(0))}
    return {"process": process, "run_dir": run_dir, "label": label, "start": time.perf_counter(), "row": row}


def _wait(runs: list[dict]) -> None:
    """Waits for every launched run, noting each one's wall time when it ends."""
    pending = list(runs)
    while pending:
        for run in [run for run in pending if run["process"].poll() is not None]:
            run["wall_s"] = time.perf_counter() - run["start"]
            pending.remove(run)
        if pending:
            time.sleep(0.05)


def _result(run: dict) -> dict:
    """The row of a finished run: its command and settings, and the time split of its metrics.jsonl."""
    from polopt.logging import read_metrics

    row: dict = {**run["row"], "wall_s": run["wall_s"]}
    metrics = run["run_dir"] / "metrics.jsonl"
    rows = read_metrics(metrics) if metrics.exists() else []
    if run["process"].returncode != 0 or len(rows) < 2:
        output = (run["run_dir"] / "output.log").read_text(errors="replace")
        row["error"] = (output if run["process"].returncode != 0 else "fewer than 2 iterations: raise --steps")[-3000:]
        return row
    row.update(time_split(rows))
    print(f"end to end {run['label']}: {row['steps_per_s']:.0f} steps/s", flush=True)
    return row


def end_to_end(updater: str, env: str, steps: int, device: str, backend: str, overrides: list[str],
               label: str | None = None, cpus: list[int] | None = None) -> dict:
    """One run alone, pinned to `cpus` (None: not pinned)."""
    run = _launch(updater, env, steps, device, backend, overrides, label or updater, cpus=cpus)
    _wait([run])
    return _result(run)


def one_run_per_core(updater: str, env: str, steps: int, device: str, backend: str, overrides: list[str],
                     cpus: list[int]) -> dict:
    """One run per CPU in `cpus`, all at once, each pinned to its own CPU (seeds 0, 1, ...); steps/s is their sum."""
    runs = [_launch(updater, env, steps, device, backend, overrides, f"whole_machine_{updater}_seed{seed}",
                    seed=seed, cpus=[cpu]) for seed, cpu in enumerate(cpus)]
    _wait(runs)
    rows = [_result(run) for run in runs]
    result: dict = {"cpus": cpus, "runs": rows}
    failed = [row["error"] for row in rows if "steps_per_s" not in row]
    if failed:
        result["error"] = failed[0]
    else:
        result["steps_per_s"] = sum(row["steps_per_s"] for row in rows)
        print(f"whole machine {updater}: {result['steps_per_s']:.0f} steps/s over {len(cpus)} run(s)", flush=True)
    return result


def external(path: Path, device: str) -> dict:
    """Calls the first of benchmark() / run_benchmark() / bench() / run() that `path` defines."""
    if not path.exists():
        return {"skipped": f"scripts/{path.name} is not present"}
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        function = next((getattr(module, name) for name in ("benchmark", "run_benchmark", "bench", "run")
                         if callable(getattr(module, name, None))), None)
        if function is None:
            return {"skipped": f"scripts/{path.name} defines none of benchmark/run_benchmark/bench/run"}
        kwargs = {"device": device} if "device" in inspect.signature(function).parameters else {}
        result = function(**kwargs)
    except Exception as err:
        return {"error": f"scripts/{path.name}: {err!r}"}
    return result if isinstance(result, dict) else {"error": f"scripts/{path.name} returned {type(result).__name__}"}
