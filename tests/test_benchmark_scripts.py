"""The pure helpers of scripts/benchmark.py and the BENCHMARKS.md rendering (no measurements run)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _load(name: str) -> ModuleType:
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPTS))


benchmark = _load("benchmark")
report = _load("benchmark_report")


def _run(steps_per_s: float, cpus: list[int] | None, denominator: float | None = None) -> dict:
    row = {"steps_per_s": steps_per_s, "cpus": cpus, "cores": len(cpus) if cpus else 2, "backend": "envpool",
           "overrides": [], "last_train_return": 10.0,
           "share": dict.fromkeys(("collect", "advantage", "policy_update", "value_update", "other_update"), 0.2)}
    if denominator is not None:
        row["ratio_denominator"] = denominator
    return row


def _result() -> dict:
    raw = {"frame_skip": 4, "per_core_steps_per_s": 16_000.0, "cores": 2,
           "per_process_when_all_run_steps_per_s": [15_000.0, 15_000.0], "cores_used_steps_per_s": 30_000.0,
           "e2e_cores": 1, "e2e_cores_steps_per_s": 16_000.0}
    machine = {"cpu": "test cpu", "cores_available": 2, "cores_used": 2, "load_average_at_start": [0.0] * 3,
               "python": "3", "torch": "2", "mujoco": "3", "gymnasium": "1", "envpool": None, "date": "today"}
    whole = {"cpus": [0, 1], "runs": [_run(9_000.0, [0]), _run(8_000.0, [1])], "steps_per_s": 17_000.0,
             "ratio_denominator": 30_000.0}
    return {"env": "hopper", "env_id": "Hopper-v5", "machine": machine, "raw_physics": raw, "collector": {},
            "settings": {"steps": 20_000, "device": "cpu", "e2e_backend_used": "envpool", "overrides": [],
                         "lever_updater": "trpo"},
            "end_to_end": {"trpo": _run(8_800.0, [0], 16_000.0), "vpg": _run(7_000.0, [0], 16_000.0)},
            "whole_machine": {"trpo": whole},
            "levers": {"default config": _run(8_800.0, [0], 16_000.0),
                       "all cores, unpinned": _run(9_000.0, None, 30_000.0)},
            "fvp": {"skipped": "--skip"}, "kfac": {"skipped": "--skip"}}


def test_target_for_longest_prefix():
    assert benchmark.target_for("ppo_kl_alt") == benchmark.TARGETS["ppo_kl"]
    assert benchmark.target_for("trpo") == benchmark.TARGETS["trpo"]
    assert benchmark.target_for("unknown") is None


def test_merged_replaces_same_key():
    assert benchmark.merged(["torch_threads=2", "num_envs=4"], ["torch_threads=1"]) == ["num_envs=4",
                                                                                         "torch_threads=1"]


def test_ratios_use_each_rows_own_denominator():
    result = _result()
    benchmark.ratios(result)
    assert result["end_to_end"]["trpo"]["ratio"] == 8_800.0 / 16_000.0
    assert result["end_to_end"]["trpo"]["meets_target"] is True
    assert result["end_to_end"]["vpg"]["meets_target"] is False
    assert result["whole_machine"]["trpo"]["ratio"] == 17_000.0 / 30_000.0
    assert result["levers"]["all cores, unpinned"]["ratio"] == 9_000.0 / 30_000.0


def test_ratios_default_to_the_rate_of_the_cores_used():
    result = _result()
    del result["levers"]["default config"]["ratio_denominator"]
    benchmark.ratios(result)
    assert result["levers"]["default config"]["ratio"] == 8_800.0 / 30_000.0


def test_markdown_reports_pinning_whole_machine_and_lever_denominators():
    result = _result()
    benchmark.ratios(result)
    text = report.markdown(result)
    assert "pinned to 1 core(s) (CPU 0)" in text
    assert "raw physics rate of 1 core(s) (16,000 steps/s)" in text
    assert "## Whole machine: one run per core" in text
    assert "| trpo | 9,000, 8,000 | 17,000 | 0.57 | 0.5 | yes |" in text
    assert "0.30 (÷ 30,000)" in text and "0.55 (÷ 16,000)" in text
    assert "2 (not pinned)" in text
