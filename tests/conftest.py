"""Shared helpers: compose the real Hydra config and run training through the Python API."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from polopt.config import register_schemas
from polopt.logging import read_metrics

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
FAST = ["logger=none", "progress=false", "torch_threads=1"]

register_schemas()
# MuJoCo writes MUJOCO_LOG.TXT into the working directory on warnings; keep runs out of the repo.
os.environ.setdefault("WANDB_MODE", "offline")


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=[*FAST, *overrides])


def train(overrides: Sequence[str], run_dir: Path) -> list[dict]:
    """Trains with the composed config into `run_dir` and returns the metrics rows."""
    from polopt.train import run

    run(compose_config(overrides), run_dir)
    return read_metrics(run_dir / "metrics.jsonl")


def final_return(rows: list[dict], last: int = 5) -> float:
    """Mean of `rollout/ep_return` over the last `last` iterations that finished an episode."""
    returns = [r["rollout/ep_return"] for r in rows if r.get("rollout/ep_return") is not None]
    tail = returns[-last:]
    return sum(tail) / len(tail)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: a second intra-op thread only contends on a shared 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def run_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[dict]]:
    monkeypatch.chdir(tmp_path)
    return lambda overrides, name="run": train(overrides, tmp_path / name)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
