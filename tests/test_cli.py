"""End to end through the command line: train, write outputs, resume, evaluate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from polopt.logging import read_metrics


def polopt(*args: str, cwd: Path, module: str = "polopt") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_train_writes_config_metrics_and_checkpoint_then_resume_continues(tmp_path):
    run_dir = tmp_path / "run"
    common = ["updater=vpg", "env=cartpole", "logger=none", "progress=false", "num_envs=4", "steps_per_env=128"]
    first = polopt(*common, "total_steps=2048", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert (run_dir / "config_resolved.yaml").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [512, 1024, 1536, 2048]
    for key in ("update/kl", "update/entropy", "update/policy_loss", "update/value_loss", "time/sps",
                "time/collect_s", "time/update_s", "rollout/ep_return"):
        assert key in rows[-1] or any(key in r for r in rows), key
    ckpt = run_dir / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=False)
    assert state["iteration"] == 4 and state["collector"]["global_step"] == 2048

    resumed_dir = tmp_path / "resumed"
    second = polopt(*common, "total_steps=4096", f"resume={ckpt}", f"hydra.run.dir={resumed_dir}", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    resumed = read_metrics(resumed_dir / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [2560, 3072, 3584, 4096]
    assert torch.load(resumed_dir / "checkpoints" / "last.pt", weights_only=False)["iteration"] == 8

    evaluation = polopt(f"checkpoint={ckpt}", "episodes=2", cwd=tmp_path, module="polopt.evaluate")
    assert evaluation.returncode == 0, evaluation.stderr
    assert "over 2 episodes" in evaluation.stdout


def test_wandb_offline_run_needs_no_account_and_finishes(tmp_path):
    run_dir = tmp_path / "run"
    result = polopt("updater=vpg", "env=cartpole", "logger=wandb", "progress=false", "num_envs=2",
                    "steps_per_env=64", "total_steps=256", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb"))
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert len(rows) == 2 and json.dumps(rows)
