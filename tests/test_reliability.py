"""Determinism, exact resume, crash-safe checkpoints, Ctrl-C, non-finite numbers and env failures."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from polopt import checkpoint
from polopt.guards import NonFiniteError
from polopt.logging import NoLogger, read_metrics
from polopt.trainer import Trainer, build
from tests.conftest import CONF_DIR, compose_config

UPDATERS = sorted(p.stem for p in Path(CONF_DIR, "updater").glob("*.yaml"))
SMALL = ["num_envs=2", "steps_per_env=64"]


def assert_same(a: Any, b: Any, path: str = "state") -> None:
    """Recursive bitwise equality of nested checkpoints (tensors, arrays, dicts, sequences, scalars)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    else:
        assert a == b, path


def train_in_process(overrides: list[str], run_dir: Path, stop_after: int | None = None) -> Trainer:
    """Trains to the budget, or stops after `stop_after` iterations with the config unchanged (as Ctrl-C
    would: schedules that depend on total_steps stay the same)."""
    trainer = Trainer(build(compose_config(overrides)), NoLogger(), run_dir)
    trainer.num_iterations = stop_after or trainer.num_iterations
    trainer.train()
    trainer.parts.envs.close()
    return trainer


def without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


@pytest.mark.parametrize("env", ["cartpole", "pendulum"])
@pytest.mark.parametrize("updater", UPDATERS)
def test_same_seed_gives_bitwise_identical_parameters_and_metrics(updater, env, tmp_path):
    overrides = [f"updater={updater}", f"env={env}", *SMALL, "total_steps=384", "seed=3"]
    first = train_in_process(overrides, tmp_path / "a")
    second = train_in_process(overrides, tmp_path / "b")
    assert_same(first.state_dict()["policy"], second.state_dict()["policy"])
    assert_same(first.state_dict()["value"], second.state_dict()["value"])
    rows_a = without_timings(read_metrics(tmp_path / "a" / "metrics.jsonl"))
    assert rows_a == without_timings(read_metrics(tmp_path / "b" / "metrics.jsonl"))
    assert len(rows_a) == 3


@pytest.mark.parametrize("updater", UPDATERS)
def test_resume_in_a_new_process_matches_an_uninterrupted_run(updater, tmp_path):
    common = [f"updater={updater}", "env=pendulum", *SMALL, "seed=5", "total_steps=512"]
    straight = train_in_process(common, tmp_path / "straight")
    train_in_process(common, tmp_path / "half", stop_after=2)
    resumed_dir = tmp_path / "resumed"
    result = subprocess.run([sys.executable, "-m", "polopt", *common, "logger=none", "torch_threads=1",
                             "progress=false", f"resume={tmp_path / 'half' / 'checkpoints' / 'last.pt'}",
                             f"hydra.run.dir={resumed_dir}"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    expected = checkpoint.load(straight.checkpoint_path)
    resumed = checkpoint.load(resumed_dir / "checkpoints" / "last.pt")
    for part in ("policy", "value", "updater", "collector", "rng", "iteration"):
        assert_same(expected[part], resumed[part], part)


KILL_DURING_SAVE = """
import os, signal, sys, torch
from pathlib import Path
from polopt import checkpoint
path = Path(sys.argv[1])
checkpoint.save_atomic({"version": 1, "weights": torch.ones(3)}, path)
real_save = torch.save
def save_then_die(obj, f, *args, **kwargs):
    f.write(b"partial bytes of a checkpoint")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = save_then_die
checkpoint.save_atomic({"version": 2, "weights": torch.zeros(3)}, path)
"""


def test_a_process_killed_while_writing_leaves_the_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "last.pt"
    result = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(path)], capture_output=True, timeout=120)
    assert result.returncode == -signal.SIGKILL
    state = checkpoint.load(path)
    assert state["version"] == 1 and torch.equal(state["weights"], torch.ones(3))


def test_ctrl_c_stops_within_seconds_with_a_final_checkpoint_and_finished_wandb_run(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline"}
    process = subprocess.Popen([sys.executable, "-m", "polopt", "updater=vpg", "env=cartpole", "logger=wandb",
                                "progress=false", "num_envs=2", "steps_per_env=64", "total_steps=10000000",
                                "checkpoint_every=1000000", f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    start = time.monotonic()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert time.monotonic() - start < 15
    state = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert state["iteration"] == len(read_metrics(metrics))
    assert list((run_dir / "wandb").glob("offline-run-*/*.wandb"))


def nan_batch_trainer(updater: str, nonfinite: str, tmp_path: Path) -> Trainer:
    trainer = Trainer(build(compose_config([f"updater={updater}", "env=pendulum", *SMALL, "total_steps=128",
                                            f"nonfinite={nonfinite}"])), NoLogger(), tmp_path)
    original = trainer.parts.collector.collect

    def collect_with_nan_rewards(policy):
        rollout = original(policy)
        rollout.rewards[3, 0] = float("nan")
        return rollout

    trainer.parts.collector.collect = collect_with_nan_rewards  # type: ignore[method-assign]
    return trainer


@pytest.mark.parametrize("updater", UPDATERS)
def test_non_finite_update_is_skipped_and_counted_never_written(updater, tmp_path):
    trainer = nan_batch_trainer(updater, "skip", tmp_path)
    before = {k: v.clone() for k, v in trainer.parts.policy.state_dict().items()}
    metrics = trainer.iterate()
    assert any(k.endswith("skipped_steps") and v > 0 for k, v in metrics.items()), metrics
    after = trainer.parts.policy.state_dict()
    for key, value in before.items():
        if not key.startswith("obs_normalizer"):
            assert torch.equal(value, after[key]), key
    assert all(torch.isfinite(p).all() for p in trainer.parts.value.parameters())


def test_nonfinite_raise_stops_with_a_clear_error(tmp_path):
    trainer = nan_batch_trainer("vpg", "raise", tmp_path)
    with pytest.raises(NonFiniteError, match=r"non-finite numbers at iteration 1 .*weights were left unchanged"):
        trainer.iterate()


class ExplodingEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        if self.t == 3:
            raise RuntimeError("simulator diverged: joint 7 out of range")
        return np.zeros(2, np.float32), 0.0, False, False, {}


gym.register("polopt-test/Exploding-v0", entry_point=ExplodingEnv, max_episode_steps=100)


def test_an_exception_in_an_async_env_worker_reaches_the_user_with_its_message(tmp_path):
    cfg = compose_config(["updater=vpg", "env.id=polopt-test/Exploding-v0", "env.vectorization=async",
                          "num_envs=2", "steps_per_env=8"])
    parts = build(cfg)
    try:
        with pytest.raises(RuntimeError, match="simulator diverged: joint 7 out of range"):
            parts.collector.collect(parts.policy)
    finally:
        parts.envs.close(terminate=True)
