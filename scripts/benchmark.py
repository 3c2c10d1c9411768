"""Throughput benchmark on this machine: physics limit, collectors, end-to-end updaters, FVP and K-FAC.

    python scripts/benchmark.py [--env hopper] [--steps 60000] [--updaters trpo ppo_clip ...] [--device cpu]
                                [--cores N] [--e2e-cores 1] [--e2e-backend auto] [-- extra Hydra overrides]

Measured in one run and written to ``results/benchmark.json`` and ``BENCHMARKS.md``:

1. raw physics: a plain ``mujoco.mj_step(model, data, nstep=frame_skip)`` loop with the env's own
   model and frame skip, in one process (per core), in one process per core used, all at once
   (the rate of the cores used), and in ``--e2e-cores`` processes at once (the rate of that many cores);
2. collector throughput (``polopt.rollout.Collector.collect``: batched policy inference, env
   stepping, buffers) for each env backend;
3. end to end, per updater found in ``conf/updater/*.yaml``: ``python -m polopt`` with the updater's
   default config for ``--steps`` env steps, pinned to the first ``--e2e-cores`` CPUs; steps/s and the
   time split read from the run's metrics.jsonl, first iteration skipped; ratio to the raw physics rate
   of that many cores and the target for that updater;
4. whole machine, per updater: one such run per core used, all at once, each pinned to its own CPU
   (seeds 0, 1, ..., as for seeds and sweeps); the sum of their steps/s over the raw physics rate of
   the cores used;
5. levers, on one updater (``--lever-updater``): the same run with torch_threads changed, with the
   gymnasium backend (sync and async) instead of envpool, pinned like the runs of 3; and on all cores,
   not pinned (ratio to the rate of the cores used);
6. the dicts returned by ``scripts/bench_fvp.py``, ``scripts/bench_kfac.py`` and ``scripts/bench_compile.py``
   where present.

``--cores N`` pins everything (this process and its children) to the first N CPUs of this process's
affinity, so the ratios are per the cores actually used. Each ratio row records its own cores and
denominator (``cores``, ``cpus``, ``ratio_denominator``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import benchmark_measure as measure  # noqa: E402
from benchmark_report import markdown  # noqa: E402

# Targets on a 2-core CPU machine: end-to-end env steps/s over the raw physics rate of the cores used.
TARGETS = {"trpo": 0.5, "tnpg": 0.5, "npg": 0.5, "vpg": 0.5, "ppo_clip": 0.3, "ppo_kl": 0.3, "acktr": 0.4}


def target_for(updater: str) -> float | None:
    """The target of the longest listed name that `updater` starts with (ppo_kl_alt → ppo_kl)."""
    matches = [name for name in TARGETS if updater == name or updater.startswith(name + "_")]
    return TARGETS[max(matches, key=len)] if matches else None


def discover_updaters() -> list[str]:
    return sorted(path.stem for path in (ROOT / "conf" / "updater").glob("*.yaml"))


def env_id(env_option: str) -> str:
    for line in (ROOT / "conf" / "env" / f"{env_option}.yaml").read_text().splitlines():
        if line.startswith("id:"):
            return line.split(":", 1)[1].strip()
    raise ValueError(f"conf/env/{env_option}.yaml names no id")


def machine_info(cores: int) -> dict:
    import gymnasium
    import mujoco
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    info = {"cpu": cpu, "cores_available": os.cpu_count(), "cores_used": cores, "python": platform.python_version(),
            "torch": torch.__version__, "mujoco": mujoco.__version__, "gymnasium": gymnasium.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M"), "load_average_at_start": list(os.getloadavg())}
    try:
        import envpool

        info["envpool"] = envpool.__version__
    except ImportError:
        info["envpool"] = None
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def pin_cores(cores: int | None) -> int:
    available = sorted(os.sched_getaffinity(0))
    if cores is not None:
        if not 1 <= cores <= len(available):
            raise SystemExit(f"--cores must be between 1 and {len(available)}")
        os.sched_setaffinity(0, available[:cores])  # inherited by every child process
    return len(os.sched_getaffinity(0))


def lever_variants(backend: str, cores: int) -> dict[str, tuple[str, list[str]]]:
    """(env backend, overrides) of each lever run, on top of the updater's default config."""
    variants = {f"torch_threads={n}": (backend, [f"torch_threads={n}"]) for n in sorted({1, cores})}
    if backend == "envpool":
        variants.update({"gymnasium sync": ("gymnasium", []),
                         "gymnasium sync, torch_threads=1": ("gymnasium", ["torch_threads=1"]),
                         "gymnasium async, torch_threads=1": ("gymnasium", ["env.vectorization=async",
                                                                            "torch_threads=1"])})
    return variants


def merged(overrides: list[str], changes: list[str]) -> list[str]:
    """`overrides` with `changes` applied: a change replaces an override of the same key."""
    changed = {change.split("=", 1)[0] for change in changes}
    return [o for o in overrides if o.split("=", 1)[0] not in changed] + changes


def levers(args: argparse.Namespace, backend: str, default_row: dict | None, raw: dict) -> dict:
    """The lever runs, pinned like the end-to-end table, and one on all cores, not pinned."""
    rows = {"default config": default_row} if default_row else {}
    for name, (lever_backend, changes) in lever_variants(backend, args.cores_used).items():
        overrides = merged(args.overrides, changes)
        if lever_backend == backend and sorted(overrides) == sorted(args.overrides):
            continue  # the default run already is this variant
        rows[name] = measure.end_to_end(args.lever_updater, args.env, args.steps, args.device, lever_backend,
                                        overrides, label=f"{args.lever_updater}_{name}", cpus=args.e2e_cpus)
        rows[name]["ratio_denominator"] = raw["e2e_cores_steps_per_s"]
    if args.e2e_cpus != sorted(os.sched_getaffinity(0)) or not default_row:
        name = "all cores, unpinned"
        rows[name] = measure.end_to_end(args.lever_updater, args.env, args.steps, args.device, backend,
                                        args.overrides, label=f"{args.lever_updater}_{name}")
        rows[name]["ratio_denominator"] = raw["cores_used_steps_per_s"]
    return rows


def end_to_end(args: argparse.Namespace, backend: str, updaters: list[str], raw: dict) -> dict:
    """Each updater alone, pinned to the first --e2e-cores CPUs."""
    rows = {}
    for updater in updaters:
        rows[updater] = measure.end_to_end(updater, args.env, args.steps, args.device, backend, args.overrides,
                                           cpus=args.e2e_cpus)
        rows[updater]["ratio_denominator"] = raw["e2e_cores_steps_per_s"]
    return rows


def whole_machine(args: argparse.Namespace, backend: str, updaters: list[str], raw: dict) -> dict:
    """Per updater: one run per core used, all at once, each pinned to its own CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    rows = {}
    for updater in updaters:
        rows[updater] = measure.one_run_per_core(updater, args.env, args.steps, args.device, backend, args.overrides,
                                                 cpus)
        rows[updater]["ratio_denominator"] = raw["cores_used_steps_per_s"]
    return rows


def _add_ratio(row: dict, updater: str, denominator: float) -> None:
    target = target_for(updater)
    row["target_ratio"] = target
    if "steps_per_s" in row:
        row["ratio"] = row["steps_per_s"] / denominator
        row["meets_target"] = None if target is None else row["ratio"] >= target


def ratios(result: dict) -> None:
    """Adds ratio and target to each end-to-end, whole-machine and lever row (in place), each over its own
    ``ratio_denominator`` (rows without one: the raw physics rate of the cores used)."""
    default = result["raw_physics"]["cores_used_steps_per_s"]
    for section in ("end_to_end", "whole_machine"):
        for name, row in result.get(section, {}).items():
            _add_ratio(row, name, row.setdefault("ratio_denominator", default))
    for row in result.get("levers", {}).values():
        _add_ratio(row, result["settings"]["lever_updater"], row.setdefault("ratio_denominator", default))


def _verdict(row: dict) -> str:
    if "steps_per_s" not in row:
        return f"failed: {row.get('error', '')[-300:]}"
    target = row["target_ratio"]
    met = "" if target is None else f" target {target:.2f}: {'met' if row['meets_target'] else 'NOT met'}"
    return f"{row['steps_per_s']:9,.0f} steps/s  ratio {row['ratio']:.2f} (÷ {row['ratio_denominator']:,.0f}){met}"


def print_summary(result: dict) -> None:
    raw = result["raw_physics"]
    print(f"\nraw physics {result['env_id']}: {raw['per_core_steps_per_s']:,.0f} steps/s per core, "
          f"{raw['cores_used_steps_per_s']:,.0f} on the {raw['cores']} core(s) used, "
          f"{raw['e2e_cores_steps_per_s']:,.0f} on {raw['e2e_cores']} core(s) (end-to-end denominator)")
    for name, row in result["collector"].items():
        print(f"collector {name:28s} {row.get('steps_per_s', float('nan')):9,.0f} steps/s {row.get('error', '')}")
    for name, row in result["end_to_end"].items():
        print(f"end to end, {row.get('cores', '?')} core(s) {name:12s} {_verdict(row)}")
    for name, row in result.get("whole_machine", {}).items():
        print(f"whole machine, {len(row['cpus'])} run(s) {name:12s} {_verdict(row)}")
    for name, row in result.get("levers", {}).items():
        print(f"lever {result['settings']['lever_updater']} {name:34s} {_verdict(row)}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="hopper", help="Hydra env option (conf/env/<name>.yaml)")
    parser.add_argument("--steps", type=int, default=60_000, help="env steps per updater, end to end")
    parser.add_argument("--updaters", nargs="*", default=None, help="default: every conf/updater/*.yaml")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--cores", type=int, default=None, help="pin to this many cores (default: all available)")
    parser.add_argument("--e2e-cores", type=int, default=1, help="pin each end-to-end run to the first N of the "
                        "cores used; its ratio is over the raw physics rate of N cores")
    parser.add_argument("--num-envs", type=int, default=8, help="envs for the collector measurements")
    parser.add_argument("--collect-steps", type=int, default=16_384, help="env steps per collector measurement")
    parser.add_argument("--physics-seconds", type=float, default=3.0)
    parser.add_argument("--e2e-backend", default="auto", help="env.backend for end-to-end runs; auto: envpool "
                        "where it is installed and offered for the env, else gymnasium")
    parser.add_argument("--lever-updater", default=None, help="updater for the lever runs (default: trpo, else "
                        "the first updater)")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["collector", "e2e", "whole_machine", "levers", "fvp", "kfac", "compile"])
    parser.add_argument("--out", default=str(ROOT / "results" / "benchmark.json"))
    parser.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every end-to-end run (after --)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    cores = args.cores_used = pin_cores(args.cores)
    if not 1 <= args.e2e_cores <= cores:
        raise SystemExit(f"--e2e-cores must be between 1 and {cores}")
    args.e2e_cpus = sorted(os.sched_getaffinity(0))[:args.e2e_cores]
    id = env_id(args.env)
    result: dict = {"env": args.env, "env_id": id, "machine": machine_info(cores),
                    "settings": {k: v for k, v in vars(args).items() if k not in ("out", "markdown")}}
    raw = result["raw_physics"] = measure.raw_physics(id, cores, args.physics_seconds, args.e2e_cores)
    print(f"raw physics: {raw}", flush=True)
    result["collector"] = {} if "collector" in args.skip else measure.collectors(
        id, args.num_envs, args.collect_steps)
    backend = measure.e2e_backend(args.e2e_backend, id)
    updaters = discover_updaters() if args.updaters is None else args.updaters
    result["end_to_end"] = {} if "e2e" in args.skip else end_to_end(args, backend, updaters, raw)
    result["settings"]["e2e_backend_used"] = backend
    if "whole_machine" not in args.skip:
        result["whole_machine"] = whole_machine(args, backend, updaters, raw)
    args.lever_updater = args.lever_updater or ("trpo" if "trpo" in updaters else updaters[0])
    result["settings"]["lever_updater"] = args.lever_updater
    if "levers" not in args.skip:
        result["levers"] = levers(args, backend, result["end_to_end"].get(args.lever_updater), raw)
    for name in ("fvp", "kfac", "compile"):
        result[name] = {"skipped": "--skip"} if name in args.skip else measure.external(
            ROOT / "scripts" / f"bench_{name}.py", args.device)
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    ratios(result)
    print_summary(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    Path(args.markdown).write_text(markdown(result), encoding="utf-8")
    print(f"\nwritten: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}, {Path(args.markdown).name}")


if __name__ == "__main__":
    main()
