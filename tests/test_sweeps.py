"""Sweep definitions compose and expand to their grids; real multiruns through Hydra's launchers
(joblib, submitit_local) record failed jobs and go on; W&B runs carry the sweep's group; the report
script covers a real sweep."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from polopt.config import validate
from polopt.logging import read_metrics

REPO = Path(__file__).resolve().parent.parent
SWEEPS = REPO / "sweeps"
SWEEP_NAMES = sorted(p.stem for p in SWEEPS.glob("*.yaml") if p.stem != "common")
JOBS = {"compare": 8 * 5, "trpo_grid": 5 * 4 * 3, "tnpg_grid": 5 * 4 * 3, "npg_grid": 5 * 4 * 3,
        "npg_step_size": 6 * 5, "ppo_clip_range": 5 * 5, "ppo_kl_target": 2 * 5 * 5, "acktr_kl_clip": 5 * 5}
TINY = ["env=cartpole", "num_envs=2", "steps_per_env=64", "total_steps=512"]


def compose_sweep(name: str, overrides: Sequence[str] = (), hydra: bool = False) -> DictConfig:
    with initialize_config_dir(config_dir=str(SWEEPS), version_base="1.3"):
        return compose(config_name=name, return_hydra_config=hydra,
                       overrides=[f"hydra.searchpath=[file://{REPO / 'conf'}]", *overrides])


def expand(params: dict[str, str]) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes of ``hydra.sweeper.params`` (every launcher uses it)."""
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return BasicSweeper.split_arguments(parsed, None)[0]


def test_every_sweep_has_a_known_size():
    assert set(SWEEP_NAMES) == set(JOBS)


@pytest.mark.parametrize("name", SWEEP_NAMES)
def test_sweep_expands_to_its_grid_and_every_swept_value_composes(name: str):
    cfg = compose_sweep(name, hydra=True)
    params = dict(cfg.hydra.sweeper.params)
    jobs = expand(params)
    assert len(jobs) == JOBS[name]
    assert cfg.hydra.job.config_name == name
    assert OmegaConf.to_container(cfg.logger)["group"] == "${hydra:job.config_name}"  # W&B group = sweep
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == -1
    assert cfg.torch_threads == 1 and cfg.progress is False
    # Every swept value is a known key of the right type (struct configs reject the rest) and in its
    # declared range; config groups (updater) are composed per option, fields set on the first job.
    first = compose_sweep(name, jobs[0])
    swept = {k: sorted({o.split("=", 1)[1] for job in jobs for o in job if o.startswith(f"{k}=")}) for k in params}
    for key, values in swept.items():
        for value in values:
            if "." in key or key == "seed":
                job_cfg = first.copy()
                OmegaConf.update(job_cfg, key, float(value) if "." in value else int(value), merge=False)
            else:
                job_cfg = compose_sweep(name, [o for o in jobs[0] if not o.startswith(f"{key}=")] + [f"{key}={value}"])
                assert job_cfg.updater._target_  # the option exists and builds something
            validate(job_cfg)


def test_the_trust_region_grids_cover_the_issues_values():
    deltas, dampings = "0.001,0.003,0.01,0.03,0.1", "0.001,0.01,0.1,1.0"
    for name in ("trpo_grid", "tnpg_grid"):
        params = compose_sweep(name, hydra=True).hydra.sweeper.params
        assert params["updater.step_rule.max_kl"] == deltas and params["updater.fvp.damping"] == dampings
    assert compose_sweep("npg_grid", hydra=True).hydra.sweeper.params["updater.fvp.damping"] == dampings


@pytest.mark.parametrize("name", ["trpo_grid", "compare"])
def test_wandb_sweep_file_matches_the_hydra_sweep(name: str):
    spec = yaml.safe_load((SWEEPS / "wandb_sweep" / f"{name}.yaml").read_text())
    assert "${args_no_hyphens}" in spec["command"] and spec["method"] == "grid"
    params = spec["parameters"]
    assert params["logger.group"]["value"] == name and params["logger.mode"]["value"] == "online"
    hydra_params = compose_sweep(name, hydra=True).hydra.sweeper.params
    for key, value in hydra_params.items():
        if key == "seed":
            continue
        expected = [str(v) for v in params[key].get("values", [params[key].get("value")])]
        assert expected == [v.strip() for v in value.split(",")], key
    # The agent runs `python -m polopt k=v ...`: those overrides compose against the main config.
    agent_args = [f"{k}={p['values'][0] if 'values' in p else p['value']}" for k, p in params.items()]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        validate(compose(config_name="config", overrides=agent_args))


def test_launcher_options_compose():
    slurm = compose_sweep("compare", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], hydra=True)
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher")
    assert slurm.hydra.launcher.partition == "gpu" and slurm.hydra.launcher.cpus_per_task == 2
    if importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None:
        pytest.skip("hydra-ray-launcher is not installed")
    ray = compose_sweep("compare", ["hydra/launcher=ray_cluster"], hydra=True)
    assert ray.hydra.launcher.ray.init.address == "auto"


# --- real multiruns ----------------------------------------------------------------------------


def multirun(tmp: Path, *overrides: str, sweep: str = "compare") -> Path:
    """``python -m polopt -m -cd sweeps -cn <sweep> ...`` into ``tmp/multirun``; returns that folder."""
    out = tmp / "multirun"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    result = subprocess.run([sys.executable, "-m", "polopt", "-m", "-cd", str(SWEEPS), "-cn", sweep, *overrides,
                             f"hydra.sweep.dir={out}"], cwd=tmp, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def statuses(sweep_dir: Path) -> dict[str, str]:
    return {p.parent.name: json.loads(p.read_text())["status"] for p in sweep_dir.glob("*/status.json")}


@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 updaters × 2 seeds on CartPole, two jobs at a time with the joblib launcher."""
    return multirun(tmp_path_factory.mktemp("joblib"), "updater=vpg,ppo_clip", "seed=0,1", *TINY,
                    "logger.mode=disabled", "hydra.launcher.n_jobs=2")


def explicit_final_return(run_dir: Path) -> float:
    """Mean training return over the last 10% of steps, straight from metrics.jsonl."""
    rows = read_metrics(run_dir / "metrics.jsonl")
    last = max(r["step"] for r in rows)
    tail = [r["rollout/ep_return"] for r in rows if r["step"] >= 0.9 * last and r.get("rollout/ep_return") is not None]
    return sum(tail) / len(tail)


def test_joblib_sweep_completes_and_the_report_covers_it(joblib_sweep: Path, tmp_path: Path):
    assert statuses(joblib_sweep) == {"0_vpg_cartpole_seed0": "completed", "1_vpg_cartpole_seed1": "completed",
                                      "2_ppo_clip_cartpole_seed0": "completed",
                                      "3_ppo_clip_cartpole_seed1": "completed"}
    resolved = yaml.safe_load((joblib_sweep / "0_vpg_cartpole_seed0" / "config_resolved.yaml").read_text())
    assert resolved["logger"]["group"] == "compare" and resolved["torch_threads"] == 1
    out = tmp_path / "report"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), str(joblib_sweep), "--out", str(out),
                             "--bootstrap", "200"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr
    assert "no W&B Report" in result.stdout
    for name in ("report.md", "summary.json", "learning_curves_cartpole.png", "final_return_cartpole.png",
                 "kl_walltime_cartpole.png"):
        assert (out / name).stat().st_size > 500, name
    summary = json.loads((out / "summary.json").read_text())
    runs = {"vpg": ["0_vpg_cartpole_seed0", "1_vpg_cartpole_seed1"],
            "ppo_clip": ["2_ppo_clip_cartpole_seed0", "3_ppo_clip_cartpole_seed1"]}
    finals = {updater: [explicit_final_return(joblib_sweep / d) for d in dirs] for updater, dirs in runs.items()}
    aggregates = {r["method"]: r for r in summary["aggregates"]}
    for updater, scores in finals.items():  # IQM of two runs is their mean
        assert aggregates[updater]["iqm"] == pytest.approx(sum(scores) / 2) and aggregates[updater]["runs"] == 2
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(finals["vpg"],
                                                                                     finals["ppo_clip"]))
    poi = {(r["x"], r["y"]): r["p"] for r in summary["improvement"]}
    assert poi["vpg", "ppo_clip"] == pytest.approx(wins / 4)
    kl = [r["update/kl"] for d in runs["vpg"] for r in read_metrics(joblib_sweep / d / "metrics.jsonl")]
    costs = {r["method"]: r for r in summary["costs"]}
    assert costs["vpg"]["kl_max"] == pytest.approx(max(kl)) and costs["vpg"]["updates"] == len(kl)
    assert summary["not_completed"] == []
    page = (out / "report.md").read_text()
    assert f"| vpg | 2 | {aggregates['vpg']['iqm']:.4g} |" in page


def test_report_can_score_runs_by_evaluating_their_checkpoints(joblib_sweep: Path, tmp_path: Path):
    from polopt.evaluate import evaluate_checkpoint
    from polopt.report import cli

    cli.main([str(joblib_sweep), "--out", str(tmp_path), "--eval-episodes", "2", "--bootstrap", "50"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    scores = [sum(evaluate_checkpoint(joblib_sweep / d / "checkpoints" / "last.pt", 2, seed=10_000 + seed)) / 2
              for seed, d in enumerate(["0_vpg_cartpole_seed0", "1_vpg_cartpole_seed1"])]
    (vpg,) = [r for r in summary["aggregates"] if r["method"] == "vpg"]
    assert vpg["iqm"] == pytest.approx(sum(scores) / 2)
    assert "evaluation episodes" in summary["settings"]["score"]


def wandb_records(path: Path) -> list:
    """The records of a W&B run file (LevelDB log format: 32 KiB blocks of [crc, length, type] chunks)."""
    from wandb.proto import wandb_internal_pb2

    data, records, pos, chunk = path.read_bytes(), [], 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer too short for a header: padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full or last chunk
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def test_failed_job_is_recorded_and_the_sweep_goes_on_with_wandb_runs_grouped(tmp_path: Path):
    # joblib with one worker runs the jobs one after another in this process; gravity NaN makes the
    # second job's physics diverge after its W&B run started.
    sweep = multirun(tmp_path, "updater=vpg", "env=pendulum", "+env.kwargs.g=10.0,nan,9.8", "seed=0",
                     "num_envs=2", "steps_per_env=64", "total_steps=256", "hydra.launcher.n_jobs=1")
    assert statuses(sweep) == {"0_vpg_pendulum_seed0": "completed", "1_vpg_pendulum_seed0": "failed",
                               "2_vpg_pendulum_seed0": "completed"}
    error = json.loads((sweep / "1_vpg_pendulum_seed0" / "status.json").read_text())["error"]
    assert "NonFiniteEnvError" in error
    for job, g, exit_code in ((0, 10.0, 0), (1, math.nan, 1), (2, 9.8, 0)):
        (run_file,) = (sweep / f"{job}_vpg_pendulum_seed0" / "wandb").glob("offline-run-*/*.wandb")
        records = wandb_records(run_file)
        (run,) = [r.run for r in records if r.HasField("run")]
        assert (run.run_group, run.job_type, sorted(run.tags)) == ("compare", "vpg", ["pendulum", "vpg"])
        config = {item.key: json.loads(item.value_json) for item in run.config.update}
        assert config["choices"]["updater"] == "vpg" and config["logger"]["group"] == "compare"
        swept = config["env"]["kwargs"]["g"]
        assert swept is None if math.isnan(g) else swept == g  # the swept value (JSON has no NaN)
        exits = [r.exit.exit_code for r in records if r.HasField("exit")]
        assert exits == [exit_code]  # finished, before the next job started


def test_submitit_local_runs_a_two_job_sweep_with_one_failing(tmp_path: Path):
    sweep = multirun(tmp_path, "hydra/launcher=submitit_local", "updater=vpg", "updater.lr=3e-4,-1.0", "seed=0",
                     *TINY, "logger.mode=disabled")
    assert statuses(sweep) == {"0_vpg_cartpole_seed0": "completed", "1_vpg_cartpole_seed0": "failed"}
    assert "out of range" in json.loads((sweep / "1_vpg_cartpole_seed0" / "status.json").read_text())["error"]
    assert len(read_metrics(sweep / "0_vpg_cartpole_seed0" / "metrics.jsonl")) == 4
    assert list((sweep / ".submitit").glob("*/*_result.pkl"))  # ran as submitit jobs
