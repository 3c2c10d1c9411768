"""Updates on a GPU while envs step on the CPU (skipped without CUDA)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from polopt.logging import NoLogger
from polopt.trainer import Trainer, build
from tests.conftest import CONF_DIR, compose_config

UPDATERS = sorted(p.stem for p in Path(CONF_DIR, "updater").glob("*.yaml"))


@pytest.mark.cuda
@pytest.mark.parametrize("env", ["cartpole", "pendulum"])
@pytest.mark.parametrize("updater", UPDATERS)
def test_updates_run_on_cuda_with_a_cpu_acting_copy(updater, env, tmp_path):
    parts = build(compose_config([f"updater={updater}", f"env={env}", "device=cuda", "num_envs=4",
                                  "steps_per_env=64", "total_steps=512"]))
    trainer = Trainer(parts, NoLogger(), tmp_path)
    trainer.train()
    assert next(parts.policy.parameters()).device.type == "cuda"
    assert next(parts.acting_policy.parameters()).device.type == "cpu"
    for gpu, cpu in zip(parts.policy.state_dict().values(), parts.acting_policy.state_dict().values(), strict=True):
        assert torch.equal(gpu.cpu(), cpu)
    assert trainer.iteration == 2


@pytest.mark.cuda
def test_deterministic_option_makes_cuda_runs_repeat(tmp_path):
    overrides = ["updater=vpg", "env=pendulum", "device=cuda", "deterministic=true", "num_envs=2",
                 "steps_per_env=64", "total_steps=256"]
    states = []
    for name in ("a", "b"):
        trainer = Trainer(build(compose_config(overrides)), NoLogger(), tmp_path / name)
        trainer.train()
        states.append(trainer.parts.policy.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
