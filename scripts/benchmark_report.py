"""BENCHMARKS.md from the dict scripts/benchmark.py writes to results/benchmark.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _number(value: Any, digits: int = 0) -> str:
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value).lower()
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}" if abs(value) >= 1 or value == 0 else f"{value:.3g}"
    return str(value)


def _flatten(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(tree, dict):
        return [pair for key, value in tree.items() for pair in _flatten(value, f"{prefix}{key}/")]
    return [(prefix.rstrip("/"), tree)]


def machine_section(result: dict) -> list[str]:
    m = result["machine"]
    rows = [("CPU", m["cpu"]), ("cores available / used", f"{m['cores_available']} / {m['cores_used']}"),
            ("load average at start / end (1, 5, 15 min)",
             f"{_loads(m['load_average_at_start'])} / {_loads(m.get('load_average_at_end'))}"),
            ("python / torch / mujoco / gymnasium / envpool",
             f"{m['python']} / {m['torch']} / {m['mujoco']} / {m['gymnasium']} / {m['envpool'] or 'not installed'}"),
            ("CUDA device", m.get("cuda_device", "none")), ("date", m["date"])]
    return ["## Machine", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]


def _loads(loads: list[float] | None) -> str:
    return ", ".join(f"{x:.2f}" for x in loads) if loads else "–"


def physics_section(result: dict) -> list[str]:
    raw = result["raw_physics"]
    return ["## Raw physics (the limit)", "",
            f"A plain `mujoco.mj_step(model, data, nstep={raw['frame_skip']})` loop on {result['env_id']}'s own model "
            "(random controls, reset every 1000 env steps), in env steps/s.", "",
            "| one process alone (per core) | one process per core used, all at once | sum = rate of the cores used |",
            "|---|---|---|",
            f"| {_number(raw['per_core_steps_per_s'])} | "
            f"{', '.join(_number(r) for r in raw['per_process_when_all_run_steps_per_s'])} | "
            f"**{_number(raw['cores_used_steps_per_s'])}** ({raw['cores']} core(s)) |", "",
            *_e2e_rate_note(raw)]


def _e2e_rate_note(raw: dict) -> list[str]:
    cores = raw.get("e2e_cores")
    if cores is None or cores == raw["cores"]:
        return []
    how = "one process alone" if cores == 1 else f"{cores} processes at once"
    return [f"Rate of {cores} core(s), the denominator of the pinned end-to-end runs ({how}): "
            f"**{_number(raw['e2e_cores_steps_per_s'])}**.", ""]


def _met(row: dict) -> str:
    return "–" if row.get("meets_target") is None else ("yes" if row["meets_target"] else "**no**")


def _pinning(row: dict) -> str:
    cpus = row.get("cpus")
    return "not pinned" if cpus is None else f"CPU {', '.join(str(c) for c in cpus)}"


def collector_section(result: dict) -> list[str]:
    rows = result["collector"]
    if not rows:
        return []
    base = rows.get("gymnasium sync", {}).get("steps_per_s")
    lines = ["## Collector throughput", "",
             "`Collector.collect`: batched policy inference over all envs, env stepping, buffers; "
             f"{next(iter(rows.values())).get('num_envs', '?')} envs × 256 steps per collect, in env steps/s.", "",
             "| backend | torch threads | steps/s | vs gymnasium sync | inference µs/step | inference share |",
             "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        if "error" in row:
            lines.append(f"| {name} | {row['torch_threads']} | failed: {row['error'][:80]} | | | |")
            continue
        speedup = f"{row['steps_per_s'] / base:.2f}×" if base else "–"
        lines.append(f"| {name} | {row['torch_threads']} | {_number(row['steps_per_s'])} | {speedup} | "
                     f"{row['inference_us_per_step']:.0f} | {row['inference_share']:.0%} |")
    return [*lines, ""]


def _e2e_denominator(result: dict) -> tuple[int, float]:
    """Cores and ratio denominator of the end-to-end runs (older results: all cores used)."""
    raw, rows = result["raw_physics"], result["end_to_end"]
    first = next(iter(rows.values()))
    return first.get("cores", raw["cores"]), first.get("ratio_denominator", raw["cores_used_steps_per_s"])


def e2e_section(result: dict) -> list[str]:
    rows = result["end_to_end"]
    if not rows:
        return []
    s = result["settings"]
    cores, denominator = _e2e_denominator(result)
    pinned = next(iter(rows.values())).get("cpus")
    where = f"pinned to {cores} core(s) ({_pinning(next(iter(rows.values())))})" if pinned else "not pinned"
    lines = ["## End to end", "",
             f"`python -m polopt updater=U env={result['env']}` with each updater's default config, "
             f"{s['steps']:,} env steps, env.backend={s.get('e2e_backend_used')}, device={s['device']}"
             f"{', overrides: `' + ' '.join(s['overrides']) + '`' if s.get('overrides') else ''}, one run at a time, "
             f"each {where}; the first iteration is left out. Ratio = steps/s ÷ the raw physics rate of "
             f"{cores} core(s) ({_number(denominator)} steps/s). Time split: share of iteration time.", "",
             "| updater | steps/s | ratio | target | met | collect | advantages | policy update | value update "
             "| other | last train return |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        if "steps_per_s" not in row:
            lines.append(f"| {name} | failed (see results/benchmark.json) | | | | | | | | | |")
            continue
        share = row["share"]
        lines.append(
            f"| {name} | {_number(row['steps_per_s'])} | {row['ratio']:.2f} | {_number(row['target_ratio'], 1)} "
            f"| {_met(row)} | {share['collect']:.0%} | {share['advantage']:.0%} | {share['policy_update']:.0%} | "
            f"{share['value_update']:.0%} | {share['other_update']:.0%} | {_number(row['last_train_return'])} |")
    return [*lines, ""]


def whole_machine_section(result: dict) -> list[str]:
    rows = result.get("whole_machine") or {}
    if not rows:
        return []
    raw = result["raw_physics"]
    lines = ["## Whole machine: one run per core", "",
             f"Per updater, {raw['cores']} runs at once (the same command as above, seeds 0, 1, ...), each pinned "
             "to its own CPU: how the machine is used for seeds and sweeps. Ratio = the sum of their steps/s ÷ the "
             f"raw physics rate of the {raw['cores']} core(s) used ({_number(raw['cores_used_steps_per_s'])} "
             "steps/s, one physics process per core at once).", "",
             "| updater | per-run steps/s | sum | ratio | target | met |", "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        if "steps_per_s" not in row:
            lines.append(f"| {name} | failed (see results/benchmark.json) | | | | |")
            continue
        runs = ", ".join(_number(run["steps_per_s"]) for run in row["runs"])
        lines.append(f"| {name} | {runs} | {_number(row['steps_per_s'])} | {row['ratio']:.2f} | "
                     f"{_number(row['target_ratio'], 1)} | {_met(row)} |")
    return [*lines, ""]


def levers_section(result: dict) -> list[str]:
    rows = result.get("levers") or {}
    if not rows:
        return []
    updater = result["settings"]["lever_updater"]
    base = rows.get("default config", {}).get("steps_per_s")
    all_cores = result["raw_physics"]["cores_used_steps_per_s"]
    lines = ["## Levers", "", f"`{updater}` end to end with one setting changed at a time (same steps, same run). "
             "Each ratio is over the raw physics rate of the cores that row ran on.", "",
             "| variant | overrides | cores | steps/s | vs default | ratio (÷ raw physics rate) | collect "
             "| policy update | value update |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        cores = f"{row.get('cores', result['raw_physics']['cores'])} ({_pinning(row)})"
        if "steps_per_s" not in row:
            lines.append(f"| {name} | {' '.join(row.get('overrides', []))} | {cores} | failed | | | | | |")
            continue
        share, overrides = row["share"], " ".join([f"env.backend={row['backend']}", *row.get("overrides", [])])
        versus = f"{row['steps_per_s'] / base:.2f}×" if base else "–"
        lines.append(f"| {name} | `{overrides}` | {cores} | {_number(row['steps_per_s'])} | {versus} | "
                     f"{row['ratio']:.2f} (÷ {_number(row.get('ratio_denominator', all_cores))}) | "
                     f"{share['collect']:.0%} | {share['policy_update']:.0%} | {share['value_update']:.0%} |")
    return [*lines, ""]


def external_section(title: str, data: dict) -> list[str]:
    if set(data) <= {"skipped", "error"}:
        return [f"## {title}", "", f"Not measured: {data.get('skipped') or data.get('error')}", ""]
    rows = [f"| {key} | {_number(value, 3) if isinstance(value, float) else value} |" for key, value in _flatten(data)]
    return [f"## {title}", "", "| quantity | value |", "|---|---|", *rows, ""]


def markdown(result: dict) -> str:
    lines = ["# Benchmarks", "",
             "Written by `python scripts/benchmark.py` (all numbers from one run, on the machine below; the raw "
             "data is in `results/benchmark.json`). Throughput is in environment steps per second.", "",
             *machine_section(result), *physics_section(result), *collector_section(result), *e2e_section(result),
             *whole_machine_section(result), *levers_section(result),
             *external_section("Fisher-vector products (scripts/bench_fvp.py)", result.get("fvp", {})),
             *external_section("K-FAC update vs a plain gradient step (scripts/bench_kfac.py)", result.get("kfac", {})),
             *external_section("torch.compile of the minibatch loops (scripts/bench_compile.py)",
                               result.get("compile", {}))]
    return "\n".join(lines)


if __name__ == "__main__":  # re-render: python scripts/benchmark_report.py results/benchmark.json > BENCHMARKS.md
    print(markdown(json.loads(Path(sys.argv[1]).read_text())))
