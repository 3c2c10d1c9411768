"""Every option of every config group composes and builds; bad config fails clearly at compose time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate

from polopt.config import ConfigError, validate
from polopt.trainer import build
from tests.conftest import CONF_DIR, compose_config

GROUPS = ("env", "policy", "value", "updater", "logger")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


CASES = [(group, option) for group in GROUPS for option in options(group)]


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_option_composes_validates_and_instantiates(group, option):
    base = {"env": "cartpole", "updater": "vpg"}
    base[group] = option
    cfg = compose_config([f"{g}={o}" for g, o in base.items() if g != group] + [f"{group}={option}",
                                                                                  "num_envs=1"])
    validate(cfg)
    parts = build(cfg)
    try:
        assert parts.collector.num_envs == 1
        assert hasattr(parts.updater, "update")
        assert hasattr(instantiate(cfg.logger), "log")
    finally:
        parts.envs.close()


def test_out_of_range_values_name_the_field():
    for override, field in [("rollout.gamma=1.5", "rollout.gamma"), ("num_envs=0", "num_envs"),
                            ("updater.lr=-0.1", "updater.lr"), ("rollout.gae_lambda=-1", "rollout.gae_lambda")]:
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            validate(compose_config(["updater=vpg", override]))


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polopt", "logger=none", "progress=false", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("args", "expected"), [
    (["updater.lrr=1"], "Key 'lrr' not in"),
    (["rollout.gamma=abc"], "rollout.gamma"),
    (["updater=no_such_updater"], "Available options in 'updater'"),
    (["env=no_such_env"], "Available options in 'env'"),
    (["rollout.gamma=2"], "rollout.gamma=2.0 is out of range"),
    (["num_envs=0"], "num_envs=0 is out of range"),
    (["env.id=???"], "missing required value(s): env.id"),
    (["device=tpu"], "device='tpu' is not allowed"),
])
def test_bad_config_exits_non_zero_with_a_short_message(args, expected, tmp_path):
    result = cli("env=cartpole", *args, cwd=tmp_path)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.jsonl"))


def test_help_lists_the_config_groups(tmp_path):
    result = subprocess.run([sys.executable, "-m", "polopt", "--help"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0
    for group in GROUPS:
        assert f"{group}: " in result.stdout
    assert "hopper" in result.stdout and "vpg" in result.stdout
